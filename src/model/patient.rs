//! One patient (`PatientData.xml` in a `.pat` file, root `PasientExport`): identity, doctors,
//! allergies (CAVE), treatments with their prescriptions, and the list of message files.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{NaiveDate, NaiveDateTime};
use uuid::Uuid;

use super::{CodedValue, Identifier, REDACTED, redact_option};

/// What the API needs from `PasientExport`.
#[derive(Clone, Debug, PartialEq)]
pub struct PatientExport {
    /// `Id`: the old system's id of the patient, a GUID; it also names the `.pat` file.
    pub id: Uuid,
    /// `DemografiskInfo`.
    pub demographics: Demographics,
    /// `Fastlege`: the patient's regular GP.
    pub general_practitioner: Option<Doctor>,
    /// `MultidoseAnsvarligLege`: the doctor responsible for multi-dose dispensing.
    pub multidose_doctor: Option<Doctor>,
    /// `PLOInformasjon`: the municipal care service (pleie og omsorg).
    pub care_service: Option<CareService>,
    /// `Meldinger/Melding`: the e-prescription messages, each naming a file in the `.pat` zip.
    pub messages: Vec<MessageRef>,
    /// `Legemiddelreaksjon`: allergies and adverse reactions (CAVE).
    pub allergies: Vec<DrugReaction>,
    /// `Behandlinger/*`: drug, nutrition, consumables and vaccine treatments.
    pub treatments: Vec<Treatment>,
}

impl PatientExport {
    /// The names of the message files `Meldinger` refers to, as written (`MeldingsFil`).
    pub fn message_files(&self) -> impl Iterator<Item = &str> {
        self.messages.iter().filter_map(|m| m.file.as_deref())
    }

    /// Every HPR number the patient's prescriptions name (`Prescription/Brukere/Bruker/Hpr`) plus
    /// the multi-dose doctor's; the API checks each against the organisation's users. The GP is not
    /// included: a patient's GP may work elsewhere.
    pub fn referenced_hpr_numbers(&self) -> BTreeSet<&str> {
        let prescription_users = self
            .treatments
            .iter()
            .flat_map(|t| &t.prescriptions)
            .flat_map(|p| &p.users)
            .filter_map(|u| u.hpr.as_deref());
        self.multidose_doctor
            .iter()
            .map(|d| d.hpr_id.as_str())
            .chain(prescription_users)
            .filter(|hpr| !hpr.is_empty())
            .collect()
    }

    /// Every user id the patient's prescriptions name (`Prescription/Brukere/Bruker/BrukerId`).
    pub fn referenced_user_ids(&self) -> BTreeSet<&str> {
        self.treatments
            .iter()
            .flat_map(|t| &t.prescriptions)
            .flat_map(|p| &p.users)
            .filter_map(|u| u.user_id.as_deref())
            .filter(|id| !id.is_empty())
            .collect()
    }
}

/// `DemografiskInfo`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Demographics {
    /// `FamilyName`.
    pub family_name: String,
    /// `MiddleName` (empty elements become `None`).
    pub middle_name: Option<String>,
    /// `GivenName`.
    pub given_name: String,
    /// `Sex` (kodeverk 3101: `1` mann, `2` kvinne, ...).
    pub sex: Option<CodedValue>,
    /// `DateOfBirth`.
    pub date_of_birth: Option<NaiveDate>,
    /// `Ident`: at least one; FNR/DNR/HNR and others.
    pub identifiers: Vec<Identifier>,
}

impl Demographics {
    /// The national identity number (`Ident` of type `FNR`, `DNR` or `HNR`), as written.
    pub fn national_id(&self) -> Option<&str> {
        self.identifiers
            .iter()
            .find(|ident| ident.kind().is_person_number())
            .map(|ident| ident.value.as_str())
    }
}

impl fmt::Debug for Demographics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Demographics")
            .field("family_name", &REDACTED)
            .field("middle_name", redact_option(&self.middle_name))
            .field("given_name", &REDACTED)
            .field("sex", &self.sex)
            .field("date_of_birth", redact_option(&self.date_of_birth))
            .field("identifiers", &self.identifiers)
            .finish()
    }
}

/// `Fastlege` or `MultidoseAnsvarligLege`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Doctor {
    /// `HprId`: the doctor's HPR number.
    pub hpr_id: String,
    /// `Navn`.
    pub name: Option<String>,
}

