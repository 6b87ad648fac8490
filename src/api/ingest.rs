//! One completed upload into the staging database, in one transaction: decrypt (every key of a
//! rotation), unzip within limits, parse, check the data quality, and store the organisation with its
//! users, or a patient with identifiers, allergies, treatments and messages, plus the raw documents;
//! or record a rejection with its reason. The same file twice (same SHA-256) stores once; the same
//! patient in a re-export replaces its rows.
//!
//! The claim is the row lock: `SELECT ... FOR UPDATE SKIP LOCKED` on a `complete` upload. A replica
//! that dies mid-ingest loses its transaction and the lock; the upload is `complete` again and the
//! recovery loop of any replica takes it.
//!
//! Rejection messages name element paths, positions and limits, never values from the file.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use axum::body::Bytes;

use super::auth::Session;
use super::error::database;
use super::tus::{NewUpload, check_creation};
use super::{ApiError, AppState};
use crate::contract::{FileType, IngestState, ProblemCode};
use crate::crd::{MigrationDatabase, SchemaCheck, ValidationPolicy};
use crate::format::archive::{ArchiveError, read_archive};
use crate::format::envelope::{DecryptionKeys, EnvelopeError};
use crate::format::patient_file::{
    FormatError, FormatLimits, ORGANISATION_DOCUMENT, OrganisationFile, PATIENT_DOCUMENT,
    PatientFile, read_organisation_file, read_patient_file,
};
use crate::format::xml::XmlError;
use crate::ident::{HprNumber, NationalId, OrganisationNumber};
use crate::model::{Deviation, TreatmentKind};

/// Why a file's content was refused: a rejection code and a message free of personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ProblemCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ProblemCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }
}

/// A decrypted, parsed and locally checked file, ready to store.
pub enum Prepared {
    Organisation(OrganisationFile),
    Patient(Box<PatientFile>),
    Report(Vec<(String, Vec<u8>)>),
}

impl Prepared {
    fn deviations(&self) -> &[Deviation] {
        match self {
            Prepared::Organisation(f) => &f.deviations,
            Prepared::Patient(f) => &f.deviations,
            Prepared::Report(_) => &[],
        }
    }
}

/// The envelope errors as rejections. Bad padding, no matching key and an unreadable archive are
/// one code (`envelope-undecryptable`) so the API is no padding oracle.
pub fn envelope_rejection(error: &EnvelopeError) -> Rejection {
    let code = match error {
        EnvelopeError::Truncated(_) | EnvelopeError::BadHeader(_) => ProblemCode::EnvelopeMalformed,
        _ => ProblemCode::EnvelopeUndecryptable,
    };
    match code {
        ProblemCode::EnvelopeMalformed => Rejection::new(code, error.to_string()),
        _ => Rejection::new(
            code,
            "the file cannot be decrypted with the API's keys, or it does not decrypt to a readable archive",
        ),
    }
}

pub fn archive_rejection(error: &ArchiveError) -> Rejection {
    let code = match error {
        ArchiveError::TooManyEntries { .. }
        | ArchiveError::NameTooLong { .. }
        | ArchiveError::EntryTooLarge { .. }
        | ArchiveError::TotalTooLarge { .. }
        | ArchiveError::RatioTooHigh { .. } => ProblemCode::ArchiveLimits,
        ArchiveError::UnsafeName { .. } => ProblemCode::ArchivePath,
        // Not readable as a zip: one answer with bad padding (see above).
        _ => {
            return Rejection::new(
                ProblemCode::EnvelopeUndecryptable,
                "the file cannot be decrypted with the API's keys, or it does not decrypt to a readable archive",
            );
        }
    };
    Rejection::new(code, error.to_string())
}

pub fn format_rejection(error: &FormatError) -> Rejection {
    match error {
        FormatError::Archive(e) => archive_rejection(e),
        FormatError::MissingDocument(_)
        | FormatError::MissingMessageFiles { .. }
        | FormatError::UnexpectedEntries { .. } => {
            Rejection::new(ProblemCode::ArchiveContent, error.to_string())
        }
        FormatError::Xml { source, .. } => {
            let code = match source {
                XmlError::Doctype => ProblemCode::XmlDoctype,
                XmlError::WrongRoot { .. } | XmlError::WrongNamespace { .. } => {
                    ProblemCode::XmlUnexpectedRoot
                }
                XmlError::MissingRequired { .. } => ProblemCode::DataQualityMissingField,
                XmlError::InvalidRequired { .. } => ProblemCode::XmlSchema,
                _ => ProblemCode::XmlMalformed,
            };
            Rejection::new(code, error.to_string())
        }
    }
}

/// Decrypts and parses one file and runs every check that needs no database. Pure CPU: run it on a
/// blocking thread.
pub fn prepare(
    keys: &DecryptionKeys,
    data: &[u8],
    file_type: FileType,
    file_name: &str,
    limits: &FormatLimits,
    db: &MigrationDatabase,
) -> Result<Prepared, Rejection> {
    let plain = keys.decrypt(data).map_err(|e| envelope_rejection(&e))?;
    let policy = &db.spec.validation;
    let prepared = match file_type {
        FileType::ExportData => {
            let file =
                read_organisation_file(&plain.content, limits).map_err(|e| format_rejection(&e))?;
            check_organisation(&file, policy, &db.spec.organisation.organisation_number)?;
            Prepared::Organisation(file)
        }
        FileType::Patient => {
            let file =
                read_patient_file(&plain.content, limits).map_err(|e| format_rejection(&e))?;
            check_patient(&file, policy, file_name)?;
            Prepared::Patient(Box::new(file))
        }
        FileType::Report => {
            let archive =
                read_archive(&plain.content, &limits.archive).map_err(|e| archive_rejection(&e))?;
            Prepared::Report(
                archive
                    .entries
                    .into_iter()
                    .map(|e| (e.name, e.data))
                    .collect(),
            )
        }
    };
    if policy.schema_check == SchemaCheck::Strict
        && let Some(first) = prepared.deviations().first()
    {
        let mut patterns: Vec<String> = prepared
            .deviations()
            .iter()
            .map(|d| d.path_pattern())
            .collect();
        patterns.sort();
        patterns.dedup();
        patterns.truncate(5);
        return Err(Rejection::new(
            ProblemCode::XmlSchema,
            format!(
                "{} departure(s) from NHN's XSD and the database's schema check is Strict; the first: {}; at {}",
                prepared.deviations().len(),
                first.message,
                patterns.join(", ")
            ),
        ));
    }
    Ok(prepared)
}

