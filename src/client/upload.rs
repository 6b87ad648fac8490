//! `sfm-migrate upload <folder>`: the organisation file first (its completing `PATCH` returns once it
//! is stored), then patients and reports with `--workers N` concurrent tus uploads. Files the ledger
//! shows as completely sent (same size and modification time) are not sent again; files it shows as
//! started are resumed at the server's offset. Progress goes to a bar on a terminal and to a plain
//! line every few seconds otherwise. Ctrl-C stops taking new files and waits for the requests in
//! flight; a second Ctrl-C exits at once (the ledger is consistent either way).

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use super::api::{ApiClient, ApiError};
use super::check::{CheckReport, ExportFile};
use super::ledger::{Ledger, LedgerState, fingerprint};
use super::tus::{FileUpload, RetryPolicy, TusError, read_with_digest};
use super::{Failure, Outcome, io_failure};
use crate::contract::{FileType, ProblemCode};

/// Most concurrent uploads.
pub const MAX_WORKERS: usize = 1000;

/// How to upload.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    pub workers: usize,
    pub chunk_size: usize,
    pub retry: RetryPolicy,
    /// Send files the API rejected before again (they are skipped by default: the same bytes would be
    /// rejected again).
    pub resend_rejected: bool,
    /// Force plain progress lines even on a terminal (and none at all with `quiet`).
    pub plain_progress: bool,
    pub quiet: bool,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            workers: 10,
            chunk_size: 8 * 1024 * 1024,
            retry: RetryPolicy::default(),
            resend_rejected: false,
            plain_progress: false,
            quiet: false,
        }
    }
}

/// What an upload run did.
#[derive(Debug, Clone, Default)]
pub struct UploadSummary {
    /// Files in the export.
    pub files: usize,
    /// Files sent (completely) in this run.
    pub sent: usize,
    /// Files skipped because the ledger shows them sent.
    pub skipped: usize,
    pub stored: usize,
    pub pending: usize,
    /// Rejected files with the code.
    pub rejected: Vec<(String, String)>,
    /// Files that could not be sent, with why.
    pub failed: Vec<(String, String)>,
    pub bytes_sent: u64,
    pub elapsed: Duration,
    pub cancelled: bool,
}

impl UploadSummary {
    pub fn files_per_second(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes_sent as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl std::fmt::Display for UploadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Upload {}: {} files in the export, {} sent now, {} already sent before",
            if self.cancelled {
                "interrupted"
            } else {
                "finished"
            },
            self.files,
            self.sent,
            self.skipped
        )?;
        writeln!(
            f,
            "  stored {}, pending {}, rejected {}, failed {}",
            self.stored,
            self.pending,
            self.rejected.len(),
            self.failed.len()
        )?;
        writeln!(
            f,
            "  {:.1} MB in {:.1} s: {:.1} files/s, {:.2} MB/s",
            self.bytes_sent as f64 / 1e6,
            self.elapsed.as_secs_f64(),
            self.files_per_second(),
            self.megabytes_per_second()
        )?;
        for (name, code) in self.rejected.iter().take(20) {
            writeln!(f, "  rejected: {name} ({code}): {}", rejection_hint(code))?;
        }
        for (name, why) in self.failed.iter().take(20) {
            writeln!(f, "  not sent: {name}: {why}")?;
        }
        Ok(())
    }
}

/// What a rejection code means for the data controller, and whom to ask.
pub fn rejection_hint(code: &str) -> &'static str {
    match code {
        "envelope-undecryptable" => {
            "it is not encrypted to the SFM migration certificate this API holds (wrong certificate?): ask your EPJ supplier to export it again with NHN's current certificate"
        }
        "envelope-malformed" => "the file is truncated or damaged: export it again",
        "archive-limits" | "archive-path" | "archive-content" => {
            "the packed file inside is not a valid export archive: ask your EPJ supplier"
        }
        "xml-doctype" | "xml-malformed" | "xml-schema" | "xml-unexpected-root" => {
            "its XML does not follow NHN's format: ask your EPJ supplier"
        }
        "data-quality-identifier" => "an identifier has wrong check digits: correct it in the EPJ",
        "data-quality-synthetic-identity" => {
            "it holds a synthetic test identity, which this database does not allow"
        }
        "data-quality-hpr-unknown" => {
            "it names an HPR number that is not a user in ExportData.dat: export users and patients together"
        }
        "data-quality-organisation-mismatch" => {
            "it belongs to another organisation than this database: check the export folder"
        }
        "data-quality-missing-field" => "a required value is missing: correct it in the EPJ",
        _ => "see `sfm-migrate status` for the reason",
    }
}

/// Counts shared by the workers.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    bytes: AtomicU64,
    stored: AtomicU64,
    pending: AtomicU64,
    rejected: Mutex<Vec<(String, String)>>,
    failed: Mutex<Vec<(String, String)>>,
    /// The first error that stops everything (key, token, migration state, unreachable API).
    fatal: Mutex<Option<Failure>>,
}

