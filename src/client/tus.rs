//! A tus 1.0 client for one file (core protocol with the creation and checksum extensions): `POST
//! /files` with `Upload-Length` and `Upload-Metadata`, then `PATCH` chunks with `Upload-Offset` and
//! `Upload-Checksum: sha256`, `HEAD` to learn the offset when resuming or after a conflict. Every step
//! is recorded in the ledger, so a killed client resumes at the server's offset instead of starting
//! over. Transient failures (network, 5xx, 429/503 `busy`, `organisation-missing`) are retried with
//! exponential backoff and jitter, honouring `Retry-After`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::Rng;
use reqwest::{Method, Response};
use url::Url;

use super::api::{ApiClient, ApiError};
use super::check::ExportFile;
use super::ledger::{Ledger, LedgerEntry, LedgerState};
use super::{Failure, Outcome};
use crate::contract::{
    self, CONTENT_TYPE_OCTET_STREAM, CONTENT_TYPE_OFFSET_OCTET_STREAM, ChecksumAlgorithm,
    IngestState, ProblemCode, TUS_VERSION, UploadChecksum, encode_upload_metadata,
};

/// How hard to try.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts for one request on network errors and 5xx.
    pub attempts: u32,
    /// Waits for `busy` / `organisation-missing` before giving up (these are expected under load).
    pub busy_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            busy_attempts: 600,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (1-based): `Retry-After` when given (never less), else
    /// exponential backoff with jitter.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            // At least what the server asked, plus up to a quarter more so that a thousand workers
            // told the same number do not all come back in the same instant.
            let wait = wait.min(Duration::from_secs(300));
            let spread = (wait.as_millis() as u64 / 4).max(1);
            return wait + Duration::from_millis(rand::thread_rng().gen_range(0..=spread));
        }
        let exponential = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        let millis = exponential.as_millis().max(1) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(millis / 2..=millis))
    }
}

/// Why one file's upload stopped.
#[derive(Debug)]
pub enum TusError {
    /// The API refused it, or stayed unreachable through every retry.
    Api(ApiError),
    /// Ctrl-C.
    Cancelled,
    /// A local problem (the ledger could not be written).
    Local(Failure),
}

impl From<Failure> for TusError {
    fn from(failure: Failure) -> Self {
        TusError::Local(failure)
    }
}

/// How a file's upload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub state: LedgerState,
    pub code: Option<String>,
    /// Bytes sent in this run (less than the size when resumed).
    pub sent: u64,
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn offset_of(response: &Response) -> Result<u64, ApiError> {
    header(response, contract::HEADER_UPLOAD_OFFSET)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ApiError::Protocol("no Upload-Offset in the answer".into()))
}

fn ingest_of(response: &Response) -> (LedgerState, Option<String>) {
    let code = header(response, contract::HEADER_REJECTION_CODE).map(str::to_owned);
    match header(response, contract::HEADER_INGEST_STATE).and_then(|v| v.parse().ok()) {
        Some(IngestState::Stored) => (LedgerState::Stored, None),
        Some(IngestState::Rejected) => (LedgerState::Rejected, code),
        _ => (LedgerState::Pending, None),
    }
}

/// The uploader of one file.
pub struct FileUpload<'a> {
    pub api: &'a ApiClient,
    pub ledger: &'a Ledger,
    pub retry: &'a RetryPolicy,
    pub chunk_size: usize,
    pub cancel: &'a AtomicBool,
    /// Called with the number of bytes each accepted PATCH carried.
    pub on_bytes: &'a (dyn Fn(u64) + Sync),
}