fn check_person_number(
    value: &str,
    policy: &ValidationPolicy,
    whose: &str,
) -> Result<(), Rejection> {
    match NationalId::parse(value) {
        Err(_) => Err(Rejection::new(
            ProblemCode::DataQualityIdentifier,
            format!("{whose}: the national identity number fails its check digits or date"),
        )),
        Ok(id) if id.synthetic && !policy.allow_synthetic_identities => Err(Rejection::new(
            ProblemCode::DataQualitySyntheticIdentity,
            format!("{whose}: a synthetic test identity, and the database does not allow them"),
        )),
        Ok(_) => Ok(()),
    }
}

/// Organisation number(s) valid and the database's; users' identifiers valid.
pub fn check_organisation(
    file: &OrganisationFile,
    policy: &ValidationPolicy,
    organisation_number: &str,
) -> Result<(), Rejection> {
    let mut numbers = Vec::new();
    for (index, institution) in file.organisation.institutions.iter().enumerate() {
        if let Some(number) = institution.organisation_number() {
            OrganisationNumber::parse(number).map_err(|_| {
                Rejection::new(
                    ProblemCode::DataQualityIdentifier,
                    format!(
                        "Institusjon[{}]: the organisation number fails its check digit",
                        index + 1
                    ),
                )
            })?;
            numbers.push(number);
        }
    }
    if !numbers.contains(&organisation_number) {
        return Err(Rejection::new(
            ProblemCode::DataQualityOrganisationMismatch,
            "no Institusjon of the file carries the database's organisation number",
        ));
    }
    for (index, user) in file.organisation.users.iter().enumerate() {
        let whose = format!("Brukere/Helseperson[{}]", index + 1);
        for ident in &user.identifiers {
            if ident.kind().is_person_number() {
                check_person_number(&ident.value, policy, &whose)?;
            }
        }
        if let Some(hpr) = user.hpr_number() {
            HprNumber::parse(hpr).map_err(|_| {
                Rejection::new(
                    ProblemCode::DataQualityIdentifier,
                    format!("{whose}: the HPR number is not 1 to 9 digits"),
                )
            })?;
        }
    }
    Ok(())
}

/// The patient's identifiers valid, its Id the file's name, its doctors' HPR numbers well-formed.
pub fn check_patient(
    file: &PatientFile,
    policy: &ValidationPolicy,
    file_name: &str,
) -> Result<(), Rejection> {
    let patient = &file.patient;
    let stem = file_name
        .rsplit(['\\', '/'])
        .next()
        .unwrap_or(file_name)
        .rsplit_once('.')
        .map(|(stem, _)| stem)
        .unwrap_or(file_name);
    if Uuid::parse_str(stem).ok() != Some(patient.id) {
        return Err(Rejection::new(
            ProblemCode::DataQualityIdentifier,
            "PasientExport/Id does not match the file name",
        ));
    }
    for ident in &patient.demographics.identifiers {
        if ident.kind().is_person_number() {
            check_person_number(&ident.value, policy, "PasientExport/DemografiskInfo/Ident")?;
        }
    }
    for (path, doctor) in [
        (
            "PasientExport/Fastlege/HprId",
            &patient.general_practitioner,
        ),
        (
            "PasientExport/MultidoseAnsvarligLege/HprId",
            &patient.multidose_doctor,
        ),
    ] {
        if let Some(doctor) = doctor
            && !doctor.hpr_id.is_empty()
        {
            HprNumber::parse(&doctor.hpr_id).map_err(|_| {
                Rejection::new(
                    ProblemCode::DataQualityIdentifier,
                    format!("{path} is not 1 to 9 digits"),
                )
            })?;
        }
    }
    for hpr in patient.referenced_hpr_numbers() {
        HprNumber::parse(hpr).map_err(|_| {
            Rejection::new(
                ProblemCode::DataQualityIdentifier,
                "a referenced HPR number is not 1 to 9 digits",
            )
        })?;
    }
    Ok(())
}

/// HPR numbers compared as numbers (the sample pads them to nine digits).
fn hpr_key(hpr: &str) -> String {
    let trimmed = hpr.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}

/// The file being ingested and who sent it: what the audit trail records.
pub struct Claimed {
    pub file_name: String,
    pub file_type: String,
    pub migration_key_id: String,
    pub helseid_client_id: Option<String>,
    /// SHA-256 of the file as received (the envelope).
    pub sha256: Vec<u8>,
    pub size: i64,
    pub completed_at: chrono::DateTime<chrono::Utc>,
}

pub type Outcome = (IngestState, Option<ProblemCode>);

/// Who ingests a complete upload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingester {
    /// The request that received the last byte.
    Request,
    /// A replica's recovery loop, for an upload left complete.
    Recovery,
}

/// How long a recovery loop leaves a file it cannot decrypt for the other replicas before it
/// records the rejection: longer than a rolling update, so a replica that does not hold the new
/// decryption key yet (or still) never rejects a file another replica can read.
pub const RECOVERY_DECRYPTION_GRACE: Duration = Duration::from_secs(15 * 60);

