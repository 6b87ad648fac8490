//! SFM migration platform: the operator, the migration API and the migration client that move a health
//! organisation's history out of its old system into its own SFM PostgreSQL database.
//!
//! The library holds everything; the binaries in `src/bin/` only parse arguments and call in here.
//! Nothing in this crate may write a password, a migration key or personal data (names, national
//! identity numbers, HPR numbers) into a log line, an Event, a metric, a spec or a status.

pub mod api;
pub mod client;
pub mod contract;
pub mod crd;
pub mod export;
pub mod format;
pub mod helseid;
pub mod http;
pub mod ident;
pub mod model;
pub mod names;
pub mod operator;
pub mod postgres;
pub mod telemetry;
pub mod tls;
