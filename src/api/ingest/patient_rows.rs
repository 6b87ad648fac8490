//! A prepared patient written as rows: the patient and its identifiers, allergies, treatments,
//! messages and documents, in two statements (the patient; everything else as data-modifying CTEs
//! over `unnest` of arrays, with the same-person check). Each round trip costs both the API and
//! PostgreSQL more than the rows in it (docs/performance.md).

use std::collections::HashSet;

use sqlx::postgres::PgArguments;
use sqlx::{Arguments as _, PgConnection};

use super::checks::hpr_key;
use super::file::{Claimed, digest};
use super::rejection::Refusal;
use crate::api::ApiError;
use crate::api::error::database;
use crate::contract::ProblemCode;
use crate::format::patient_file::{PATIENT_DOCUMENT, PatientFile};
use crate::model::Deviation;
use crate::model::TreatmentKind;

/// The parameters of the statement that writes a patient's rows and documents.
const STATEMENT_PARAMETERS: usize = 32;
/// Room in its argument buffer besides the documents' content: the rows, names and digests of a
/// large patient (a few hundred rows) fit.
const ROWS_BYTES: usize = 32 * 1024;

pub(super) async fn store_patient(
    tx: &mut PgConnection,
    stored_file_id: i64,
    claimed: &Claimed,
    file: &PatientFile,
    deviations: &mut Vec<(String, Deviation)>,
    known: &HashSet<String>,
) -> Result<Result<(), Refusal>, ApiError> {
    let patient = &file.patient;
    // Every HPR number the patient names must belong to a user of the organisation file (`known`:
    // their numbers, normalised by `hpr_key`).
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
    // Everything is checked before anything is written; the rows then go in two statements, not
    // one round trip per kind or per row.
    let rows = match PatientRows::collect(patient) {
        Ok(rows) => rows,
        Err(rejection) => return Ok(Err(rejection)),
    };
    // Identifiers, allergies, treatments, messages and documents in one statement, which answers
    // whether one of the patient's national identity numbers is stored under another patient (it
    // reads the snapshot before its own inserts, and this patient's rows are excluded either way).
    // A document of a message goes with the first message (in `Meldinger` order) that names its
    // file; `PatientData.xml` is the patient's own. The stored file is new in this transaction, so
    // a document's name is taken only by an earlier entry of the same name (dropped in
    // `DocumentColumns::of`).
    let documents = DocumentColumns::of(file);
    let (a, t, m) = (&rows.allergies, &rows.treatments, &rows.messages);
    // The argument buffer sized for the documents up front: grown by doubling instead, it copied
    // about twice a patient's ~100 KB and took fresh pages for each step.
    let mut arguments = PgArguments::default();
    arguments.reserve(
        STATEMENT_PARAMETERS,
        documents.content.iter().map(|c| c.len()).sum::<usize>() + ROWS_BYTES,
    );
    let same_person: bool = sqlx::query_scalar_with(
        // The comment names what the statement writes: `pg_stat_activity` shows only the first
        // 1 KB of a statement, and this one reaches `sfm.documents` later than that.
        "/* a patient's rows: sfm.patient_identifiers, sfm.allergies, sfm.treatments, sfm.messages, sfm.documents */
         WITH identifiers AS (
           INSERT INTO sfm.patient_identifiers (patient_id, type_code, type_system, value)
           SELECT $1, * FROM unnest($28::text[], $29::text[], $30::text[])),
         allergies AS (
           INSERT INTO sfm.allergies (patient_id, fm_id, group_id, head_of_history, last_updated_on, registered_by, discarded, deleted_reason, deleted_by)
           SELECT $1, * FROM unnest($3::text[], $4::text[], $5::boolean[], $6::date[], $7::text[], $8::boolean[], $9::text[], $10::text[])),
         treatments AS (
           INSERT INTO sfm.treatments (patient_id, kind, lib_id, started_on, prescription_id)
           SELECT $1, * FROM unnest($11::text[], $12::text[], $13::date[], $14::text[])),
         messages AS (
           INSERT INTO sfm.messages (patient_id, fm_id, parent_fm_id, correspondence, state, msg_id, msg_type, generated_at, file_name)
           SELECT $1, fm_id, parent_fm_id, correspondence, state, msg_id, msg_type, generated_at, file_name
           FROM unnest($15::text[], $16::text[], $17::boolean[], $18::text[], $19::text[], $20::text[], $21::timestamp[], $22::text[])
                WITH ORDINALITY AS m (fm_id, parent_fm_id, correspondence, state, msg_id, msg_type, generated_at, file_name, position)
           ORDER BY position
           RETURNING id, fm_id, file_name),
         message_files AS (
           SELECT DISTINCT ON (replace(messages.file_name, '\\', '/')) replace(messages.file_name, '\\', '/') AS file, messages.id
           FROM messages JOIN unnest($15::text[]) WITH ORDINALITY AS o (fm_id, position) ON o.fm_id = messages.fm_id
           ORDER BY replace(messages.file_name, '\\', '/'), o.position),
         documents AS (
           INSERT INTO sfm.documents (stored_file_id, patient_id, message_id, kind, entry_name, size_bytes, sha256, content)
           SELECT $2, $1, CASE WHEN d.entry_name = $23 THEN NULL ELSE f.id END,
                  CASE WHEN d.entry_name = $23 THEN 'patient_data' ELSE 'message' END,
                  d.entry_name, d.size_bytes, d.sha256, d.content
           FROM unnest($24::text[], $25::bigint[], $26::bytea[], $27::bytea[]) WITH ORDINALITY AS d (entry_name, size_bytes, sha256, content, position)
                LEFT JOIN message_files f ON f.file = replace(d.entry_name, '\\', '/')
           WHERE d.entry_name = $23 OR f.id IS NOT NULL
           ORDER BY d.position)
         SELECT EXISTS (SELECT 1 FROM sfm.patient_identifiers i JOIN unnest($31::text[], $32::text[]) AS p (type_code, value)
                          ON i.value = p.value AND i.type_code = p.type_code
                        WHERE i.patient_id <> $1)",
        arguments,
    )
    .bind(patient_id)
    .bind(stored_file_id)
    .bind(&a.fm_id)
    .bind(&a.group_id)
    .bind(&a.head_of_history)
    .bind(&a.last_updated_on)
    .bind(&a.registered_by)
    .bind(&a.discarded)
    .bind(&a.deleted_reason)
    .bind(&a.deleted_by)
    .bind(&t.kind)
    .bind(&t.lib_id)
    .bind(&t.started_on)
    .bind(&t.prescription_id)
    .bind(&m.fm_id)
    .bind(&m.parent_fm_id)
    .bind(&m.correspondence)
    .bind(&m.state)
    .bind(&m.msg_id)
    .bind(&m.msg_type)
    .bind(&m.generated_at)
    .bind(&m.file_name)
    .bind(PATIENT_DOCUMENT)
    .bind(&documents.entry_name)
    .bind(&documents.size_bytes)
    .bind(&documents.sha256)
    .bind(&documents.content)
    .bind(&rows.identifiers.type_code)
    .bind(&rows.identifiers.type_system)
    .bind(&rows.identifiers.value)
    .bind(&rows.person_numbers.type_code)
    .bind(&rows.person_numbers.value)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| database("store the patient's rows and documents", e))?;
    if same_person {
        deviations.push((
            PATIENT_DOCUMENT.to_owned(),
            Deviation {
                path: "PasientExport/DemografiskInfo/Ident".into(),
                message:
                    "the same person (national identity number) is stored under another patient Id"
                        .into(),
            },
        ));
    }
    Ok(Ok(()))
}