/// Whether a recovery loop leaves this refusal unrecorded for now: only `envelope-undecryptable`
/// (the one refusal that depends on the replica's keys, not on the file) and only within
/// [`RECOVERY_DECRYPTION_GRACE`] of the upload's completion.
pub fn defer_refusal(
    by: Ingester,
    code: ProblemCode,
    completed_at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> bool {
    by == Ingester::Recovery
        && code == ProblemCode::EnvelopeUndecryptable
        && (now - completed_at)
            .to_std()
            .map_or(true, |age| age < RECOVERY_DECRYPTION_GRACE)
}

/// Ingests one complete upload if no other replica holds it. `None`: another replica is at it (or,
/// in recovery, this replica cannot decrypt it and leaves it, see [`defer_refusal`]).
pub async fn ingest_upload(
    state: Arc<AppState>,
    session: Session,
    upload: Uuid,
    by: Ingester,
) -> Result<Option<Outcome>, ApiError> {
    let _slot = ingest_slot(&state).await?;
    let started = Instant::now();
    let mut tx = session
        .pool
        .begin()
        .await
        .map_err(|e| database("begin the ingest", e))?;
    let row = sqlx::query(
        "SELECT file_name, file_type, migration_key_id, helseid_client_id, sha256, declared_length, completed_at
         FROM sfm.uploads WHERE id = $1 AND state = 'complete' FOR UPDATE SKIP LOCKED",
    )
    .bind(upload)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| database("claim the upload", e))?;
    let Some(row) = row else {
        drop(tx);
        return current_outcome(&session, upload).await;
    };
    let claimed = Claimed {
        file_name: row.get("file_name"),
        file_type: row.get("file_type"),
        migration_key_id: row.get("migration_key_id"),
        helseid_client_id: row.get("helseid_client_id"),
        sha256: row.get("sha256"),
        size: row.get("declared_length"),
        completed_at: row.get("completed_at"),
    };
    let chunks: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT data FROM sfm.upload_chunks WHERE upload_id = $1 ORDER BY chunk_offset",
    )
    .bind(upload)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| database("read the upload", e))?;
    let data = Bytes::from(chunks.concat());

    // Nothing is stored once the migration is validated: the upload is closed as refused for that.
    let checked = match super::guard::writable(&mut tx, session.uid).await {
        Err(error) if error.code() == ProblemCode::MigrationValidated => Ok(Err(Rejection::new(
            ProblemCode::MigrationValidated,
            "the migration was validated before this file was stored; nothing is stored after the validation",
        ))),
        Err(error) => Err(error),
        Ok(()) => check_and_store(&state, &session, &mut tx, upload, &claimed, data).await,
    };
    let outcome = match checked? {
        Ok(()) => {
            mark_stored(&mut tx, upload, &claimed.file_name).await?;
            (IngestState::Stored, None)
        }
        Err(rejection)
            if defer_refusal(by, rejection.code, claimed.completed_at, chrono::Utc::now()) =>
        {
            tx.rollback()
                .await
                .map_err(|e| database("undo the ingest", e))?;
            tracing::warn!(
                database = %session.database_name(),
                "this replica cannot decrypt an upload left complete; left for a replica that holds its key"
            );
            tracing::debug!(%upload, "left for another replica");
            return Ok(None);
        }
        Err(rejection) => {
            tx = start_over(tx, &session).await?;
            let still: Option<String> = sqlx::query_scalar(
                "SELECT state FROM sfm.uploads WHERE id = $1 AND state = 'complete' FOR UPDATE SKIP LOCKED",
            )
            .bind(upload)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| database("claim the upload", e))?;
            if still.is_none() {
                drop(tx);
                return current_outcome(&session, upload).await;
            }
            record_rejection(&mut tx, upload, &claimed, &rejection).await?;
            (IngestState::Rejected, Some(rejection.code))
        }
    };
    tx.commit()
        .await
        .map_err(|e| database("commit the ingest", e))?;
    ingested(&state, &session, upload, &claimed, outcome, started);
    Ok(Some(outcome))
}

/// A file that came whole in its creation request (tus creation-with-upload, as `sfm-migrate` sends
/// every file that fits in one chunk): the upload row, the ingest and its outcome are written in one
/// transaction, and no chunk is stored. Nothing is acknowledged before the commit, so if this replica
/// dies mid-way the client sends the file again, and the same bytes are stored once.
pub async fn ingest_whole(
    state: Arc<AppState>,
    session: Session,
    new: NewUpload,
    data: Bytes,
) -> Result<Outcome, ApiError> {
    let _slot = ingest_slot(&state).await?;
    let started = Instant::now();
    let claimed = Claimed {
        file_name: new.file_name.clone(),
        file_type: new.file_type.as_str().to_owned(),
        migration_key_id: session.key_id.clone(),
        helseid_client_id: session.helseid_client.clone(),
        sha256: digest(&data),
        size: data.len() as i64,
        completed_at: chrono::Utc::now(),
    };
    let mut tx = session
        .pool
        .begin()
        .await
        .map_err(|e| database("begin the ingest", e))?;
    check_creation(&mut tx, &state, &session, new.file_type).await?;
    new.insert(&mut tx, &session, Some(("ingested", &claimed.sha256)))
        .await?;
    let outcome = match check_and_store(&state, &session, &mut tx, new.id, &claimed, data).await? {
        Ok(()) => {
            resolve_earlier_rejections(&mut tx, &claimed.file_name).await?;
            (IngestState::Stored, None)
        }
        Err(rejection) => {
            tx = start_over(tx, &session).await?;
            new.insert(&mut tx, &session, Some(("rejected", &claimed.sha256)))
                .await?;
            insert_rejection(&mut tx, new.id, &claimed, &rejection).await?;
            (IngestState::Rejected, Some(rejection.code))
        }
    };
    tx.commit()
        .await
        .map_err(|e| database("commit the ingest", e))?;
    ingested(&state, &session, new.id, &claimed, outcome, started);
    Ok(outcome)
}

/// Ingests are CPU work and hold a database connection: a bounded number run at once.
async fn ingest_slot(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state
        .ingest_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| ApiError::internal("wait for an ingest slot", e))
}

