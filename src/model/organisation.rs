//! The organisation file (`ExportData.xml`, root `ExportImport`): the institution, its users and
//! counts of the organisation-wide data (local drugs, reports, inbox).

use std::fmt;

use chrono::{NaiveDate, NaiveDateTime};

use super::{CodedValue, Identifier, IdentifierKind, REDACTED, first_of_kind, redact_option};

/// What the API needs from `ExportImport`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OrganisationExport {
    /// `Institusjon` (at least one): the organisation(s) being migrated.
    pub institutions: Vec<Institution>,
    /// `Brukere/Helseperson`: the users of the old system.
    pub users: Vec<User>,
    /// Number of `ForskrivningsMaler/Mal` (prescription templates).
    pub prescription_templates: usize,
    /// `Rapporter/Rapport`: reports, whose files travel as `.rpt` files.
    pub reports: Vec<Report>,
    /// Number of `Protokoller/Protokoll` (dosing protocols).
    pub protocols: usize,
    /// Number of `LokaltLegemiddel` (locally registered drugs).
    pub local_drugs: usize,
    /// Number of `LokaltMagistreltLegemiddel` (locally registered compounded drugs).
    pub local_compounded_drugs: usize,
    /// Number of `LokaltKosttilskudd` (locally registered supplements).
    pub local_supplements: usize,
    /// Number of `Inboks/Melding` (inbox items).
    pub inbox_items: usize,
}

/// One `Institusjon`. An organisation's name and numbers are public, so `Debug` shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Institution {
    /// `Id`: internal id in the old system (GUID).
    pub id: String,
    /// `Navn`.
    pub name: String,
    /// `Ident`: organisation number (`ENH`), HER-id (`HER`) and others.
    pub identifiers: Vec<Identifier>,
}

impl Institution {
    /// The organisation number (`Ident` of type `ENH`), as written.
    pub fn organisation_number(&self) -> Option<&str> {
        first_of_kind(&self.identifiers, IdentifierKind::OrganisationNumber)
    }

    /// The HER-id (`Ident` of type `HER`), as written.
    pub fn her_id(&self) -> Option<&str> {
        first_of_kind(&self.identifiers, IdentifierKind::HerId)
    }
}

/// One user (`Brukere/Helseperson`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct User {
    /// `Id`: internal id (GUID) that patients' `BrukerId` elements refer to.
    pub id: String,
    /// `Brukernavn`: login name (often initials, so personal).
    pub username: String,
    /// `Brukertype`: role, e.g. `Doctor`, `Assistant`, `Admin` (may be empty for system users).
    pub user_type: String,
    /// `Aktiv`.
    pub active: Option<bool>,
    /// `FamilyName`.
    pub family_name: Option<String>,
    /// `MiddleName`.
    pub middle_name: Option<String>,
    /// `GivenName`.
    pub given_name: Option<String>,
    /// `DateOfBirth`.
    pub date_of_birth: Option<NaiveDate>,
    /// `Ident`: FNR, HPR and others.
    pub identifiers: Vec<Identifier>,
    /// `TypeHealthcareProfessional`, e.g. `LE` (lege).
    pub profession: Option<CodedValue>,
    /// `Spesialitet`.
    pub specialities: Vec<CodedValue>,
    /// `HarForskrivningsrett`: whether the user may prescribe.
    pub may_prescribe: Option<bool>,
}

impl User {
    /// The HPR number (`Ident` of type `HPR`), as written.
    pub fn hpr_number(&self) -> Option<&str> {
        first_of_kind(&self.identifiers, IdentifierKind::HprNumber)
    }

    /// The national identity number (`Ident` of type `FNR`, `DNR` or `HNR`), as written.
    pub fn national_id(&self) -> Option<&str> {
        self.identifiers
            .iter()
            .find(|ident| ident.kind().is_person_number())
            .map(|ident| ident.value.as_str())
    }
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &REDACTED)
            .field("user_type", &self.user_type)
            .field("active", &self.active)
            .field("family_name", redact_option(&self.family_name))
            .field("middle_name", redact_option(&self.middle_name))
            .field("given_name", redact_option(&self.given_name))
            .field("date_of_birth", redact_option(&self.date_of_birth))
            .field("identifiers", &self.identifiers)
            .field("profession", &self.profession)
            .field("specialities", &self.specialities)
            .field("may_prescribe", &self.may_prescribe)
            .finish()
    }
}

/// One `Rapporter/Rapport`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `Id` (GUID).
    pub id: String,
    /// `Titel`: free text, may name a person, so `Debug` hides it.
    pub title: String,
    /// `BrukerId`: the user who made it.
    pub user_id: String,
    /// `PasientId`: the patient it is about, if any.
    pub patient_id: Option<String>,
    /// `InstitusjonsId`.
    pub institution_id: Option<String>,
    /// `Tidspunkt` (local time; the export has no offsets).
    pub created_at: Option<NaiveDateTime>,
    /// `RapportFil`: relative Windows path of the report document, e.g. `Reports0\<id>.xps`.
    pub file: String,
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Report")
            .field("id", &self.id)
            .field("title", &REDACTED)
            .field("user_id", &self.user_id)
            .field("patient_id", &self.patient_id)
            .field("institution_id", &self.institution_id)
            .field("created_at", &self.created_at)
            .field("file", &self.file)
            .finish()
    }
}
