//! `sfm-migrate`, the data controller's migration client (DESIGN sections 5 and 6, NHN's steps 8-13,
//! 18-20, 29 and 33-36): keys, `check`, `upload` over tus with a ledger for resume, `verify`,
//! `activate` and deletion of the export after a successful migration.
//!
//! Every failure a data controller can meet is a [`Failure`]: one sentence on what happened and one
//! on what to do next. No key, token or personal data is ever printed.

pub mod api;
pub mod check;
pub mod config;
pub mod ledger;
pub mod tus;
pub mod upload;
pub mod workflow;

use std::fmt;

/// What went wrong, for the person at the keyboard, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// One sentence: what happened.
    pub what: String,
    /// One sentence: what to do next.
    pub next: String,
}

impl Failure {
    pub fn new(what: impl Into<String>, next: impl Into<String>) -> Self {
        Failure {
            what: what.into(),
            next: next.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\n  What to do: {}", self.what, self.next)
    }
}

impl std::error::Error for Failure {}

/// Result of a client step.
pub type Outcome<T> = Result<T, Failure>;

/// An I/O error on a local file, with the usual causes spelled out (disk full, permissions).
pub fn io_failure(action: &str, path: &std::path::Path, error: &std::io::Error) -> Failure {
    let next = match error.raw_os_error() {
        Some(28) => "the disk is full: free some space and run the same command again".to_owned(),
        Some(13) | Some(1) => format!(
            "you lack permission on {}: run as the user that owns it, or fix its permissions",
            path.display()
        ),
        Some(30) => "the file system is read-only: use a writable export folder".to_owned(),
        _ => match error.kind() {
            std::io::ErrorKind::NotFound => format!("check that {} exists", path.display()),
            _ => "check the disk and the path, then run the same command again".to_owned(),
        },
    };
    Failure::new(
        format!("Cannot {action} {}: {error}.", path.display()),
        next,
    )
}
