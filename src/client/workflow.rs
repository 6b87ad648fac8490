//! The steps after the upload: `verify` (step 33: the manifest of every file and its digest, and the
//! API's answer), `activate` (steps 34-36: ask for operational mode, wait for it, then delete exactly
//! the export's files), and the key check that starts every command that talks to the API.

use std::path::Path;
use std::time::{Duration, Instant};

use super::api::{ApiClient, ApiError};
use super::check::CheckReport;
use super::ledger::{Ledger, fingerprint};
use super::{Failure, Outcome, io_failure};
use crate::contract::{
    KeyCheckResponse, Manifest, ManifestFile, MigrationPhase, ProblemCode, ProductVersion,
    VerifyResponse,
};
use crate::format::index::INDEX_FILE_NAME;

/// How long a step asks again while the API says to come back later (`busy` or another answer with
/// `Retry-After`, which is honoured): as long as an upload's requests do. A wave of organisations
/// starting at once is served in turns, and the ones waiting must not give up. An API that cannot
/// be reached at all is reported at once.
pub const BUSY_PATIENCE: Duration = Duration::from_secs(20 * 60);

/// Asks until the API stops saying "come back later" ([`BUSY_PATIENCE`] at most).
async fn patiently<T, F, Fut>(ask: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let deadline = Instant::now() + BUSY_PATIENCE;
    retry_while(
        deadline,
        "the API asked to come back later",
        ApiError::retry_after,
        ask,
    )
    .await
}

/// Asks until `wait_for` finds no wait in the failure (or the answer is not a failure) or `deadline`
/// has passed, sleeping the wait it gives (100 ms at least) in between; returns that answer. Each
/// retry is logged at debug level as `reason` with the problem code.
async fn retry_while<T, W, F, Fut>(
    deadline: Instant,
    reason: &'static str,
    wait_for: W,
    mut ask: F,
) -> Result<T, ApiError>
where
    W: Fn(&ApiError) -> Option<Duration>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    loop {
        match ask().await {
            Err(error) if Instant::now() < deadline => match wait_for(&error) {
                Some(wait) => {
                    tracing::debug!(code = ?error.code(), "{reason}");
                    tokio::time::sleep(wait.max(Duration::from_millis(100))).await;
                }
                None => return Err(error),
            },
            answer => return answer,
        }
    }
}

/// Asks the product version and checks the key (step 11): the API is reachable, speaks our
/// contract, and the key works for a database that is not finished.
pub async fn key_check(api: &ApiClient) -> Outcome<(ProductVersion, KeyCheckResponse)> {
    let version = patiently(|| api.product_version())
        .await
        .map_err(|e| e.failure())?;
    if version.api_version != crate::contract::API_VERSION {
        return Err(Failure::new(
            format!(
                "The migration API speaks version {} of the contract; this client speaks {}.",
                version.api_version,
                crate::contract::API_VERSION
            ),
            "install the sfm-migrate version NHN recommends for this API",
        ));
    }
    let check = patiently(|| api.key_check())
        .await
        .map_err(|e| e.failure())?;
    if check.token_required && api.auth_has_no_token() {
        return Err(Failure::new(
            "This database requires a HelseID login.",
            "log in with `sfm-migrate login`, then run the same command again",
        ));
    }
    Ok((version, check))
}

impl ApiClient {
    /// Whether no HelseID token is configured.
    pub fn auth_has_no_token(&self) -> bool {
        !self.auth.has_token()
    }

    /// Whether a migration key is configured.
    pub fn has_key(&self) -> bool {
        self.auth.has_key()
    }
}

/// The manifest of the export: every file with its size and SHA-256, from the ledger when the file
/// is unchanged since it was sent, else read again.
pub fn manifest(report: &CheckReport, ledger: Option<&Ledger>) -> Outcome<Manifest> {
    let mut files = Vec::with_capacity(report.files.len());
    for file in &report.files {
        let known = ledger.and_then(|l| l.get(&file.name)).and_then(|entry| {
            let (size, mtime) = fingerprint(&file.path).ok()?;
            (entry.size == size && entry.mtime_ns == mtime).then_some(entry.sha256)
        });
        let sha256 = match known {
            Some(sha256) => sha256,
            None => {
                let data =
                    std::fs::read(&file.path).map_err(|e| io_failure("read", &file.path, &e))?;
                crate::contract::sha256_hex(&data)
            }
        };
        files.push(ManifestFile {
            path: file.name.clone(),
            file_type: file.file_type,
            size: file.size,
            sha256,
        });
    }
    Ok(Manifest::new(files))
}

