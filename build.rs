//! `sqlx::migrate!` embeds `migrations/` at compile time; without this, cargo would not rebuild when
//! a migration is added or changed, and a binary would carry an older schema than its tree.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
