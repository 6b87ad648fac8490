//! `ExportImport` (the organisation file's `ExportData.xml`) into [`OrganisationExport`].

use super::cursor::{Cursor, Element};
use super::{EXPORT_NAMESPACE, Parsed, Schema, XmlError, XmlLimits, read_document, shown_name};
use crate::model::{Institution, OrganisationExport, Report, User};

const ROOT: &str = "ExportImport";

/// Parses the organisation file. Errors when the document is unsafe or not well-formed, or names
/// no institution; every other departure from the XSD is a deviation.
pub fn parse_organisation(
    xml: &[u8],
    limits: &XmlLimits,
) -> Result<Parsed<OrganisationExport>, XmlError> {
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

    let mut organisation = OrganisationExport::default();
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("Brukere") => {
                while let Some(user) = cursor.next_child()? {
                    match ours(&user) {
                        Some("Helseperson") => organisation.users.push(parse_user(&mut cursor)?),
                        _ => cursor.skip()?,
                    }
                }
            }
            Some("Institusjon") => organisation
                .institutions
                .push(parse_institution(&mut cursor)?),
            Some("ForskrivningsMaler") => {
                organisation.prescription_templates += count_children(&mut cursor, "Mal")?;
            }
            Some("Rapporter") => {
                while let Some(report) = cursor.next_child()? {
                    match ours(&report) {
                        Some("Rapport") => organisation.reports.push(parse_report(&mut cursor)?),
                        _ => cursor.skip()?,
                    }
                }
            }
            Some("Protokoller") => {
                organisation.protocols += count_children(&mut cursor, "Protokoll")?;
            }
            Some("LokaltLegemiddel") => {
                organisation.local_drugs += 1;
                cursor.skip()?;
            }
            Some("LokaltMagistreltLegemiddel") => {
                organisation.local_compounded_drugs += 1;
                cursor.skip()?;
            }
            Some("LokaltKosttilskudd") => {
                organisation.local_supplements += 1;
                cursor.skip()?;
            }
            Some("Inboks") => {
                organisation.inbox_items += count_children(&mut cursor, "Melding")?;
            }
            _ => cursor.skip()?,
        }
    }
    if organisation.institutions.is_empty() {
        return Err(XmlError::MissingRequired {
            path: format!("{ROOT}/Institusjon"),
        });
    }
    Ok(Parsed {
        value: organisation,
        deviations,
    })
}

fn ours(child: &Element) -> Option<&str> {
    child.in_namespace.then_some(child.name.as_str())
}

/// Counts the current element's `name` children, skipping their content.
fn count_children(cursor: &mut Cursor, name: &str) -> Result<usize, XmlError> {
    let mut count = 0;
    while let Some(child) = cursor.next_child()? {
        if ours(&child) == Some(name) {
            count += 1;
        }
        cursor.skip()?;
    }
    Ok(count)
}

fn parse_user(cursor: &mut Cursor) -> Result<User, XmlError> {
    let mut user = User::default();
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("Id") => user.id = cursor.string()?,
            Some("Brukernavn") => user.username = cursor.string()?,
            Some("Brukertype") => user.user_type = cursor.string()?,
            Some("Aktiv") => user.active = cursor.boolean(&child)?,
            Some("FamilyName") => user.family_name = cursor.optional_string()?,
            Some("MiddleName") => user.middle_name = cursor.optional_string()?,
            Some("GivenName") => user.given_name = cursor.optional_string()?,
            Some("DateOfBirth") => user.date_of_birth = cursor.date(&child)?,
            Some("Ident") => user.identifiers.extend(cursor.identifier()?),
            Some("TypeHealthcareProfessional") => user.profession = cursor.coded(&child)?,
            Some("Spesialitet") => user.specialities.extend(cursor.coded(&child)?),
            Some("HarForskrivningsrett") => user.may_prescribe = cursor.boolean(&child)?,
            _ => cursor.skip()?,
        }
    }
    Ok(user)
}

fn parse_institution(cursor: &mut Cursor) -> Result<Institution, XmlError> {
    let mut institution = Institution::default();
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("Id") => institution.id = cursor.string()?,
            Some("Navn") => institution.name = cursor.string()?,
            Some("Ident") => institution.identifiers.extend(cursor.identifier()?),
            _ => cursor.skip()?,
        }
    }
    Ok(institution)
}

fn parse_report(cursor: &mut Cursor) -> Result<Report, XmlError> {
    let mut report = Report::default();
    while let Some(child) = cursor.next_child()? {
        match ours(&child) {
            Some("Id") => report.id = cursor.string()?,
            Some("Titel") => report.title = cursor.string()?,
            Some("BrukerId") => report.user_id = cursor.string()?,
            Some("PasientId") => report.patient_id = cursor.optional_string()?,
            Some("InstitusjonsId") => report.institution_id = cursor.optional_string()?,
            Some("Tidspunkt") => report.created_at = cursor.date_time(&child)?,
            Some("RapportFil") => report.file = cursor.string()?,
            _ => cursor.skip()?,
        }
    }
    Ok(report)
}
