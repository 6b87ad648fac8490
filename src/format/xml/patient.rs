//! `PasientExport` (a patient's `PatientData.xml`) into [`PatientExport`].

use uuid::Uuid;

use super::cursor::{Cursor, Element};
use super::{EXPORT_NAMESPACE, Parsed, Schema, XmlError, XmlLimits, read_document, shown_name};
use crate::model::{
    CareService, Cave, CaveSubstance, Demographics, Doctor, DrugReaction, MessageRef,
    PatientExport, Prescription, PrescriptionUser, ReactionDeletion, Treatment, TreatmentKind,
};

const ROOT: &str = "PasientExport";

/// Parses one patient. Errors when the document is unsafe or not well-formed, or lacks the
/// patient's id (a GUID) or any identifier; every other departure from the XSD is a deviation.
pub fn parse_patient(xml: &[u8], limits: &XmlLimits) -> Result<Parsed<PatientExport>, XmlError> {
    let (events, deviations) = read_document(xml, limits, Schema::Nhn)?;
    let mut cursor = Cursor::new(&events);
    let root = cursor.root()?;
    if root.name != ROOT {
        return Err(XmlError::WrongRoot {
            expected: ROOT,
            found: shown_name(&root.name),
        });
    }
    if cursor.namespace() != EXPORT_NAMESPACE.as_bytes() {
        return Err(XmlError::WrongNamespace {
            expected: EXPORT_NAMESPACE,
        });
    }

    let mut id: Option<String> = None;
    let mut demographics: Option<Demographics> = None;
    let mut general_practitioner = None;
    let mut multidose_doctor = None;
    let mut care_service = None;
    let mut messages = Vec::new();
    let mut allergies = Vec::new();
    let mut treatments = Vec::new();
    while let Some(child) = cursor.next_child()? {
        if !child.in_namespace {
            cursor.skip()?;
            continue;
        }
        match child.name.as_str() {
            "Id" if id.is_none() => id = Some(cursor.string()?),
            "DemografiskInfo" if demographics.is_none() => {
                demographics = Some(parse_demographics(&mut cursor)?);
            }
            "Fastlege" => general_practitioner = parse_doctor(&mut cursor)?,
            "MultidoseAnsvarligLege" => multidose_doctor = parse_doctor(&mut cursor)?,
            "PLOInformasjon" => care_service = parse_care_service(&mut cursor)?,
            "Meldinger" => parse_messages(&mut cursor, &mut messages)?,
            "Legemiddelreaksjon" => allergies.push(parse_reaction(&mut cursor)?),
            "Behandlinger" => parse_treatments(&mut cursor, &mut treatments)?,
            _ => cursor.skip()?,
        }
    }

    let id_text = id.ok_or_else(|| XmlError::MissingRequired {
        path: format!("{ROOT}/Id"),
    })?;
    let id = Uuid::try_parse(&id_text).map_err(|_| XmlError::InvalidRequired {
        path: format!("{ROOT}/Id"),
        expected: "a GUID",
    })?;
    let demographics = demographics
        .filter(|d| !d.identifiers.is_empty())
        .ok_or_else(|| XmlError::MissingRequired {
            path: format!("{ROOT}/DemografiskInfo/Ident"),
        })?;
    Ok(Parsed {
        value: PatientExport {
            id,
            demographics,
            general_practitioner,
            multidose_doctor,
            care_service,
            messages,
            allergies,
            treatments,
        },
        deviations,
    })
}

/// The element's name when it is in the export namespace; elements from elsewhere are skipped.
fn ours(child: &Element) -> Option<&str> {
    child.in_namespace.then_some(child.name.as_str())
}

fn parse_demographics(cursor: &mut Cursor) -> Result<Demographics, XmlError> {
    let mut demographics = Demographics::default();
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("FamilyName") => demographics.family_name = cursor.string()?,
            Some("MiddleName") => demographics.middle_name = cursor.optional_string()?,
            Some("GivenName") => demographics.given_name = cursor.string()?,
            Some("Sex") => demographics.sex = cursor.coded(&child)?,
            Some("DateOfBirth") => demographics.date_of_birth = cursor.date(&child)?,
            Some("Ident") => demographics.identifiers.extend(cursor.identifier()?),
            _ => cursor.skip()?,
        }
    }
    Ok(demographics)
}

fn parse_doctor(cursor: &mut Cursor) -> Result<Option<Doctor>, XmlError> {
    let mut hpr_id = None;
    let mut name = None;
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("HprId") => hpr_id = cursor.optional_string()?,
            Some("Navn") => name = cursor.optional_string()?,
            _ => cursor.skip()?,
        }
    }
    Ok(hpr_id.map(|hpr_id| Doctor { hpr_id, name }))
}