/// A patient file's documents as columns, each with its size and SHA-256.
struct DocumentColumns<'a> {
    entry_name: Vec<&'a str>,
    size_bytes: Vec<i64>,
    sha256: Vec<Vec<u8>>,
    content: Vec<&'a [u8]>,
}

impl<'a> DocumentColumns<'a> {
    fn of(file: &'a PatientFile) -> Self {
        let mut names = HashSet::new();
        let documents: Vec<_> = file
            .documents
            .iter()
            .filter(|d| names.insert(d.name.as_str()))
            .collect();
        Self {
            entry_name: documents.iter().map(|d| d.name.as_str()).collect(),
            size_bytes: documents.iter().map(|d| d.data.len() as i64).collect(),
            sha256: documents.iter().map(|d| digest(&d.data)).collect(),
            content: documents.iter().map(|d| d.data.as_slice()).collect(),
        }
    }
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

/// The keys already taken, per kind of row.
#[derive(Default)]
struct Seen<'a> {
    identifiers: HashSet<(&'a str, &'a str)>,
    allergies: HashSet<&'a str>,
    treatments: HashSet<&'a str>,
    messages: HashSet<&'a str>,
}

impl PatientRows {
    fn collect(patient: &crate::model::PatientExport) -> Result<Self, Refusal> {
        let mut rows = PatientRows::default();
        // Each kind's key is unique per patient: the first row of a key is stored and later ones
        // are dropped here (what `ON CONFLICT DO NOTHING` did, without its cost per row: an index
        // probe and a second WAL record). A patient's rows never meet older ones: a new patient
        // has none, and a re-ingest deletes them first.
        let mut seen = Seen::default();
        for ident in &patient.demographics.identifiers {
            if ident.value.is_empty() || ident.type_id.code.is_empty() {
                continue;
            }
            if !seen
                .identifiers
                .insert((ident.type_id.code.as_str(), ident.value.as_str()))
            {
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
            if !seen.allergies.insert(reaction.id.as_str()) {
                continue;
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
            if !seen.treatments.insert(treatment.lib_id.as_str()) {
                continue;
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
            let fm_id = message
                .id
                .as_deref()
                .filter(|id| !id.is_empty())
                .unwrap_or(file_name);
            if !seen.messages.insert(fm_id) {
                continue;
            }
            let m = &mut rows.messages;
            m.fm_id.push(fm_id.to_owned());
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