/// Undoes whatever `store` wrote and begins a clean transaction for recording the rejection.
async fn start_over(
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    session: &Session,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, ApiError> {
    tx.rollback()
        .await
        .map_err(|e| database("undo the ingest", e))?;
    let mut tx = session
        .pool
        .begin()
        .await
        .map_err(|e| database("begin the rejection", e))?;
    super::guard::lock(&mut tx).await?;
    Ok(tx)
}

/// Checks one file and stores it in `tx`. `Ok(Err(_))`: refused; the caller rolls `tx` back and
/// records the rejection. The same bytes stored before count as stored.
async fn check_and_store(
    state: &Arc<AppState>,
    session: &Session,
    tx: &mut PgConnection,
    upload: Uuid,
    claimed: &Claimed,
    data: Bytes,
) -> Result<Result<(), Rejection>, ApiError> {
    let already: Option<i64> =
        sqlx::query_scalar("SELECT id FROM sfm.stored_files WHERE sha256 = $1")
            .bind(&claimed.sha256)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| database("look for the same file", e))?;
    if already.is_some() {
        return Ok(Ok(()));
    }
    let file_type: FileType = claimed.file_type.parse().unwrap_or(FileType::Patient);
    let blocking_state = state.clone();
    let db = session.database.clone();
    let name = claimed.file_name.clone();
    let prepared = tokio::task::spawn_blocking(move || {
        prepare(
            &blocking_state.config.decryption_keys,
            &data,
            file_type,
            &name,
            &blocking_state.config.limits.format,
            &db,
        )
    })
    .await
    .map_err(|e| ApiError::internal("run the ingest", e))?;
    match prepared {
        Err(rejection) => Ok(Err(rejection)),
        Ok(prepared) => store(tx, &session.database, Some(upload), claimed, prepared).await,
    }
}

/// After the commit: metrics, the status batcher, and one log line (no personal data).
fn ingested(
    state: &AppState,
    session: &Session,
    upload: Uuid,
    claimed: &Claimed,
    outcome: Outcome,
    started: Instant,
) {
    state.metrics.observe_ingest(outcome.0, started.elapsed());
    state.mark_dirty(session.uid);
    tracing::debug!(%upload, "file ingested");
    tracing::info!(
        database = %session.database_name(),
        file_type = %claimed.file_type,
        result = outcome.0.as_str(),
        code = outcome.1.map(|c| c.as_str()).unwrap_or(""),
        millis = started.elapsed().as_millis() as u64,
        "file ingested"
    );
}

/// What became of an upload another replica (or an earlier request) ingested.
async fn current_outcome(session: &Session, upload: Uuid) -> Result<Option<Outcome>, ApiError> {
    let row = sqlx::query(
        "SELECT u.state, (SELECT reason_code FROM sfm.rejections r WHERE r.upload_id = u.id ORDER BY r.id DESC LIMIT 1) AS code
         FROM sfm.uploads u WHERE u.id = $1",
    )
    .bind(upload)
    .fetch_optional(&session.pool)
    .await
    .map_err(|e| database("read the upload", e))?;
    Ok(row.and_then(|row| {
        let state: String = row.get("state");
        let code: Option<String> = row.get("code");
        match state.as_str() {
            "ingested" => Some((IngestState::Stored, None)),
            "rejected" => Some((
                IngestState::Rejected,
                code.and_then(|c| c.replace('_', "-").parse().ok()),
            )),
            _ => None,
        }
    }))
}

async fn mark_stored(tx: &mut PgConnection, upload: Uuid, file_name: &str) -> Result<(), ApiError> {
    close_upload(tx, upload, "ingested").await?;
    resolve_earlier_rejections(tx, file_name).await
}

/// Marks a claimed upload `ingested` or `rejected` and drops its bytes: they are stored (or refused)
/// by now.
async fn close_upload(tx: &mut PgConnection, upload: Uuid, state: &str) -> Result<(), ApiError> {
    sqlx::query("UPDATE sfm.uploads SET state = $2, updated_at = now() WHERE id = $1")
        .bind(upload)
        .bind(state)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("mark the upload done", e))?;
    sqlx::query("DELETE FROM sfm.upload_chunks WHERE upload_id = $1")
        .bind(upload)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("drop the upload's chunks", e))?;
    Ok(())
}

/// A file stored under a name resolves the rejections recorded earlier for that name.
async fn resolve_earlier_rejections(
    tx: &mut PgConnection,
    file_name: &str,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE sfm.rejections SET resolved = true, resolved_at = now() WHERE file_name = $1 AND NOT resolved")
        .bind(file_name)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("resolve earlier rejections", e))?;
    Ok(())
}

async fn record_rejection(
    tx: &mut PgConnection,
    upload: Uuid,
    claimed: &Claimed,
    rejection: &Rejection,
) -> Result<(), ApiError> {
    insert_rejection(tx, upload, claimed, rejection).await?;
    close_upload(tx, upload, "rejected").await
}

async fn insert_rejection(
    tx: &mut PgConnection,
    upload: Uuid,
    claimed: &Claimed,
    rejection: &Rejection,
) -> Result<(), ApiError> {
    let message: String = rejection.message.chars().take(2000).collect();
    sqlx::query(
        "INSERT INTO sfm.rejections (upload_id, file_name, sha256, reason_code, message, migration_key_id, helseid_client_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(upload)
    .bind(&claimed.file_name)
    .bind(&claimed.sha256)
    .bind(rejection.code.as_str().replace('-', "_"))
    .bind(message)
    .bind(&claimed.migration_key_id)
    .bind(&claimed.helseid_client_id)
    .execute(&mut *tx)
    .await
    .map_err(|e| database("record the rejection", e))?;
    Ok(())
}

fn digest(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// Writes a prepared file. `Ok(Err(_))` is a rejection found against the database (an unknown HPR
/// number, a patient before the organisation); the caller rolls back. Public for the benchmark.
pub async fn store(
    tx: &mut PgConnection,
    target: &MigrationDatabase,
    upload: Option<Uuid>,
    claimed: &Claimed,
    prepared: Prepared,
) -> Result<Result<(), Rejection>, ApiError> {
    let kind = match &prepared {
        Prepared::Organisation(_) => "organisation",
        Prepared::Patient(_) => "patient",
        Prepared::Report(_) => "report",
    };
    if kind != "organisation" {
        let organisation: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sfm.stored_files WHERE kind = 'organisation')",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| database("check the organisation", e))?;
        if !organisation {
            return Ok(Err(Rejection::new(
                ProblemCode::OrganisationMissing,
                "the organisation file was not stored before this file",
            )));
        }
    }
    let stored_file_id: i64 = sqlx::query_scalar(
        "INSERT INTO sfm.stored_files (kind, file_name, size_bytes, sha256, migration_key_id, helseid_client_id, upload_id, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(kind)
    .bind(&claimed.file_name)
    .bind(claimed.size)
    .bind(&claimed.sha256)
    .bind(&claimed.migration_key_id)
    .bind(&claimed.helseid_client_id)
    .bind(upload)
    .bind(claimed.completed_at)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| database("store the file", e))?;
    let mut deviations: Vec<(String, Deviation)> = prepared
        .deviations()
        .iter()
        .map(|d| {
            let entry = if kind == "organisation" {
                ORGANISATION_DOCUMENT
            } else {
                PATIENT_DOCUMENT
            };
            (entry.to_owned(), d.clone())
        })
        .collect();
    match prepared {
        Prepared::Organisation(file) => {
            store_organisation(tx, target, stored_file_id, &file).await?
        }
        Prepared::Patient(file) => {
            if let Err(rejection) =
                store_patient(tx, stored_file_id, claimed, &file, &mut deviations).await?
            {
                return Ok(Err(rejection));
            }
        }
        Prepared::Report(entries) => {
            let mut documents = Documents::default();
            for (name, data) in &entries {
                documents.push(None, "report", name, data);
            }
            documents.insert(tx, stored_file_id, None).await?;
        }
    }
    if !deviations.is_empty() {
        let (entries, rest): (Vec<String>, Vec<Deviation>) = deviations.into_iter().unzip();
        let (paths, messages): (Vec<String>, Vec<String>) = rest
            .into_iter()
            .map(|d| (d.path, d.message.chars().take(2000).collect()))
            .unzip();
        sqlx::query(
            "INSERT INTO sfm.deviations (stored_file_id, entry_name, path, message)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[])",
        )
        .bind(stored_file_id)
        .bind(entries)
        .bind(paths)
        .bind(messages)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("record the deviations", e))?;
    }
    Ok(Ok(()))
}