/// The manifest with each path as NHN's uploader names the file in its `name` metadata: the file
/// name alone, after the last `\\`. Two files of the same name in different folders cannot be told
/// apart that way: that is refused.
pub fn as_named_by_nhn_uploader(manifest: &Manifest) -> Outcome<Manifest> {
    let files: Vec<ManifestFile> = manifest
        .files
        .iter()
        .map(|f| ManifestFile {
            path: f.path.rsplit('\\').next().unwrap_or(&f.path).to_owned(),
            ..f.clone()
        })
        .collect();
    let named = Manifest::new(files);
    named.validate().map_err(|e| {
        Failure::new(
            format!("The export cannot be compared by file names alone ({e})."),
            "check that no two files of the export share a name",
        )
    })?;
    Ok(named)
}

/// Sends the manifest. A mismatch that is only files still being ingested is asked again for up to
/// `pending_wait`; any other mismatch is printed and becomes a failure.
pub async fn verify(
    api: &ApiClient,
    manifest: &Manifest,
    pending_wait: Duration,
) -> Outcome<VerifyResponse> {
    let started = Instant::now();
    loop {
        match api.verify(manifest).await {
            Ok(answer) => return Ok(answer),
            Err(ApiError::Status {
                problem: Some(problem),
                ..
            }) if problem.code == ProblemCode::ManifestMismatch => {
                let mismatches = problem.mismatches.clone().unwrap_or_default();
                let only_pending = mismatches.missing.is_empty()
                    && mismatches.extra.is_empty()
                    && mismatches.digest_mismatch.is_empty()
                    && mismatches.rejected.is_empty()
                    && !mismatches.pending.is_empty();
                if only_pending && started.elapsed() < pending_wait {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
                eprintln!("The migration API's files differ from the export:");
                let list = |what: &str, paths: &[String]| {
                    if !paths.is_empty() {
                        eprintln!("  {what}: {}", paths.len());
                        for path in paths.iter().take(20) {
                            eprintln!("    {path}");
                        }
                    }
                };
                list("missing (not sent or not complete)", &mismatches.missing);
                list("extra (stored but not in this export)", &mismatches.extra);
                list("different content", &mismatches.digest_mismatch);
                list("still being ingested", &mismatches.pending);
                if !mismatches.rejected.is_empty() {
                    eprintln!("  rejected: {}", mismatches.rejected.len());
                    for file in mismatches.rejected.iter().take(20) {
                        eprintln!(
                            "    {} ({}): {}",
                            file.path,
                            file.code,
                            super::upload::rejection_hint(file.code.as_str())
                        );
                    }
                }
                if mismatches.truncated {
                    eprintln!("  (lists were cut by the API)");
                }
                let next = if !mismatches.rejected.is_empty() {
                    "ask your EPJ supplier to correct the rejected files (`sfm-migrate status` gives the reasons), replace them in the folder and run `sfm-migrate upload` again"
                } else if !mismatches.missing.is_empty() || !mismatches.digest_mismatch.is_empty() {
                    "run `sfm-migrate upload` again to send what is missing or changed, then verify again"
                } else if !mismatches.extra.is_empty() {
                    "the API holds files this export lacks: check that this is the right folder and key, or contact NHN"
                } else {
                    "wait a minute and run `sfm-migrate verify` again"
                };
                return Err(Failure::new(
                    format!(
                        "Verification failed: {} missing, {} extra, {} different, {} rejected, {} pending.",
                        mismatches.missing.len(),
                        mismatches.extra.len(),
                        mismatches.digest_mismatch.len(),
                        mismatches.rejected.len(),
                        mismatches.pending.len()
                    ),
                    next,
                ));
            }
            Err(error)
                if error.is_transient()
                    && (started.elapsed() < pending_wait
                        || (error.retry_after().is_some()
                            && started.elapsed() < BUSY_PATIENCE)) =>
            {
                tokio::time::sleep(error.retry_after().unwrap_or(Duration::from_secs(2))).await;
            }
            Err(error) => return Err(error.failure()),
        }
    }
}

/// Asks for operational mode (unless already operational) and waits until the database is
/// `Operational`, printing each phase it passes.
///
/// The API answers `status` with the key throughout the switch (`Activating`) and after it, so every
/// answer here is a phase. Transient failures (the network, `busy` or 429 with `Retry-After`, a 5xx)
/// are asked again until `timeout`; anything else stops with its own sentence and what to do next.
pub async fn activate_and_wait(api: &ApiClient, timeout: Duration) -> Outcome<()> {
    let deadline = Instant::now() + timeout;
    let status = until_answered(deadline, || api.status())
        .await
        .map_err(|e| e.failure())?;
    if status.phase != MigrationPhase::Operational {
        match until_answered(deadline, || api.activate()).await {
            Ok(answer) => eprintln!(
                "Activation requested at {}; waiting for the database to become operational",
                answer.activation_requested_at
            ),
            // The switch has begun (or is done): the request was recorded before.
            Err(error) if error.code() == Some(ProblemCode::MigrationOperational) => {}
            Err(error) => return Err(error.failure()),
        }
    }
    let mut last = None;
    loop {
        let status = until_answered(deadline, || api.status())
            .await
            .map_err(|e| e.failure())?;
        if last != Some(status.phase) {
            eprintln!("  phase: {}", status.phase);
            last = Some(status.phase);
        }
        match status.phase {
            MigrationPhase::Operational => return Ok(()),
            MigrationPhase::Failed => {
                return Err(Failure::new(
                    format!(
                        "The switch to operational mode failed: {}.",
                        status.phase_reason.as_deref().unwrap_or("no reason given")
                    ),
                    "contact NHN with this message; the export files were kept",
                ));
            }
            _ => {}
        }
        if Instant::now() > deadline {
            let why = match status.phase {
                MigrationPhase::Activating => "the switch is taking longer than expected",
                MigrationPhase::Validated => "an NHN operator may need to approve it",
                _ => "it has not reached the switch",
            };
            return Err(Failure::new(
                format!(
                    "The database is still {} after {} s ({why}).",
                    status.phase,
                    timeout.as_secs()
                ),
                "run `sfm-migrate activate` again later; the export files were kept",
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Asks until the answer is not a transient failure (see [`ApiError::is_transient`]) or `deadline`
/// has passed, waiting `Retry-After` (else 2 s, never past the deadline) in between; returns that
/// answer.
async fn until_answered<T, F, Fut>(deadline: Instant, ask: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let wait_for = |error: &ApiError| {
        error.is_transient().then(|| {
            let wait = error.retry_after().unwrap_or(Duration::from_secs(2));
            wait.min(deadline.saturating_duration_since(Instant::now()))
        })
    };
    retry_while(deadline, "transient failure; asking again", wait_for, ask).await
}

/// Deletes exactly the export's files: `ExportData.dat`, `Index.txt`, every patient and report file
/// the check found, then the `Patients<N>` and `Reports` folders if they are empty. Nothing else in
/// the folder is touched (the ledger stays as a record of what was sent). Returns the files deleted.
pub fn delete_export(folder: &Path, report: &CheckReport) -> Outcome<usize> {
    let mut deleted = 0;
    let mut folders = std::collections::BTreeSet::new();
    for file in &report.files {
        match std::fs::remove_file(&file.path) {
            Ok(()) => deleted += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_failure("delete", &file.path, &e)),
        }
        if let Some(parent) = file.path.parent()
            && parent != folder
        {
            folders.insert(parent.to_owned());
        }
    }
    let index = folder.join(INDEX_FILE_NAME);
    match std::fs::remove_file(&index) {
        Ok(()) => deleted += 1,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_failure("delete", &index, &e)),
    }
    for dir in folders {
        // Only empty folders go: remove_dir refuses a folder that still holds anything.
        let _ = std::fs::remove_dir(&dir);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn network() -> ApiError {
        ApiError::Network {
            url: "https://api.invalid".into(),
            reason: "refused".into(),
        }
    }

    fn unavailable(retry_after: Option<u64>) -> ApiError {
        ApiError::Status {
            status: 503,
            problem: None,
            retry_after,
        }
    }

    /// Answers `failures` in turn, then `Ok(())`; counts the calls.
    async fn ask(calls: &AtomicUsize, failures: &[ApiError]) -> Result<(), ApiError> {
        let call = calls.fetch_add(1, Ordering::SeqCst);
        failures.get(call).cloned().map_or(Ok(()), Err)
    }

    #[tokio::test]
    async fn patiently_waits_out_retry_after_and_reports_anything_else_at_once() {
        let calls = AtomicUsize::new(0);
        let failures = [unavailable(Some(0)), unavailable(Some(0))];
        assert!(patiently(|| ask(&calls, &failures)).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        for failure in [network(), unavailable(None)] {
            let calls = AtomicUsize::new(0);
            let failures = [failure];
            assert!(patiently(|| ask(&calls, &failures)).await.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn until_answered_asks_again_after_transient_failures_until_the_deadline() {
        let calls = AtomicUsize::new(0);
        // 100 ms after the first, then what is left of the deadline rather than 2 s after the second.
        let failures = [unavailable(Some(0)), network()];
        let deadline = Instant::now() + Duration::from_millis(400);
        assert!(
            until_answered(deadline, || ask(&calls, &failures))
                .await
                .is_ok()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(Instant::now() < deadline + Duration::from_secs(1));

        let calls = AtomicUsize::new(0);
        let failures = [ApiError::Protocol("unreadable".into())];
        assert!(
            until_answered(deadline, || ask(&calls, &failures))
                .await
                .is_err()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let calls = AtomicUsize::new(0);
        let failures = [network()];
        let passed = Instant::now();
        assert!(
            until_answered(passed, || ask(&calls, &failures))
                .await
                .is_err()
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