fn parse_care_service(cursor: &mut Cursor) -> Result<Option<CareService>, XmlError> {
    let mut her_id = None;
    let mut name = None;
    let mut municipality = None;
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("HerId") => her_id = cursor.optional_string()?,
            Some("Navn") => name = cursor.optional_string()?,
            Some("Kommune") => municipality = cursor.optional_string()?,
            _ => cursor.skip()?,
        }
    }
    Ok(her_id.map(|her_id| CareService {
        her_id,
        name,
        municipality,
    }))
}

fn parse_messages(cursor: &mut Cursor, messages: &mut Vec<MessageRef>) -> Result<(), XmlError> {
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("Melding") => messages.push(parse_message_ref(cursor)?),
            _ => cursor.skip()?,
        }
    }
    Ok(())
}

fn parse_message_ref(cursor: &mut Cursor) -> Result<MessageRef, XmlError> {
    let mut message = MessageRef::default();
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("Id") => message.id = cursor.optional_string()?,
            Some("ParentId") => message.parent_id = cursor.optional_string()?,
            Some("Korrespondance") => message.correspondence = cursor.boolean(&child)?,
            Some("State") => message.state = cursor.optional_string()?,
            Some("MsgId") => message.msg_id = cursor.optional_string()?,
            Some("Type") => message.message_type = cursor.coded(&child)?,
            Some("GenDate") => message.generated_at = cursor.date_time(&child)?,
            Some("MeldingsFil") => message.file = cursor.optional_string()?,
            _ => cursor.skip()?,
        }
    }
    Ok(message)
}

fn parse_reaction(cursor: &mut Cursor) -> Result<DrugReaction, XmlError> {
    let mut reaction = DrugReaction::default();
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("GruppeId") => reaction.group_id = cursor.string()?,
            Some("Id") => reaction.id = cursor.string()?,
            Some("HeadOfHistory") => reaction.head_of_history = cursor.boolean(&child)?,
            Some("CAVE") => reaction.cave = Some(parse_cave(cursor)?),
            Some("SistOppdatertDato") => reaction.last_updated = cursor.date(&child)?,
            Some("RegistrertAv") => reaction.registered_by = cursor.optional_string()?,
            Some("Discarded") => reaction.discarded = cursor.boolean(&child)?,
            Some("Deleted") => reaction.deleted = Some(parse_reaction_deletion(cursor)?),
            _ => cursor.skip()?,
        }
    }
    Ok(reaction)
}

fn parse_cave(cursor: &mut Cursor) -> Result<Cave, XmlError> {
    let mut cave = Cave::default();
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("CAVEId") => cave.cave_id = cursor.string()?,
            Some("RegisteringsDato") => cave.registered_on = cursor.date(&child)?,
            Some("Signatur") => cave.signature = cursor.optional_string()?,
            Some("Innaktiv") => cave.inactive = cursor.boolean(&child)?,
            Some("LegemiddelMerkevare") => {
                let (drug_id, name) = id_and_name(cursor, "LegemiddelId", "LegemiddelNavn")?;
                cave.substance = Some(CaveSubstance::BrandedDrug {
                    drug_id,
                    name: name.unwrap_or_default(),
                });
            }
            Some("Virkestoff") => {
                let (substance_id, name) = id_and_name(cursor, "VirkestoffId", "VirkestoffNavn")?;
                cave.substance = Some(CaveSubstance::Substance {
                    substance_id,
                    name: name.unwrap_or_default(),
                });
            }
            Some("ATC") => {
                let mut code = None;
                while let Some(grandchild) = cursor.next_child()? {
                    match ours(&grandchild) {
                        Some("ATCKode") => code = cursor.coded(&grandchild)?,
                        _ => cursor.skip()?,
                    }
                }
                cave.substance = Some(CaveSubstance::Atc { code });
            }
            Some("Reaksjon") => cave.reaction = cursor.coded(&child)?,
            Some("Kilde") => cave.source = cursor.coded(&child)?,
            Some("Alvorlighetsgrad") => cave.severity = cursor.coded(&child)?,
            Some("Sannsynlighet") => cave.probability = cursor.coded(&child)?,
            Some("Avkreftet") => cave.refuted = cursor.boolean(&child)?,
            _ => cursor.skip()?,
        }
    }
    Ok(cave)
}

/// Two named text children of the current element (drug or substance id and name); the rest of
/// the element (strengths, nested substances) is left to the stored XML.
fn id_and_name(
    cursor: &mut Cursor,
    id_element: &str,
    name_element: &str,
) -> Result<(Option<String>, Option<String>), XmlError> {
    let mut id = None;
    let mut name = None;
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some(element) if element == id_element => id = cursor.optional_string()?,
            Some(element) if element == name_element => name = cursor.optional_string()?,
            _ => cursor.skip()?,
        }
    }
    Ok((id, name))
}