fn digits_or_none(value: Option<&str>, max: usize) -> Option<String> {
    value
        .filter(|v| !v.is_empty() && v.len() <= max && v.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
}

async fn store_organisation(
    tx: &mut PgConnection,
    target: &MigrationDatabase,
    stored_file_id: i64,
    file: &OrganisationFile,
) -> Result<(), ApiError> {
    let spec = &target.spec.organisation;
    let her_id = file
        .organisation
        .institutions
        .iter()
        .find(|i| i.organisation_number() == Some(spec.organisation_number.as_str()))
        .and_then(|i| digits_or_none(i.her_id(), 9))
        .or_else(|| digits_or_none(spec.her_id.as_deref(), 9));
    sqlx::query(
        "INSERT INTO sfm.organisation (name, organisation_number, her_id, helseid_client_id, stored_file_id)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (singleton) DO UPDATE SET name = EXCLUDED.name, organisation_number = EXCLUDED.organisation_number,
           her_id = EXCLUDED.her_id, helseid_client_id = EXCLUDED.helseid_client_id, stored_file_id = EXCLUDED.stored_file_id, updated_at = now()",
    )
    .bind(&spec.name)
    .bind(&spec.organisation_number)
    .bind(her_id)
    .bind(&spec.helse_id_client_id)
    .bind(stored_file_id)
    .execute(&mut *tx)
    .await
    .map_err(|e| database("store the organisation", e))?;
    for institution in &file.organisation.institutions {
        sqlx::query(
            "INSERT INTO sfm.institutions (fm_id, name, her_id, organisation_number, stored_file_id) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (fm_id) DO UPDATE SET name = EXCLUDED.name, her_id = EXCLUDED.her_id,
               organisation_number = EXCLUDED.organisation_number, stored_file_id = EXCLUDED.stored_file_id",
        )
        .bind(&institution.id)
        .bind(&institution.name)
        .bind(institution.her_id())
        .bind(institution.organisation_number())
        .bind(stored_file_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("store an institution", e))?;
    }
    for user in &file.organisation.users {
        let specialities: Vec<String> = user.specialities.iter().map(|s| s.code.clone()).collect();
        sqlx::query(
            "INSERT INTO sfm.users (fm_id, username, role, active, family_name, middle_name, given_name, date_of_birth,
                                    fnr, hpr, profession_code, specialities, prescribing_right, stored_file_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (fm_id) DO UPDATE SET username = EXCLUDED.username, role = EXCLUDED.role, active = EXCLUDED.active,
               family_name = EXCLUDED.family_name, middle_name = EXCLUDED.middle_name, given_name = EXCLUDED.given_name,
               date_of_birth = EXCLUDED.date_of_birth, fnr = EXCLUDED.fnr, hpr = EXCLUDED.hpr,
               profession_code = EXCLUDED.profession_code, specialities = EXCLUDED.specialities,
               prescribing_right = EXCLUDED.prescribing_right, stored_file_id = EXCLUDED.stored_file_id",
        )
        .bind(&user.id)
        .bind(&user.username)
        .bind(&user.user_type)
        .bind(user.active.unwrap_or(true))
        .bind(&user.family_name)
        .bind(&user.middle_name)
        .bind(&user.given_name)
        .bind(user.date_of_birth)
        .bind(digits_or_none(user.national_id(), 11).filter(|v| v.len() == 11))
        .bind(digits_or_none(user.hpr_number(), 9))
        .bind(user.profession.as_ref().map(|p| p.code.clone()))
        .bind(specialities)
        .bind(user.may_prescribe.map(|b| b.to_string()))
        .bind(stored_file_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("store a user", e))?;
    }
    let mut documents = Documents::default();
    for document in &file.documents {
        documents.push(None, "organisation_data", &document.name, &document.data);
    }
    documents.insert(tx, stored_file_id, None).await
}

fn treatment_kind(kind: TreatmentKind) -> &'static str {
    match kind {
        TreatmentKind::Drug => "medicine",
        TreatmentKind::Nutrition => "nutrition",
        TreatmentKind::Consumable => "medical_supply",
        TreatmentKind::Vaccine => "vaccine",
    }
}

