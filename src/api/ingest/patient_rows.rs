//! A prepared patient written as rows: the patient and its identifiers, allergies, treatments,
//! messages and documents, each kind in one batched statement.

use std::collections::{BTreeMap, HashSet};

use sqlx::PgConnection;

use super::checks::hpr_key;
use super::file::{Claimed, digest};
use super::rejection::Refusal;
use crate::api::ApiError;
use crate::api::error::database;
use crate::contract::ProblemCode;
use crate::format::patient_file::{PATIENT_DOCUMENT, PatientFile};
use crate::model::Deviation;
use crate::model::TreatmentKind;

pub(super) async fn store_patient(
    tx: &mut PgConnection,
    stored_file_id: i64,
    claimed: &Claimed,
    file: &PatientFile,
    deviations: &mut Vec<(String, Deviation)>,
) -> Result<Result<(), Refusal>, ApiError> {
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
        return Ok(Err(Refusal::new(
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
    fn collect(patient: &crate::model::PatientExport) -> Result<Self, Refusal> {
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
                return Err(Refusal::new(
                    ProblemCode::DataQualityMissingField,
                    format!(
                        "PasientExport/Legemiddelreaksjon[{}] has no SistOppdatertDato",
                        index + 1
                    ),
                ));
            };
            if reaction.id.is_empty() {
                return Err(Refusal::new(
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
                return Err(Refusal::new(
                    ProblemCode::DataQualityMissingField,
                    format!(
                        "PasientExport/Behandlinger/{}[{}] has no DatoOppstart",
                        treatment.kind.element_name(),
                        index + 1
                    ),
                ));
            };
            if treatment.lib_id.is_empty() {
                return Err(Refusal::new(
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
                return Err(Refusal::new(
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
pub(super) struct Documents<'a> {
    message_id: Vec<Option<i64>>,
    kind: Vec<&'static str>,
    entry_name: Vec<&'a str>,
    size_bytes: Vec<i64>,
    sha256: Vec<Vec<u8>>,
    content: Vec<&'a [u8]>,
}

impl<'a> Documents<'a> {
    pub(super) fn push(
        &mut self,
        message_id: Option<i64>,
        kind: &'static str,
        name: &'a str,
        data: &'a [u8],
    ) {
        self.message_id.push(message_id);
        self.kind.push(kind);
        self.entry_name.push(name);
        self.size_bytes.push(data.len() as i64);
        self.sha256.push(digest(data));
        self.content.push(data);
    }

    pub(super) async fn insert(
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

pub(super) fn digits_or_none(value: Option<&str>, max: usize) -> Option<String> {
    value
        .filter(|v| !v.is_empty() && v.len() <= max && v.bytes().all(|b| b.is_ascii_digit()))
        .map(str::to_owned)
}

pub(super) fn treatment_kind(kind: TreatmentKind) -> &'static str {
    match kind {
        TreatmentKind::Drug => "medicine",
        TreatmentKind::Nutrition => "nutrition",
        TreatmentKind::Consumable => "medical_supply",
        TreatmentKind::Vaccine => "vaccine",
    }
}