impl fmt::Debug for Doctor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Doctor")
            .field("hpr_id", &REDACTED)
            .field("name", redact_option(&self.name))
            .finish()
    }
}

/// `PLOInformasjon`: a municipal care service, an organisation (public data).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CareService {
    /// `HerId`.
    pub her_id: String,
    /// `Navn`.
    pub name: Option<String>,
    /// `Kommune`.
    pub municipality: Option<String>,
}

/// One `Meldinger/Melding`: an e-prescription message whose KITH XML travels as its own file in the
/// `.pat` zip. Every field is optional because real exports omit required ones (the 2021 sample
/// lacks `Id` on some); the parse records a deviation for each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageRef {
    /// `Id`: the old system's id of the message.
    pub id: Option<String>,
    /// `ParentId`: the message this one answers.
    pub parent_id: Option<String>,
    /// `Korrespondance`.
    pub correspondence: Option<bool>,
    /// `State`: `Successful` or `Failed` (often blank).
    pub state: Option<String>,
    /// `MsgId`: the old system's message id. It is not always the `MsgHead` `MsgId` inside the file.
    pub msg_id: Option<String>,
    /// `Type`, e.g. `ERM1` (resept), `AppRec`.
    pub message_type: Option<CodedValue>,
    /// `GenDate` (local time).
    pub generated_at: Option<NaiveDateTime>,
    /// `MeldingsFil`: the file's name inside the `.pat` zip.
    pub file: Option<String>,
}

/// One `Legemiddelreaksjon` (allergy or adverse drug reaction).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DrugReaction {
    /// `GruppeId`: versions of one reaction share it.
    pub group_id: String,
    /// `Id` of this version.
    pub id: String,
    /// `HeadOfHistory`: true for the newest version.
    pub head_of_history: Option<bool>,
    /// `CAVE`.
    pub cave: Option<Cave>,
    /// `SistOppdatertDato`.
    pub last_updated: Option<NaiveDate>,
    /// `RegistrertAv`: who registered it (a name).
    pub registered_by: Option<String>,
    /// `Discarded`.
    pub discarded: Option<bool>,
    /// `Deleted`.
    pub deleted: Option<ReactionDeletion>,
}

impl fmt::Debug for DrugReaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrugReaction")
            .field("group_id", &self.group_id)
            .field("id", &self.id)
            .field("head_of_history", &self.head_of_history)
            .field("cave", &self.cave)
            .field("last_updated", &self.last_updated)
            .field("registered_by", redact_option(&self.registered_by))
            .field("discarded", &self.discarded)
            .field("deleted", &self.deleted)
            .finish()
    }
}

/// `CAVE`: the reaction's content.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Cave {
    /// `CAVEId`.
    pub cave_id: String,
    /// `RegisteringsDato`.
    pub registered_on: Option<NaiveDate>,
    /// `Signatur`: who signed (a name).
    pub signature: Option<String>,
    /// `Innaktiv`.
    pub inactive: Option<bool>,
    /// The substance: `LegemiddelMerkevare`, `Virkestoff` or `ATC`.
    pub substance: Option<CaveSubstance>,
    /// `Reaksjon`.
    pub reaction: Option<CodedValue>,
    /// `Kilde`.
    pub source: Option<CodedValue>,
    /// `Alvorlighetsgrad`.
    pub severity: Option<CodedValue>,
    /// `Sannsynlighet`.
    pub probability: Option<CodedValue>,
    /// `Avkreftet`: the reaction was refuted.
    pub refuted: Option<bool>,
}

impl fmt::Debug for Cave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cave")
            .field("cave_id", &self.cave_id)
            .field("registered_on", &self.registered_on)
            .field("signature", redact_option(&self.signature))
            .field("inactive", &self.inactive)
            .field("substance", &self.substance)
            .field("reaction", &self.reaction)
            .field("source", &self.source)
            .field("severity", &self.severity)
            .field("probability", &self.probability)
            .field("refuted", &self.refuted)
            .finish()
    }
}

/// What a CAVE entry is about (public drug data, not personal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaveSubstance {
    /// `LegemiddelMerkevare`: a branded drug.
    BrandedDrug {
        /// `LegemiddelId` (FEST id).
        drug_id: Option<String>,
        /// `LegemiddelNavn`.
        name: String,
    },
    /// `Virkestoff`: an active substance.
    Substance {
        /// `VirkestoffId`.
        substance_id: Option<String>,
        /// `VirkestoffNavn`.
        name: String,
    },
    /// `ATC`: an ATC code.
    Atc {
        /// `ATCKode`.
        code: Option<CodedValue>,
    },
}