async fn store_patient(
    tx: &mut PgConnection,
    stored_file_id: i64,
    claimed: &Claimed,
    file: &PatientFile,
    deviations: &mut Vec<(String, Deviation)>,
) -> Result<Result<(), Rejection>, ApiError> {
    let patient = &file.patient;
    // Every HPR number the patient names must belong to a user of the organisation file.
    let users: Vec<String> = sqlx::query_scalar("SELECT hpr FROM sfm.users WHERE hpr IS NOT NULL")
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| database("read the users' HPR numbers", e))?;
    let known: HashSet<String> = users.iter().map(|h| hpr_key(h)).collect();
    let unknown = patient
        .referenced_hpr_numbers()
        .into_iter()
        .filter(|hpr| !known.contains(&hpr_key(hpr)))
        .count();
    if unknown > 0 {
        return Ok(Err(Rejection::new(
            ProblemCode::DataQualityHprUnknown,
            format!(
                "{unknown} HPR number(s) the patient's prescriptions or multidose doctor name belong to no user of the organisation file"
            ),
        )));
    }
    let demographics = &patient.demographics;
    // `xmax = 0`: the row is new (no earlier version), so there is nothing of it to replace.
    let (patient_id, inserted): (i64, bool) = sqlx::query_as(
        "INSERT INTO sfm.patients (fm_id, family_name, middle_name, given_name, sex_code, date_of_birth, gp_hpr, multidose_hpr,
                                   plo_her_id, stored_file_id, source_file_name, source_sha256)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (fm_id) DO UPDATE SET family_name = EXCLUDED.family_name, middle_name = EXCLUDED.middle_name,
           given_name = EXCLUDED.given_name, sex_code = EXCLUDED.sex_code, date_of_birth = EXCLUDED.date_of_birth,
           gp_hpr = EXCLUDED.gp_hpr, multidose_hpr = EXCLUDED.multidose_hpr, plo_her_id = EXCLUDED.plo_her_id,
           stored_file_id = EXCLUDED.stored_file_id, source_file_name = EXCLUDED.source_file_name,
           source_sha256 = EXCLUDED.source_sha256, updated_at = now()
         RETURNING id, xmax = 0",
    )
    .bind(patient.id)
    .bind(&demographics.family_name)
    .bind(&demographics.middle_name)
    .bind(&demographics.given_name)
    .bind(demographics.sex.as_ref().map(|s| s.code.clone()))
    .bind(demographics.date_of_birth)
    .bind(digits_or_none(patient.general_practitioner.as_ref().map(|d| d.hpr_id.as_str()), 9))
    .bind(digits_or_none(patient.multidose_doctor.as_ref().map(|d| d.hpr_id.as_str()), 9))
    .bind(patient.care_service.as_ref().map(|c| c.her_id.clone()))
    .bind(stored_file_id)
    .bind(&claimed.file_name)
    .bind(&claimed.sha256)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| database("store the patient", e))?;
    if !inserted {
        // A re-ingest replaces everything that hangs off the patient.
        for statement in [
            "DELETE FROM sfm.patient_identifiers WHERE patient_id = $1",
            "DELETE FROM sfm.allergies WHERE patient_id = $1",
            "DELETE FROM sfm.treatments WHERE patient_id = $1",
            "DELETE FROM sfm.messages WHERE patient_id = $1",
            "DELETE FROM sfm.documents WHERE patient_id = $1",
        ] {
            sqlx::query(statement)
                .bind(patient_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| database("replace the patient's rows", e))?;
        }
    }
    // Everything is checked before anything is written; each kind of row then goes in one
    // statement (`unnest` of arrays), not one round trip per row.
    let rows = match PatientRows::collect(patient) {
        Ok(rows) => rows,
        Err(rejection) => return Ok(Err(rejection)),
    };
    sqlx::query(
        "INSERT INTO sfm.patient_identifiers (patient_id, type_code, type_system, value)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(patient_id)
    .bind(&rows.identifiers.type_code)
    .bind(&rows.identifiers.type_system)
    .bind(&rows.identifiers.value)
    .execute(&mut *tx)
    .await
    .map_err(|e| database("store the identifiers", e))?;
    if !rows.person_numbers.value.is_empty() {
        let same_person: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM sfm.patient_identifiers i JOIN unnest($2::text[], $3::text[]) AS p (type_code, value)
                              ON i.value = p.value AND i.type_code = p.type_code
                            WHERE i.patient_id <> $1)",
        )
        .bind(patient_id)
        .bind(&rows.person_numbers.type_code)
        .bind(&rows.person_numbers.value)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| database("look for the same person", e))?;
        if same_person {
            deviations.push((
                PATIENT_DOCUMENT.to_owned(),
                Deviation {
                    path: "PasientExport/DemografiskInfo/Ident".into(),
                    message: "the same person (national identity number) is stored under another patient Id".into(),
                },
            ));
        }
    }
    if !rows.allergies.fm_id.is_empty() {
        let a = &rows.allergies;
        sqlx::query(
            "INSERT INTO sfm.allergies (patient_id, fm_id, group_id, head_of_history, last_updated_on, registered_by, discarded, deleted_reason, deleted_by)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::boolean[], $5::date[], $6::text[], $7::boolean[], $8::text[], $9::text[])
             ON CONFLICT (patient_id, fm_id) DO NOTHING",
        )
        .bind(patient_id)
        .bind(&a.fm_id)
        .bind(&a.group_id)
        .bind(&a.head_of_history)
        .bind(&a.last_updated_on)
        .bind(&a.registered_by)
        .bind(&a.discarded)
        .bind(&a.deleted_reason)
        .bind(&a.deleted_by)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("store the allergies", e))?;
    }
    if !rows.treatments.lib_id.is_empty() {
        let t = &rows.treatments;
        sqlx::query(
            "INSERT INTO sfm.treatments (patient_id, kind, lib_id, started_on, prescription_id)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::date[], $5::text[])
             ON CONFLICT (patient_id, lib_id) DO NOTHING",
        )
        .bind(patient_id)
        .bind(&t.kind)
        .bind(&t.lib_id)
        .bind(&t.started_on)
        .bind(&t.prescription_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("store the treatments", e))?;
    }
    // Message ids by file name (the first message naming a file wins), for the documents.
    let mut message_ids: BTreeMap<String, i64> = BTreeMap::new();
    if !rows.messages.fm_id.is_empty() {
        let m = &rows.messages;
        let inserted: Vec<(i64, String)> = sqlx::query_as(
            "WITH new AS (
               INSERT INTO sfm.messages (patient_id, fm_id, parent_fm_id, correspondence, state, msg_id, msg_type, generated_at, file_name)
               SELECT $1, fm_id, parent_fm_id, correspondence, state, msg_id, msg_type, generated_at, file_name
               FROM unnest($2::text[], $3::text[], $4::boolean[], $5::text[], $6::text[], $7::text[], $8::timestamp[], $9::text[])
                    WITH ORDINALITY AS m (fm_id, parent_fm_id, correspondence, state, msg_id, msg_type, generated_at, file_name, position)
               ORDER BY position
               ON CONFLICT (patient_id, fm_id) DO NOTHING
               RETURNING id, fm_id, file_name)
             SELECT new.id, new.file_name FROM new
             JOIN unnest($2::text[]) WITH ORDINALITY AS o (fm_id, position) ON o.fm_id = new.fm_id
             ORDER BY o.position",
        )
        .bind(patient_id)
        .bind(&m.fm_id)
        .bind(&m.parent_fm_id)
        .bind(&m.correspondence)
        .bind(&m.state)
        .bind(&m.msg_id)
        .bind(&m.msg_type)
        .bind(&m.generated_at)
        .bind(&m.file_name)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| database("store the messages", e))?;
        for (id, file_name) in inserted {
            message_ids
                .entry(file_name.replace('\\', "/"))
                .or_insert(id);
        }
    }
    let mut documents = Documents::default();
    for document in &file.documents {
        if document.name == PATIENT_DOCUMENT {
            documents.push(None, "patient_data", &document.name, &document.data);
        } else if let Some(message_id) = message_ids.get(&document.name.replace('\\', "/")) {
            documents.push(Some(*message_id), "message", &document.name, &document.data);
        }
    }
    documents
        .insert(tx, stored_file_id, Some(patient_id))
        .await?;
    Ok(Ok(()))
}