impl FileUpload<'_> {
    /// Retries `op` while its error is transient, within the policy.
    async fn retrying<T, F, Fut>(&self, mut op: F) -> Result<T, TusError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiError>>,
    {
        let mut failures = 0;
        let mut busy = 0;
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(TusError::Cancelled);
            }
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) if error.is_transient() => {
                    let waiting = matches!(
                        error.code(),
                        Some(ProblemCode::Busy) | Some(ProblemCode::OrganisationMissing)
                    ) || error.status() == Some(429);
                    let attempt = if waiting {
                        busy += 1;
                        if busy > self.retry.busy_attempts {
                            return Err(TusError::Api(error));
                        }
                        busy.min(6)
                    } else {
                        failures += 1;
                        if failures >= self.retry.attempts {
                            return Err(TusError::Api(error));
                        }
                        failures
                    };
                    tokio::time::sleep(self.retry.delay(attempt, error.retry_after())).await;
                }
                Err(error) => return Err(TusError::Api(error)),
            }
        }
    }

    /// `POST /files`. With `body` (the whole file, when it fits in one chunk) the upload is created
    /// and sent in one request (tus creation-with-upload, with its checksum): the answer then carries
    /// the offset and, when complete, the ingest state.
    async fn create(
        &self,
        file: &ExportFile,
        body: Option<&[u8]>,
    ) -> Result<(Url, u64, Option<(LedgerState, Option<String>)>), TusError> {
        let url = self.api.url(contract::PATH_FILES);
        let metadata = encode_upload_metadata(&[
            (contract::METADATA_NAME, &file.name),
            (contract::METADATA_CONTENT_TYPE, CONTENT_TYPE_OCTET_STREAM),
            (contract::METADATA_FILE_TYPE, file.file_type.as_str()),
        ]);
        let checksum = body.map(|b| UploadChecksum::of(ChecksumAlgorithm::Sha256, b).to_header());
        let response = self
            .retrying(|| {
                self.api.send(Method::POST, &url, true, |r| {
                    let r = r
                        .header(contract::HEADER_TUS_RESUMABLE, TUS_VERSION)
                        .header(contract::HEADER_UPLOAD_LENGTH, file.size.to_string())
                        .header(contract::HEADER_UPLOAD_METADATA, &metadata);
                    match (body, &checksum) {
                        (Some(body), Some(checksum)) => r
                            .header(
                                reqwest::header::CONTENT_TYPE,
                                CONTENT_TYPE_OFFSET_OCTET_STREAM,
                            )
                            .header(contract::HEADER_UPLOAD_CHECKSUM, checksum)
                            .body(body.to_vec()),
                        _ => r,
                    }
                })
            })
            .await?;
        let location = header(&response, contract::HEADER_LOCATION).ok_or_else(|| {
            TusError::Api(ApiError::Protocol("no Location for the upload".into()))
        })?;
        let location = self
            .api
            .url(contract::PATH_FILES)
            .join(location)
            .map_err(|_| TusError::Api(ApiError::Protocol("an unusable Location".into())))?;
        let offset = if body.is_some() {
            offset_of(&response).unwrap_or(0)
        } else {
            0
        };
        if offset > 0 {
            (self.on_bytes)(offset);
        }
        let done = (offset >= file.size && file.size > 0).then(|| ingest_of(&response));
        Ok((location, offset, done))
    }

    /// `HEAD` of an upload: its offset and, once complete, its ingest state. `None` when the upload is
    /// gone (404, 410): start over.
    async fn head(
        &self,
        url: &Url,
    ) -> Result<Option<(u64, LedgerState, Option<String>)>, TusError> {
        let result = self
            .retrying(|| {
                self.api.send(Method::HEAD, url, true, |r| {
                    r.header(contract::HEADER_TUS_RESUMABLE, TUS_VERSION)
                })
            })
            .await;
        match result {
            Ok(response) => {
                let offset = offset_of(&response).map_err(TusError::Api)?;
                let (state, code) = ingest_of(&response);
                Ok(Some((offset, state, code)))
            }
            Err(TusError::Api(error)) if matches!(error.status(), Some(404) | Some(410)) => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// Asks the API what became of a completely sent file (pending → stored or rejected).
    pub async fn settle(
        &self,
        entry: &LedgerEntry,
    ) -> Result<Option<(LedgerState, Option<String>)>, TusError> {
        let url = Url::parse(&entry.url)
            .map_err(|_| TusError::Api(ApiError::Protocol("a damaged URL in the ledger".into())))?;
        Ok(self
            .head(&url)
            .await?
            .and_then(|(offset, state, code)| (offset == entry.size).then_some((state, code))))
    }

    /// Sends `data` (the whole file, `sha256` its digest) as `file`, resuming from the ledger.
    pub async fn upload(
        &self,
        file: &ExportFile,
        data: &[u8],
        sha256: &str,
        mtime_ns: u128,
    ) -> Result<Uploaded, TusError> {
        let mut entry = LedgerEntry {
            database: String::new(),
            name: file.name.clone(),
            size: file.size,
            mtime_ns,
            sha256: sha256.to_owned(),
            url: String::new(),
            state: LedgerState::Created,
            code: None,
        };
        let mut resume: Option<(Url, u64)> = None;
        if let Some(previous) = self.ledger.get(&file.name)
            && previous.sha256 == sha256
            && previous.size == file.size
            && previous.state == LedgerState::Created
            && let Ok(url) = Url::parse(&previous.url)
        {
            match self.head(&url).await? {
                Some((offset, state, code)) if offset == file.size => {
                    entry.url = url.to_string();
                    entry.state = state;
                    entry.code = code.clone();
                    self.ledger.record(entry)?;
                    return Ok(Uploaded {
                        state,
                        code,
                        sent: 0,
                    });
                }
                Some((offset, _, _)) if offset < file.size => resume = Some((url, offset)),
                _ => {}
            }
        }
        let mut restarts = 0;
        loop {
            let (url, mut offset) = match resume.take() {
                Some(found) => found,
                None => {
                    let whole = (data.len() <= self.chunk_size && restarts == 0).then_some(data);
                    let (url, offset, done) = self.create(file, whole).await?;
                    entry.url = url.to_string();
                    if let Some((state, code)) = done {
                        entry.state = state;
                        entry.code = code.clone();
                        self.ledger.record(entry)?;
                        return Ok(Uploaded {
                            state,
                            code,
                            sent: offset,
                        });
                    }
                    entry.state = LedgerState::Created;
                    self.ledger.record(entry.clone())?;
                    (url, offset)
                }
            };
            entry.url = url.to_string();
            let mut sent = 0u64;
            let outcome = loop {
                if self.cancel.load(Ordering::Relaxed) {
                    return Err(TusError::Cancelled);
                }
                let start = offset as usize;
                let end = (start + self.chunk_size).min(data.len());
                let chunk = &data[start..end];
                let checksum = UploadChecksum::of(ChecksumAlgorithm::Sha256, chunk).to_header();
                let result = self
                    .retrying(|| {
                        self.api.send(Method::PATCH, &url, true, |r| {
                            r.header(contract::HEADER_TUS_RESUMABLE, TUS_VERSION)
                                .header(contract::HEADER_UPLOAD_OFFSET, offset.to_string())
                                .header(
                                    reqwest::header::CONTENT_TYPE,
                                    CONTENT_TYPE_OFFSET_OCTET_STREAM,
                                )
                                .header(contract::HEADER_UPLOAD_CHECKSUM, &checksum)
                                .body(chunk.to_vec())
                        })
                    })
                    .await;
                match result {
                    Ok(response) => {
                        let new_offset = offset_of(&response).map_err(TusError::Api)?;
                        let accepted = new_offset.saturating_sub(offset);
                        (self.on_bytes)(accepted);
                        sent += accepted;
                        offset = new_offset;
                        if offset >= file.size {
                            break Some(ingest_of(&response));
                        }
                    }
                    Err(TusError::Api(error)) => match (error.status(), error.code()) {
                        // Someone (an earlier run, a retried request) moved the offset: ask.
                        (_, Some(ProblemCode::UploadOffsetMismatch))
                        | (_, Some(ProblemCode::ChecksumMismatch))
                        | (Some(460), _) => match self.head(&url).await? {
                            Some((server, state, code)) if server == file.size => {
                                break Some((state, code));
                            }
                            Some((server, _, _)) => offset = server,
                            None => break None,
                        },
                        (Some(404), _) | (Some(410), _) => break None,
                        _ => return Err(TusError::Api(error)),
                    },
                    Err(other) => return Err(other),
                }
            };
            match outcome {
                Some((state, code)) => {
                    entry.state = state;
                    entry.code = code.clone();
                    self.ledger.record(entry)?;
                    return Ok(Uploaded { state, code, sent });
                }
                None => {
                    // The upload expired or vanished: start a new one, a few times at most.
                    restarts += 1;
                    if restarts > 3 {
                        return Err(TusError::Api(ApiError::Protocol(
                            "the API kept losing the upload".into(),
                        )));
                    }
                }
            }
        }
    }
}

/// Reads a file and its SHA-256.
pub fn read_with_digest(file: &ExportFile) -> Outcome<(Vec<u8>, String)> {
    let data = std::fs::read(&file.path).map_err(|e| super::io_failure("read", &file.path, &e))?;
    if data.len() as u64 != file.size {
        return Err(Failure::new(
            format!(
                "{} changed while the client was reading the folder.",
                file.name
            ),
            "wait until the EPJ has finished exporting, then run the same command again",
        ));
    }
    let digest = contract::sha256_hex(&data);
    Ok((data, digest))
}
