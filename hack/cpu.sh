# shellcheck shell=bash
# CPU seconds read from /proc, for the benchmarks (hack/bench-*.sh source this file). Each figure
# is user + system time; take two readings and subtract.

clk=$(getconf CLK_TCK)

# A process's own time with that of its reaped children (a postmaster's exited backends); 0 once
# it is gone.
cpu_of() {
  [ -r "/proc/$1/stat" ] || { echo 0; return; }
  # After the command in parentheses: utime is field 12, stime 13, cutime 14, cstime 15.
  awk -v clk="$clk" '{ sub(/^.*\) /, ""); printf "%.2f", ($12 + $13 + $14 + $15) / clk }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# The part of cpu_of spent in the kernel (system time).
kernel_of() {
  [ -r "/proc/$1/stat" ] || { echo 0; return; }
  awk -v clk="$clk" '{ sub(/^.*\) /, ""); printf "%.2f", ($13 + $15) / clk }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# A PostgreSQL server's time, by its data directory ($1): the postmaster with its reaped children,
# and every live child.
postgres_cpu() {
  local data=$1 pm child
  [ -r "$data/postmaster.pid" ] || { echo 0; return; }
  pm=$(head -1 "$data/postmaster.pid")
  for child in "$pm" $(pgrep -P "$pm" || true); do
    cpu_of "$child"
    echo
  done | awk '{ s += $1 } END { printf "%.2f", s }'
}