/// A patient's rows as column arrays, every field checked: a missing date or id refuses the file
/// before anything is written.
#[derive(Default)]
struct PatientRows {
    identifiers: IdentifierColumns,
    /// The national identity numbers among them, to find the same person under another Id.
    person_numbers: IdentifierColumns,
    allergies: AllergyColumns,
    treatments: TreatmentColumns,
    messages: MessageColumns,
}

#[derive(Default)]
struct IdentifierColumns {
    type_code: Vec<String>,
    type_system: Vec<String>,
    value: Vec<String>,
}

#[derive(Default)]
struct AllergyColumns {
    fm_id: Vec<String>,
    group_id: Vec<String>,
    head_of_history: Vec<bool>,
    last_updated_on: Vec<chrono::NaiveDate>,
    registered_by: Vec<Option<String>>,
    discarded: Vec<bool>,
    deleted_reason: Vec<Option<String>>,
    deleted_by: Vec<Option<String>>,
}

#[derive(Default)]
struct TreatmentColumns {
    kind: Vec<&'static str>,
    lib_id: Vec<String>,
    started_on: Vec<chrono::NaiveDate>,
    prescription_id: Vec<Option<String>>,
}

#[derive(Default)]
struct MessageColumns {
    fm_id: Vec<String>,
    parent_fm_id: Vec<Option<String>>,
    correspondence: Vec<bool>,
    state: Vec<String>,
    msg_id: Vec<String>,
    msg_type: Vec<String>,
    generated_at: Vec<chrono::NaiveDateTime>,
    file_name: Vec<String>,
}

impl PatientRows {
    fn collect(patient: &crate::model::PatientExport) -> Result<Self, Rejection> {
        let mut rows = PatientRows::default();
        for ident in &patient.demographics.identifiers {
            if ident.value.is_empty() || ident.type_id.code.is_empty() {
                continue;
            }
            let system = ident.type_id.system.clone().unwrap_or_default();
            if ident.kind().is_person_number() {
                rows.person_numbers
                    .type_code
                    .push(ident.type_id.code.clone());
                rows.person_numbers.type_system.push(system.clone());
                rows.person_numbers.value.push(ident.value.clone());
            }
            rows.identifiers.type_code.push(ident.type_id.code.clone());
            rows.identifiers.type_system.push(system);
            rows.identifiers.value.push(ident.value.clone());
        }
        for (index, reaction) in patient.allergies.iter().enumerate() {
            let Some(updated) = reaction
                .last_updated
                .or_else(|| reaction.cave.as_ref().and_then(|c| c.registered_on))
            else {
                return Err(Rejection::new(
                    ProblemCode::DataQualityMissingField,
                    format!(
                        "PasientExport/Legemiddelreaksjon[{}] has no SistOppdatertDato",
                        index + 1
                    ),
                ));
            };
            if reaction.id.is_empty() {
                return Err(Rejection::new(
                    ProblemCode::DataQualityMissingField,
                    format!("PasientExport/Legemiddelreaksjon[{}] has no Id", index + 1),
                ));
            }
            let a = &mut rows.allergies;
            a.fm_id.push(reaction.id.clone());
            a.group_id.push(reaction.group_id.clone());
            a.head_of_history
                .push(reaction.head_of_history.unwrap_or(false));
            a.last_updated_on.push(updated);
            a.registered_by.push(reaction.registered_by.clone());
            a.discarded.push(reaction.discarded.unwrap_or(false));
            a.deleted_reason.push(
                reaction
                    .deleted
                    .as_ref()
                    .and_then(|d| d.reason.as_ref())
                    .map(|r| r.code.clone()),
            );
            a.deleted_by
                .push(reaction.deleted.as_ref().map(|d| d.deleted_by.clone()));
        }
        for (index, treatment) in patient.treatments.iter().enumerate() {
            let Some(started) = treatment.start_date else {
                return Err(Rejection::new(
                    ProblemCode::DataQualityMissingField,
                    format!(
                        "PasientExport/Behandlinger/{}[{}] has no DatoOppstart",
                        treatment.kind.element_name(),
                        index + 1
                    ),
                ));
            };
            if treatment.lib_id.is_empty() {
                return Err(Rejection::new(
                    ProblemCode::DataQualityMissingField,
                    format!(
                        "PasientExport/Behandlinger/{}[{}] has no LibId",
                        treatment.kind.element_name(),
                        index + 1
                    ),
                ));
            }
            let t = &mut rows.treatments;
            t.kind.push(treatment_kind(treatment.kind));
            t.lib_id.push(treatment.lib_id.clone());
            t.started_on.push(started);
            t.prescription_id.push(
                treatment
                    .prescriptions
                    .iter()
                    .find(|p| p.head_of_history == Some(true))
                    .or(treatment.prescriptions.last())
                    .map(|p| p.prescription_id.clone()),
            );
        }
        for (index, message) in patient.messages.iter().enumerate() {
            let Some(file_name) = message.file.as_deref().filter(|f| !f.is_empty()) else {
                continue;
            };
            let Some(generated_at) = message.generated_at else {
                return Err(Rejection::new(
                    ProblemCode::DataQualityMissingField,
                    format!(
                        "PasientExport/Meldinger/Melding[{}] has no GenDate",
                        index + 1
                    ),
                ));
            };
            let m = &mut rows.messages;
            m.fm_id.push(
                message
                    .id
                    .clone()
                    .filter(|id| !id.is_empty())
                    .unwrap_or_else(|| file_name.to_owned()),
            );
            m.parent_fm_id.push(message.parent_id.clone());
            m.correspondence
                .push(message.correspondence.unwrap_or(false));
            m.state.push(message.state.clone().unwrap_or_default());
            m.msg_id.push(message.msg_id.clone().unwrap_or_default());
            m.msg_type.push(
                message
                    .message_type
                    .as_ref()
                    .map(|t| t.code.clone())
                    .unwrap_or_default(),
            );
            m.generated_at.push(generated_at);
            m.file_name.push(file_name.to_owned());
        }
        Ok(rows)
    }
}