/// Errors after which no other file can succeed either.
fn is_fatal(error: &ApiError) -> bool {
    match error {
        ApiError::Network { .. } => true,
        ApiError::Protocol(_) => false,
        ApiError::Status { status, .. } => {
            matches!(*status, 401 | 403 | 412 | 429 | 503)
                || matches!(
                    error.code(),
                    Some(ProblemCode::MigrationValidated)
                        | Some(ProblemCode::MigrationOperational)
                        | Some(ProblemCode::OrganisationMissing)
                        | Some(ProblemCode::Busy)
                )
                || *status >= 500
        }
    }
}

/// Whether the ledger shows `file` as completely sent (unchanged since).
fn already_sent(ledger: &Ledger, file: &ExportFile, resend_rejected: bool) -> Option<LedgerState> {
    let entry = ledger.get(&file.name)?;
    let (size, mtime) = fingerprint(&file.path).ok()?;
    if entry.size != size || entry.mtime_ns != mtime || !entry.state.is_complete() {
        return None;
    }
    if entry.state == LedgerState::Rejected && resend_rejected {
        return None;
    }
    Some(entry.state)
}

/// Uploads the export described by `report` (which must be free of problems).
pub async fn upload(
    api: &ApiClient,
    report: &CheckReport,
    ledger: &Ledger,
    options: &UploadOptions,
    cancel: &AtomicBool,
) -> Outcome<UploadSummary> {
    if !(1..=MAX_WORKERS).contains(&options.workers) {
        return Err(Failure::new(
            format!("--workers must be 1 to {MAX_WORKERS}."),
            "choose 10 for a normal line, 100 or more only on a fast one",
        ));
    }
    let started = Instant::now();
    let tally = Tally::default();
    let mut summary = UploadSummary {
        files: report.files.len(),
        ..UploadSummary::default()
    };
    let mut queue: Vec<&ExportFile> = Vec::new();
    let mut organisation: Option<&ExportFile> = None;
    for file in &report.files {
        match already_sent(ledger, file, options.resend_rejected) {
            Some(state) => {
                summary.skipped += 1;
                match state {
                    LedgerState::Stored => summary.stored += 1,
                    LedgerState::Pending => summary.pending += 1,
                    LedgerState::Rejected => summary.rejected.push((
                        file.name.clone(),
                        ledger
                            .get(&file.name)
                            .and_then(|e| e.code)
                            .unwrap_or_default(),
                    )),
                    LedgerState::Created => {}
                }
            }
            None if file.file_type == FileType::ExportData => organisation = Some(file),
            None => queue.push(file),
        }
    }
    let total_bytes: u64 = queue
        .iter()
        .chain(organisation.iter())
        .map(|f| f.size)
        .sum();
    let total_files = queue.len() + usize::from(organisation.is_some());

    let terminal = std::io::stderr().is_terminal() && !options.plain_progress && !options.quiet;
    let bar = if terminal {
        let bar = ProgressBar::new(total_bytes);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    } else {
        ProgressBar::hidden()
    };
    let on_bytes = |n: u64| {
        tally.bytes.fetch_add(n, Ordering::Relaxed);
        bar.inc(n);
    };
    let uploader = FileUpload {
        api,
        ledger,
        retry: &options.retry,
        chunk_size: options.chunk_size.max(1024),
        cancel,
        on_bytes: &on_bytes,
    };
    let send = |file: &ExportFile| {
        let uploader = &uploader;
        let tally = &tally;
        let bar = &bar;
        let file = file.clone();
        async move {
            if cancel.load(Ordering::Relaxed) {
                return;
            }
            let outcome = async {
                let (data, digest) = read_with_digest(&file).map_err(TusError::Local)?;
                let (_, mtime) = fingerprint(&file.path)
                    .map_err(|e| TusError::Local(io_failure("read", &file.path, &e)))?;
                uploader.upload(&file, &data, &digest, mtime).await
            }
            .await;
            match outcome {
                Ok(done) => {
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    match done.state {
                        LedgerState::Stored => {
                            tally.stored.fetch_add(1, Ordering::Relaxed);
                        }
                        LedgerState::Rejected => {
                            if let Ok(mut list) = tally.rejected.lock() {
                                list.push((file.name.clone(), done.code.unwrap_or_default()));
                            }
                        }
                        _ => {
                            tally.pending.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(TusError::Cancelled) => {}
                Err(TusError::Local(failure)) => {
                    if let Ok(mut list) = tally.failed.lock() {
                        list.push((file.name.clone(), failure.what.clone()));
                    }
                    // A full disk or an unwritable ledger stops everything.
                    if failure.what.contains("ledger")
                        && let Ok(mut fatal) = tally.fatal.lock()
                    {
                        fatal.get_or_insert(failure);
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
                Err(TusError::Api(error)) => {
                    let failure = error.failure();
                    if let Ok(mut list) = tally.failed.lock() {
                        list.push((file.name.clone(), failure.what.clone()));
                    }
                    if is_fatal(&error)
                        && let Ok(mut fatal) = tally.fatal.lock()
                    {
                        fatal.get_or_insert(failure);
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
            }
            bar.set_message(format!(
                "files {}/{}",
                tally.sent.load(Ordering::Relaxed),
                total_files
            ));
        }
    };

    // Plain progress lines when not on a terminal.
    let done_flag = AtomicBool::new(false);
    let plain = async {
        if terminal || options.quiet || total_files == 0 {
            return;
        }
        let mut last = Instant::now();
        while !done_flag.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if last.elapsed() < Duration::from_secs(5) || done_flag.load(Ordering::Relaxed) {
                continue;
            }
            last = Instant::now();
            let files = tally.sent.load(Ordering::Relaxed);
            let bytes = tally.bytes.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64();
            let rate = files as f64 / secs.max(1e-9);
            let eta = if rate > 0.0 {
                format!(
                    "{:.0} s",
                    (total_files as f64 - files as f64).max(0.0) / rate
                )
            } else {
                "unknown".into()
            };
            eprintln!(
                "uploaded {files}/{total_files} files, {:.1}/{:.1} MB, {rate:.1} files/s, {:.2} MB/s, ETA {eta}",
                bytes as f64 / 1e6,
                total_bytes as f64 / 1e6,
                bytes as f64 / 1e6 / secs.max(1e-9)
            );
        }
    };

    let work = async {
        // The organisation file alone first: patients are accepted only once it is stored.
        if let Some(file) = organisation {
            send(file).await;
            if let Some(fatal) = tally.fatal.lock().ok().and_then(|f| f.clone()) {
                return Err(fatal);
            }
            if let Some((_, code)) = tally
                .rejected
                .lock()
                .ok()
                .and_then(|r| r.iter().find(|(n, _)| n == &file.name).cloned())
            {
                return Err(Failure::new(
                    format!(
                        "The migration API rejected the organisation file ExportData.dat ({code})."
                    ),
                    "run `sfm-migrate status` for the reason and ask your EPJ supplier for a corrected export",
                ));
            }
            if let Some((_, why)) = tally
                .failed
                .lock()
                .ok()
                .and_then(|r| r.iter().find(|(n, _)| n == &file.name).cloned())
            {
                return Err(Failure::new(
                    format!("The organisation file could not be sent: {why}"),
                    "fix that, then run the same command again; it resumes where it stopped",
                ));
            }
        }
        if !cancel.load(Ordering::Relaxed) {
            futures::stream::iter(queue.iter().copied())
                .map(send)
                .buffer_unordered(options.workers)
                .collect::<Vec<()>>()
                .await;
        }
        Ok(())
    };
    let (result, ()) = futures::join!(
        async {
            let result = work.await;
            done_flag.store(true, Ordering::Relaxed);
            result
        },
        plain
    );
    bar.finish_and_clear();
    ledger.sync();
    result?;

    summary.sent += tally.sent.load(Ordering::Relaxed) as usize;
    summary.bytes_sent = tally.bytes.load(Ordering::Relaxed);
    summary.stored += tally.stored.load(Ordering::Relaxed) as usize;
    summary.pending += tally.pending.load(Ordering::Relaxed) as usize;
    summary
        .rejected
        .extend(tally.rejected.into_inner().unwrap_or_default());
    summary.failed = tally.failed.into_inner().unwrap_or_default();
    summary.elapsed = started.elapsed();
    summary.cancelled = cancel.load(Ordering::Relaxed);
    if let Some(fatal) = tally.fatal.into_inner().ok().flatten() {
        return Err(Failure::new(
            format!(
                "{} (stopped after sending {} of {} files; the ledger keeps what was sent)",
                fatal.what.trim_end_matches('.'),
                summary.sent,
                total_files
            ),
            fatal.next,
        ));
    }
    Ok(summary)
}

/// Settles files the ledger shows as pending (complete but not yet ingested) by asking the API.
pub async fn settle_pending(
    api: &ApiClient,
    ledger: &Ledger,
    retry: &RetryPolicy,
    workers: usize,
) -> Outcome<usize> {
    let cancel = AtomicBool::new(false);
    let nothing = |_: u64| {};
    let uploader = FileUpload {
        api,
        ledger,
        retry,
        chunk_size: 1,
        cancel: &cancel,
        on_bytes: &nothing,
    };
    let pending: Vec<_> = ledger
        .entries()
        .into_iter()
        .filter(|e| e.state == LedgerState::Pending)
        .collect();
    let still = Arc::new(AtomicU64::new(0));
    futures::stream::iter(pending)
        .map(|mut entry| {
            let uploader = &uploader;
            let still = still.clone();
            async move {
                match uploader.settle(&entry).await {
                    Ok(Some((state, code))) if state != LedgerState::Pending => {
                        entry.state = state;
                        entry.code = code;
                        let _ = uploader.ledger.record(entry);
                    }
                    _ => {
                        still.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .buffer_unordered(workers.clamp(1, 64))
        .collect::<Vec<()>>()
        .await;
    Ok(still.load(Ordering::Relaxed) as usize)
}
