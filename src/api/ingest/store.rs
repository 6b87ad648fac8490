//! The SQL writers: a prepared organisation file (the organisation, institutions and users) and
//! the stored-file audit row, inside the caller's transaction.

use sqlx::PgConnection;
use uuid::Uuid;

use super::checks::Prepared;
use super::file::Claimed;
use super::known_users::KnownUsers;
use super::patient_rows::{Documents, digits_or_none, store_patient};
use super::rejection::Refusal;
use crate::api::ApiError;
use crate::api::error::database;
use crate::api::guard::Writable;
use crate::contract::ProblemCode;
use crate::crd::MigrationDatabase;
use crate::format::patient_file::{ORGANISATION_DOCUMENT, OrganisationFile, PATIENT_DOCUMENT};
use crate::model::Deviation;

/// Writes a prepared file, in the transaction `found` was read in by [`crate::api::guard::checked`],
/// and resolves the rejections recorded earlier under its name. `Ok(Err(_))` is a rejection found
/// against the database (an unknown HPR number, a patient before the organisation); the caller
/// rolls back. Public for the benchmark.
pub async fn store(
    tx: &mut PgConnection,
    target: &MigrationDatabase,
    upload: Option<Uuid>,
    claimed: &Claimed,
    prepared: Prepared,
    found: Writable,
    users: &KnownUsers,
) -> Result<Result<(), Refusal>, ApiError> {
    let kind = match &prepared {
        Prepared::Organisation(_) => "organisation",
        Prepared::Patient(_) => "patient",
        Prepared::Report(_) => "report",
    };
    let organisation_file = found.organisation_file;
    if kind != "organisation" && organisation_file.is_none() {
        return Ok(Err(Refusal::new(
            ProblemCode::OrganisationMissing,
            "the organisation file was not stored before this file",
        )));
    }
    // One round trip: the stored file, and the rejections of its name resolved (a refusal later in
    // this transaction rolls both back).
    let stored_file_id: i64 = sqlx::query_scalar(
        "WITH resolved AS (
           UPDATE sfm.rejections SET resolved = true, resolved_at = now() WHERE file_name = $2 AND NOT resolved)
         INSERT INTO sfm.stored_files (kind, file_name, size_bytes, sha256, migration_key_id, helseid_client_id, upload_id, received_at)
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
            let known = users
                .hpr_numbers(tx, found.database, organisation_file)
                .await?;
            if let Err(rejection) =
                store_patient(tx, stored_file_id, claimed, &file, &mut deviations, &known).await?
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