/// Raw documents of one stored file, written in one statement.
#[derive(Default)]
struct Documents<'a> {
    message_id: Vec<Option<i64>>,
    kind: Vec<&'static str>,
    entry_name: Vec<&'a str>,
    size_bytes: Vec<i64>,
    sha256: Vec<Vec<u8>>,
    content: Vec<&'a [u8]>,
}

impl<'a> Documents<'a> {
    fn push(&mut self, message_id: Option<i64>, kind: &'static str, name: &'a str, data: &'a [u8]) {
        self.message_id.push(message_id);
        self.kind.push(kind);
        self.entry_name.push(name);
        self.size_bytes.push(data.len() as i64);
        self.sha256.push(digest(data));
        self.content.push(data);
    }

    async fn insert(
        &self,
        tx: &mut PgConnection,
        stored_file_id: i64,
        patient_id: Option<i64>,
    ) -> Result<(), ApiError> {
        if self.kind.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO sfm.documents (stored_file_id, patient_id, message_id, kind, entry_name, size_bytes, sha256, content)
             SELECT $1, $2, * FROM unnest($3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::bytea[], $8::bytea[])
             ON CONFLICT (stored_file_id, entry_name) DO NOTHING",
        )
        .bind(stored_file_id)
        .bind(patient_id)
        .bind(&self.message_id)
        .bind(&self.kind)
        .bind(&self.entry_name)
        .bind(&self.size_bytes)
        .bind(&self.sha256)
        .bind(&self.content)
        .execute(&mut *tx)
        .await
        .map_err(|e| database("store the documents", e))?;
        Ok(())
    }
}

/// After a crash (or when a completing `PATCH` stopped waiting), complete uploads still wait for
/// their ingest: every few seconds each replica claims what no one holds (`SKIP LOCKED`). It also
/// drops unfinished uploads an hour past their expiry.
pub async fn recovery_loop(state: Arc<AppState>) {
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        interval.tick().await;
        let databases = match state.directory.databases().await {
            Ok(list) => list,
            Err(_) => continue,
        };
        for db in databases {
            let writable = matches!(
                db.status.as_ref().and_then(|s| s.phase),
                Some(
                    crate::crd::Phase::Staging
                        | crate::crd::Phase::Migrating
                        | crate::crd::Phase::Validated
                )
            );
            if !writable {
                continue;
            }
            let Some(uid) = super::auth::database_uid(&db) else {
                continue;
            };
            let Ok(pool) = state.directory.pool(&db).await else {
                continue;
            };
            let _ = sqlx::query(
                "DELETE FROM sfm.uploads WHERE state IN ('created', 'receiving') AND expires_at < now() - interval '1 hour'",
            )
            .execute(&pool)
            .await;
            let waiting: Vec<(Uuid, String)> = match sqlx::query_as(
                "SELECT id, migration_key_id FROM sfm.uploads WHERE state = 'complete' AND completed_at < now() - interval '3 seconds'
                 ORDER BY completed_at LIMIT 16",
            )
            .fetch_all(&pool)
            .await
            {
                Ok(rows) => rows,
                Err(_) => continue,
            };
            for (upload, key_id) in waiting {
                let session = Session {
                    database: db.clone(),
                    uid,
                    key_id,
                    helseid_client: None,
                    pool: pool.clone(),
                };
                tracing::info!(database = %session.database_name(), "ingesting an upload left complete");
                tracing::debug!(%upload, "ingesting an upload left complete");
                let _ = ingest_upload(state.clone(), session, upload, Ingester::Recovery).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recovery_defers_and_only_an_undecryptable_file_within_the_grace() {
        let now = chrono::Utc::now();
        let fresh = now - chrono::Duration::minutes(1);
        let old = now - chrono::Duration::minutes(16);
        let undecryptable = ProblemCode::EnvelopeUndecryptable;
        assert!(defer_refusal(Ingester::Recovery, undecryptable, fresh, now));
        // Past the grace every replica has had its chance: the refusal is recorded.
        assert!(!defer_refusal(Ingester::Recovery, undecryptable, old, now));
        // The request that received the last byte records at once: the client is waiting.
        assert!(!defer_refusal(Ingester::Request, undecryptable, fresh, now));
        // A refusal that depends on the file, not on the replica's keys, is recorded at once.
        for code in [
            ProblemCode::EnvelopeMalformed,
            ProblemCode::ArchiveLimits,
            ProblemCode::DataQualityHprUnknown,
        ] {
            assert!(
                !defer_refusal(Ingester::Recovery, code, fresh, now),
                "{code:?}"
            );
        }
        // A completion stamped in the future (clock skew between replicas) is within the grace.
        let ahead = now + chrono::Duration::minutes(1);
        assert!(defer_refusal(Ingester::Recovery, undecryptable, ahead, now));
    }
}
