//! The SFM data model that the migration API stores: what the FM export's organisation file
//! (`ExportImport`) and patient files (`PasientExport`) say, reduced to what the API checks and what
//! becomes relational columns. The raw XML documents are stored next to it, so drug details, doses
//! and addresses are deliberately not modelled here.
//!
//! Element names from NHN's XSD (Norwegian) are given in each field's doc comment.
//!
//! This module must never print personal data: every type that holds a name, a national identity
//! number, an HPR number or a birth date has a hand-written `Debug` that redacts it, so a `{:?}` in a
//! log line or a test failure cannot leak it.

use std::fmt;

pub mod organisation;
pub mod patient;

pub use organisation::{Institution, OrganisationExport, Report, User};
pub use patient::{
    CareService, Cave, CaveSubstance, Demographics, Doctor, DrugReaction, MessageRef,
    PatientExport, Prescription, PrescriptionUser, ReactionDeletion, Treatment, TreatmentKind,
};

/// A place where a file departed from NHN's XSD without making it unusable, for example the 2021
/// sample patient's `Prescription/Brukere` found where `InVib` was expected.
///
/// The path is the element path with 1-based positions for repeatable elements
/// (`PasientExport/Behandlinger/Legemiddelbehandling[3]/Prescription[1]/Brukere`); the message says
/// what departed. Neither ever quotes a value from the file, so deviations may be logged and stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deviation {
    /// Element path, `/`-separated, starting at the root element.
    pub path: String,
    /// What departed from the XSD, in one sentence.
    pub message: String,
}

impl Deviation {
    /// The path with positions removed (`.../Legemiddelbehandling/Prescription/Brukere`), for grouping
    /// the many identical deviations one exporter produces.
    pub fn path_pattern(&self) -> String {
        let mut out = String::with_capacity(self.path.len());
        let mut in_brackets = false;
        for c in self.path.chars() {
            match c {
                '[' => in_brackets = true,
                ']' => in_brackets = false,
                _ if !in_brackets => out.push(c),
                _ => {}
            }
        }
        out
    }
}

impl fmt::Display for Deviation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// A coded value (`CS`/`CV` in the XSD: attributes `V`, `S`, `DN`). Codes come from public code
/// lists (kodeverk), so they are not personal data.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodedValue {
    /// `V`: the code.
    pub code: String,
    /// `S`: the code system's OID (only `CV` has it).
    pub system: Option<String>,
    /// `DN`: the display name.
    pub display_name: String,
}

/// What kind of identifier an [`Identifier`] is, from its `TypeId V` code (kodeverk 8116 for
/// persons, 9051 for organisations).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentifierKind {
    /// `FNR`: fødselsnummer.
    NationalIdentityNumber,
    /// `DNR`: D-nummer.
    DNumber,
    /// `HNR`: H-nummer.
    HNumber,
    /// `HPR`: number in the health personnel register.
    HprNumber,
    /// `HER`: HER-id in the address register.
    HerId,
    /// `ENH`: organisation number in Enhetsregisteret.
    OrganisationNumber,
    /// Any other code (`XXX` "Annet", for example), kept as written.
    Other(String),
}

impl IdentifierKind {
    /// Maps a `TypeId V` code.
    pub fn from_code(code: &str) -> Self {
        match code {
            "FNR" => Self::NationalIdentityNumber,
            "DNR" => Self::DNumber,
            "HNR" => Self::HNumber,
            "HPR" => Self::HprNumber,
            "HER" => Self::HerId,
            "ENH" => Self::OrganisationNumber,
            other => Self::Other(other.to_owned()),
        }
    }

    /// True for the person numbers the national identity checks apply to (FNR, D- and H-number).
    pub fn is_person_number(&self) -> bool {
        matches!(
            self,
            Self::NationalIdentityNumber | Self::DNumber | Self::HNumber
        )
    }
}

/// One `Ident` element: an identifier value and its type. The value may be a national identity
/// number, so `Debug` shows only the type.
#[derive(Clone, PartialEq, Eq)]
pub struct Identifier {
    /// `Id`: the identifier itself.
    pub value: String,
    /// `TypeId`: the coded type (`FNR`, `HPR`, `HER`, `ENH`, `XXX`, ...).
    pub type_id: CodedValue,
}

impl Identifier {
    /// The kind, from `TypeId V`.
    pub fn kind(&self) -> IdentifierKind {
        IdentifierKind::from_code(&self.type_id.code)
    }
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identifier")
            .field("value", &REDACTED)
            .field("type_id", &self.type_id.code)
            .finish()
    }
}

/// The first identifier of a kind in a list.
pub(crate) fn first_of_kind(identifiers: &[Identifier], kind: IdentifierKind) -> Option<&str> {
    identifiers
        .iter()
        .find(|ident| ident.kind() == kind)
        .map(|ident| ident.value.as_str())
}

/// Printed in place of personal data in `Debug` output.
pub(crate) const REDACTED: Redacted = Redacted;

/// A `Debug` stand-in for a redacted value.
#[derive(Clone, Copy)]
pub(crate) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `Debug` for an optional personal value: says whether it is there, never what it is.
pub(crate) fn redact_option<T>(value: &Option<T>) -> &'static dyn fmt::Debug {
    if value.is_some() {
        &Some(REDACTED)
    } else {
        &None::<Redacted>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_debug_hides_the_value() {
        let ident = Identifier {
            value: "09010557876".into(),
            type_id: CodedValue {
                code: "FNR".into(),
                system: Some("2.16.578.1.12.4.1.1.8116".into()),
                display_name: "Fødselsnummer".into(),
            },
        };
        let printed = format!("{ident:?}");
        assert!(!printed.contains("09010557876"), "{printed}");
        assert!(printed.contains("FNR"));
        assert_eq!(ident.kind(), IdentifierKind::NationalIdentityNumber);
    }

    #[test]
    fn path_pattern_drops_positions() {
        let deviation = Deviation {
            path: "PasientExport/Behandlinger/Legemiddelbehandling[3]/Prescription[12]/Brukere"
                .into(),
            message: "m".into(),
        };
        assert_eq!(
            deviation.path_pattern(),
            "PasientExport/Behandlinger/Legemiddelbehandling/Prescription/Brukere"
        );
    }
}
