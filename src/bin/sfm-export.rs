//! `sfm-export`: not built yet (see its issue). It says so and exits non-zero rather than pretend.

fn main() {
    eprintln!("sfm-export is not built yet in this version of the SFM migration platform");
    std::process::exit(2);
}