fn parse_reaction_deletion(cursor: &mut Cursor) -> Result<ReactionDeletion, XmlError> {
    let mut deletion = ReactionDeletion::default();
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("Reason") => deletion.reason = cursor.coded(&child)?,
            Some("DeletedBy") => deletion.deleted_by = cursor.string()?,
            _ => cursor.skip()?,
        }
    }
    Ok(deletion)
}

fn parse_treatments(cursor: &mut Cursor, treatments: &mut Vec<Treatment>) -> Result<(), XmlError> {
    while let Some(child) = cursor.next_child()? {
        let kind = match ours(&child) {
            Some("Legemiddelbehandling") => TreatmentKind::Drug,
            Some("NIBBehandling") => TreatmentKind::Nutrition,
            Some("FIBBehandling") => TreatmentKind::Consumable,
            Some("VaksineBehandling") => TreatmentKind::Vaccine,
            _ => {
                cursor.skip()?;
                continue;
            }
        };
        treatments.push(parse_treatment(cursor, kind)?);
    }
    Ok(())
}

fn parse_treatment(cursor: &mut Cursor, kind: TreatmentKind) -> Result<Treatment, XmlError> {
    let mut treatment = Treatment {
        kind,
        lib_id: String::new(),
        start_date: None,
        prescriptions: Vec::new(),
        prescription_details: 0,
        dispensings: 0,
        discontinued: false,
    };
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("LibId") => treatment.lib_id = cursor.string()?,
            Some("DatoOppstart") => treatment.start_date = cursor.date(&child)?,
            Some("Prescription") => treatment.prescriptions.push(parse_prescription(cursor)?),
            Some("PrescriptionDetails") => {
                while cursor.next_child()?.is_some() {
                    treatment.prescription_details += 1;
                    cursor.skip()?;
                }
            }
            Some("Utlevering") => {
                treatment.dispensings += 1;
                cursor.skip()?;
            }
            Some("Seponering") => {
                treatment.discontinued = true;
                cursor.skip()?;
            }
            _ => cursor.skip()?,
        }
    }
    Ok(treatment)
}

fn parse_prescription(cursor: &mut Cursor) -> Result<Prescription, XmlError> {
    let mut prescription = Prescription::default();
    while let Some(child) = cursor.next_child()? {
        let Some(name) = ours(&child) else {
            cursor.skip()?;
            continue;
        };
        match name {
            "PrescriptionId" => prescription.prescription_id = cursor.string()?,
            "HeadOfHistory" => prescription.head_of_history = cursor.boolean(&child)?,
            "Aktiv" => prescription.active = cursor.boolean(&child)?,
            "PrescriptionVersionId" => prescription.version_id = cursor.optional_string()?,
            "ForskrivningsInfoId" => prescription.prescription_info_id = cursor.string()?,
            "Tidspunkt" => prescription.time = cursor.date_time(&child)?,
            "ReseptId" => prescription.prescription_reference = cursor.optional_string()?,
            "RfStatus" => prescription.rf_status = cursor.optional_string()?,
            "ItemSource" => prescription.item_source = cursor.optional_string()?,
            "LokalKjent" => prescription.locally_known = cursor.boolean(&child)?,
            "InVib" => prescription.in_medication_list = cursor.boolean(&child)?,
            "Kladd" => prescription.draft = cursor.optional_string()?,
            "Brukere" => parse_prescription_users(cursor, &mut prescription.users)?,
            flag @ ("Tilbakekalling" | "Slettet" | "Fjernet" | "Seponering") => {
                match flag {
                    "Tilbakekalling" => prescription.recalled = true,
                    "Slettet" => prescription.deleted = true,
                    "Fjernet" => prescription.removed = true,
                    _ => prescription.discontinued = true,
                }
                cursor.skip()?;
            }
            _ => cursor.skip()?,
        }
    }
    Ok(prescription)
}

fn parse_prescription_users(
    cursor: &mut Cursor,
    users: &mut Vec<PrescriptionUser>,
) -> Result<(), XmlError> {
    while let Some(child) = cursor.next_child()? {
        if ours(&child) != Some("Bruker") {
            cursor.skip()?;
            continue;
        }
        let mut user = PrescriptionUser::default();
        while let Some(field) = cursor.next_child()? {
            match ours(&field) {
                Some("BrukerId") => user.user_id = cursor.optional_string()?,
                Some("Hpr") => user.hpr = cursor.optional_string()?,
                Some("TypeOppdatering") => user.update_type = cursor.string()?,
                // `Navn` (a person's name) is left in the stored XML, not copied into the model.
                _ => cursor.skip()?,
            }
        }
        users.push(user);
    }
    Ok(())
}
