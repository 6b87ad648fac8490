# shellcheck shell=bash disable=SC2154 # (pki: the caller sets it)
# Certificates of the local clusters (hack/controlplane.sh, hack/node.sh): one CA that signs everything,
# valid two days (a cluster here lives for one test run or demo). Sourced, not run; the caller sets
# pki, the directory the keys and certificates go to.

pki_ca() { # COMMON-NAME: the CA, ca.key and ca.crt
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$1" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
}

issue() { # NAME SUBJECT EXTENSIONS: NAME.key and NAME.crt signed by the CA (extensions as in an extfile)
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  printf '%s\n' "$3" >"$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
}

pki_service_account_keys() { # sa.key and sa.pub, the service-account token signing pair
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}
