//! Everything about one file that needs no database: decrypt, unzip, parse, and the data-quality
//! checks, pure functions over the model. Pure CPU, about a millisecond for a usual patient file:
//! `super::check_and_store` runs a larger file on a blocking thread.

use uuid::Uuid;

use super::rejection::{Refusal, archive_rejection, envelope_rejection, format_rejection};
use crate::contract::{FileType, ProblemCode};
use crate::crd::{MigrationDatabase, SchemaCheck, ValidationPolicy};
use crate::format::archive::read_archive;
use crate::format::envelope::DecryptionKeys;
use crate::format::patient_file::{
    FormatLimits, OrganisationFile, PatientFile, read_organisation_file, read_patient_file,
};
use crate::ident::{HprNumber, NationalId, OrganisationNumber};
use crate::model::Deviation;

/// A decrypted, parsed and locally checked file, ready to store.
pub enum Prepared {
    Organisation(OrganisationFile),
    Patient(Box<PatientFile>),
    Report(Vec<(String, Vec<u8>)>),
}

impl Prepared {
    pub(super) fn deviations(&self) -> &[Deviation] {
        match self {
            Prepared::Organisation(f) => &f.deviations,
            Prepared::Patient(f) => &f.deviations,
            Prepared::Report(_) => &[],
        }
    }
}

/// Decrypts and parses one file and runs every check that needs no database. Pure CPU: a large file
/// belongs on a blocking thread.
pub fn prepare(
    keys: &DecryptionKeys,
    data: &[u8],
    file_type: FileType,
    file_name: &str,
    limits: &FormatLimits,
    db: &MigrationDatabase,
) -> Result<Prepared, Refusal> {
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
    if policy.schema_check == SchemaCheck::Strict && !prepared.deviations().is_empty() {
        return Err(Refusal::new(
            ProblemCode::XmlSchema,
            strict_refusal(prepared.deviations()),
        ));
    }
    Ok(prepared)
}

/// Most kinds of departure a Strict refusal names one by one.
const NAMED_DEPARTURES: usize = 20;

/// A Strict refusal's text: every kind of departure (libxml2's reason at a path pattern) with how
/// often it occurs, in document order. Deviations carry no document content (see `format::xml`).
fn strict_refusal(deviations: &[Deviation]) -> String {
    let mut kinds: Vec<(String, &str, usize)> = Vec::new();
    for deviation in deviations {
        let pattern = deviation.path_pattern();
        match kinds
            .iter_mut()
            .find(|(p, m, _)| *p == pattern && *m == deviation.message)
        {
            Some((_, _, count)) => *count += 1,
            None => kinds.push((pattern, &deviation.message, 1)),
        }
    }
    let mut named: Vec<String> = kinds
        .iter()
        .take(NAMED_DEPARTURES)
        .map(|(pattern, message, count)| match count {
            1 => format!("{pattern}: {message}"),
            n => format!("{n} x {pattern}: {message}"),
        })
        .collect();
    if kinds.len() > NAMED_DEPARTURES {
        named.push(format!(
            "and {} other kinds",
            kinds.len() - NAMED_DEPARTURES
        ));
    }
    format!(
        "{} departure(s) from NHN's XSD and the database's schema check is Strict: {}",
        deviations.len(),
        named.join("; ")
    )
}

fn check_person_number(value: &str, policy: &ValidationPolicy, whose: &str) -> Result<(), Refusal> {
    match NationalId::parse(value) {
        Err(_) => Err(Refusal::new(
            ProblemCode::DataQualityIdentifier,
            format!("{whose}: the national identity number fails its check digits or date"),
        )),
        Ok(id) if id.synthetic && !policy.allow_synthetic_identities => Err(Refusal::new(
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
) -> Result<(), Refusal> {
    let mut numbers = Vec::new();
    for (index, institution) in file.organisation.institutions.iter().enumerate() {
        if let Some(number) = institution.organisation_number() {
            OrganisationNumber::parse(number).map_err(|_| {
                Refusal::new(
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
        return Err(Refusal::new(
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
                Refusal::new(
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
) -> Result<(), Refusal> {
    let patient = &file.patient;
    let stem = file_name
        .rsplit(['\\', '/'])
        .next()
        .unwrap_or(file_name)
        .rsplit_once('.')
        .map(|(stem, _)| stem)
        .unwrap_or(file_name);
    if Uuid::parse_str(stem).ok() != Some(patient.id) {
        return Err(Refusal::new(
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
                Refusal::new(
                    ProblemCode::DataQualityIdentifier,
                    format!("{path} is not 1 to 9 digits"),
                )
            })?;
        }
    }
    for hpr in patient.referenced_hpr_numbers() {
        HprNumber::parse(hpr).map_err(|_| {
            Refusal::new(
                ProblemCode::DataQualityIdentifier,
                "a referenced HPR number is not 1 to 9 digits",
            )
        })?;
    }
    Ok(())
}

/// HPR numbers compared as numbers (the sample pads them to nine digits).
pub(super) fn hpr_key(hpr: &str) -> String {
    let trimmed = hpr.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    }
}
