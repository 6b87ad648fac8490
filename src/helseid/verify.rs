//! (to be built; see mod.rs)