/// `Legemiddelreaksjon/Deleted`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ReactionDeletion {
    /// `Reason` (kodeverk 9237).
    pub reason: Option<CodedValue>,
    /// `DeletedBy`: who deleted it.
    pub deleted_by: String,
}

impl fmt::Debug for ReactionDeletion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReactionDeletion")
            .field("reason", &self.reason)
            .field("deleted_by", &REDACTED)
            .finish()
    }
}

/// Which `Behandlinger` child a treatment came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TreatmentKind {
    /// `Legemiddelbehandling`: a drug.
    Drug,
    /// `NIBBehandling`: nutrition (næringsmiddel).
    Nutrition,
    /// `FIBBehandling`: consumables (forbruksmateriell).
    Consumable,
    /// `VaksineBehandling`: a vaccine.
    Vaccine,
}

impl TreatmentKind {
    /// The XSD element name.
    pub fn element_name(self) -> &'static str {
        match self {
            Self::Drug => "Legemiddelbehandling",
            Self::Nutrition => "NIBBehandling",
            Self::Consumable => "FIBBehandling",
            Self::Vaccine => "VaksineBehandling",
        }
    }
}

/// One treatment in `Behandlinger`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Treatment {
    /// Which element it came from.
    pub kind: TreatmentKind,
    /// `LibId`: the treatment's id in the patient's medication list (LIB).
    pub lib_id: String,
    /// `DatoOppstart`.
    pub start_date: Option<NaiveDate>,
    /// `Prescription`: every version of every prescription in the treatment.
    pub prescriptions: Vec<Prescription>,
    /// Number of `PrescriptionDetails/*ForskrivningsInfo`.
    pub prescription_details: usize,
    /// Number of `Utlevering` (dispensings).
    pub dispensings: usize,
    /// Whether the treatment has a `Seponering` (discontinuation) of its own (NIB/FIB).
    pub discontinued: bool,
}

/// One `Prescription` (a version of a prescription in a treatment).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prescription {
    /// `PrescriptionId`.
    pub prescription_id: String,
    /// `HeadOfHistory`: the newest version.
    pub head_of_history: Option<bool>,
    /// `Aktiv`: this version is active.
    pub active: Option<bool>,
    /// `PrescriptionVersionId`.
    pub version_id: Option<String>,
    /// `ForskrivningsInfoId`: which `PrescriptionDetails` entry holds the drug and dose.
    pub prescription_info_id: String,
    /// `Tidspunkt` (local time).
    pub time: Option<NaiveDateTime>,
    /// `ReseptId`: the e-prescription's id in the prescription intermediary (RF).
    pub prescription_reference: Option<String>,
    /// `Tilbakekalling` present: recalled.
    pub recalled: bool,
    /// `Slettet` present: deleted.
    pub deleted: bool,
    /// `Fjernet` present: discarded.
    pub removed: bool,
    /// `RfStatus`.
    pub rf_status: Option<String>,
    /// `ItemSource`: where the prescription came from (`Rf`, `Kj`, `Epj`, ...).
    pub item_source: Option<String>,
    /// `LokalKjent`.
    pub locally_known: Option<bool>,
    /// `InVib`: part of the medication list. Missing in exports from 2021.
    pub in_medication_list: Option<bool>,
    /// `Kladd`: draft kind.
    pub draft: Option<String>,
    /// `Brukere/Bruker`: who did what to it (names are not kept).
    pub users: Vec<PrescriptionUser>,
    /// `Seponering` present: discontinued.
    pub discontinued: bool,
}

/// One `Prescription/Brukere/Bruker`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PrescriptionUser {
    /// `BrukerId`: a user id from the organisation file.
    pub user_id: Option<String>,
    /// `Hpr`: the user's HPR number.
    pub hpr: Option<String>,
    /// `TypeOppdatering`, e.g. `Registered by`, `Signed by`.
    pub update_type: String,
}

impl fmt::Debug for PrescriptionUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrescriptionUser")
            .field("user_id", &self.user_id)
            .field("hpr", redact_option(&self.hpr))
            .field("update_type", &self.update_type)
            .finish()
    }
}
