//! The content models (child sequences) of the elements the parse models, copied from NHN's XSD
//! (`FmSfmExportImportFormatDefinition.xsd`, namespace 2019-11-13). Elements that are only stored
//! as raw XML (drug details, doses, addresses) are not listed; their insides are not checked.

/// One particle of a sequence: an element (or a choice of elements) with its occurrence bounds.
#[derive(Debug)]
pub(crate) struct Particle {
    /// The element's local name, or the alternatives of a choice.
    pub names: &'static [&'static str],
    /// `minOccurs`.
    pub min: u32,
    /// `maxOccurs` (`u32::MAX` for unbounded).
    pub max: u32,
}

impl Particle {
    pub fn matches(&self, name: &str) -> bool {
        self.names.contains(&name)
    }

    pub fn repeatable(&self) -> bool {
        self.max > 1
    }

    /// How a deviation message names it.
    pub fn describe(&self) -> String {
        match self.names {
            [one] => format!("`{one}`"),
            many => {
                let names: Vec<String> = many.iter().map(|n| format!("`{n}`")).collect();
                format!("one of {}", names.join(", "))
            }
        }
    }
}

/// An XSD `sequence`.
pub(crate) type Model = [Particle];

const UNBOUNDED: u32 = u32::MAX;

macro_rules! names {
    ($($name:literal),+) => {
        &[$($name),+]
    };
}

const fn one(name: &'static [&'static str]) -> Particle {
    Particle {
        names: name,
        min: 1,
        max: 1,
    }
}

const fn opt(name: &'static [&'static str]) -> Particle {
    Particle {
        names: name,
        min: 0,
        max: 1,
    }
}

const fn many(name: &'static [&'static str]) -> Particle {
    Particle {
        names: name,
        min: 1,
        max: UNBOUNDED,
    }
}

const fn any(name: &'static [&'static str]) -> Particle {
    Particle {
        names: name,
        min: 0,
        max: UNBOUNDED,
    }
}

// ---- PasientExport ----

pub(crate) static PASIENT_EXPORT: &Model = &[
    one(names!("Id")),
    one(names!("DemografiskInfo")),
    opt(names!("Fastlege")),
    opt(names!("MultidoseAnsvarligLege")),
    opt(names!("PLOInformasjon")),
    opt(names!("Meldinger")),
    any(names!("Legemiddelreaksjon")),
    opt(names!("Behandlinger")),
    any(names!("EkspederingsAnmodningKommentar")),
    opt(names!("Legemiddelgjennomgang")),
    opt(names!("HelfoSoknader")),
    opt(names!("UstrukturertHistorikk")),
    opt(names!("HandterteInteraksjoner")),
    opt(names!("VibGodkjenninger")),
];

pub(crate) static DEMOGRAFISK_INFO: &Model = &[
    one(names!("FamilyName")),
    opt(names!("MiddleName")),
    one(names!("GivenName")),
    opt(names!("Sex")),
    opt(names!("DateOfBirth")),
    opt(names!("Nationality")),
    many(names!("Ident")),
    any(names!("Address")),
    any(names!("TeleCom")),
];

/// The `Ident` complex type.
pub(crate) static IDENT: &Model = &[one(names!("Id")), one(names!("TypeId"))];

/// `Fastlege` and `MultidoseAnsvarligLege`.
pub(crate) static DOCTOR: &Model = &[one(names!("HprId")), opt(names!("Navn"))];

pub(crate) static PLO_INFORMASJON: &Model = &[
    one(names!("HerId")),
    opt(names!("Navn")),
    opt(names!("Kommune")),
];

pub(crate) static MELDINGER: &Model = &[many(names!("Melding"))];

pub(crate) static MELDING: &Model = &[
    one(names!("Id")),
    opt(names!("ParentId")),
    one(names!("Korrespondance")),
    one(names!("State")),
    one(names!("MsgId")),
    one(names!("Type")),
    one(names!("GenDate")),
    one(names!("MeldingsFil")),
];

pub(crate) static LEGEMIDDELREAKSJON: &Model = &[
    one(names!("GruppeId")),
    one(names!("Id")),
    one(names!("HeadOfHistory")),
    one(names!("CAVE")),
    one(names!("SistOppdatertDato")),
    opt(names!("RegistrertAv")),
    opt(names!("AvkreftetKommentar")),
    opt(names!("Discarded")),
    opt(names!("Deleted")),
];

pub(crate) static CAVE: &Model = &[
    one(names!("CAVEId")),
    opt(names!("HjelpestoffReaksjon")),
    opt(names!("GrunnlagForCAVE")),
    one(names!("RegisteringsDato")),
    one(names!("Signatur")),
    opt(names!("Innaktiv")),
    one(names!("LegemiddelMerkevare", "Virkestoff", "ATC")),
    opt(names!("Reaksjon")),
    opt(names!("Kilde")),
    opt(names!("Alvorlighetsgrad")),
    opt(names!("Sannsynlighet")),
    opt(names!("Avkreftet")),
    opt(names!("Oppdaget")),
];

pub(crate) static REACTION_DELETED: &Model = &[one(names!("Reason")), one(names!("DeletedBy"))];

pub(crate) static BEHANDLINGER: &Model = &[
    any(names!("Legemiddelbehandling")),
    any(names!("NIBBehandling")),
    any(names!("FIBBehandling")),
    any(names!("VaksineBehandling")),
];

pub(crate) static LEGEMIDDELBEHANDLING: &Model = &[
    one(names!("LibId")),
    one(names!("DatoOppstart")),
    any(names!("LokalKommentar")),
    many(names!("Prescription")),
    one(names!("PrescriptionDetails")),
    any(names!("Utlevering")),
    any(names!("SlvSvar")),
    opt(names!("InteraksjonHandtert")),
    any(names!("Sporsmal")),
];

/// `NIBBehandling` and `FIBBehandling`.
pub(crate) static HANDELSVARE_BEHANDLING: &Model = &[
    one(names!("LibId")),
    one(names!("DatoOppstart")),
    opt(names!("Seponering")),
    many(names!("Prescription")),
    one(names!("PrescriptionDetails")),
    any(names!("Utlevering")),
];

pub(crate) static VAKSINE_BEHANDLING: &Model = &[
    one(names!("LibId")),
    one(names!("DatoOppstart")),
    many(names!("Prescription")),
    one(names!("PrescriptionDetails")),
    any(names!("Utlevering")),
    any(names!("SlvSvar")),
];

pub(crate) static PRESCRIPTION: &Model = &[
    one(names!("PrescriptionId")),
    one(names!("HeadOfHistory")),
    one(names!("Aktiv")),
    opt(names!("RefForrigePrescription")),
    opt(names!("PrescriptionVersionId")),
    opt(names!("RefForrigePrescriptionVersion")),
    one(names!("ForskrivningsInfoId")),
    one(names!("Tidspunkt")),
    opt(names!("ReseptId")),
    opt(names!("InstituertAv")),
    opt(names!("RfSendStatus")),
    opt(names!("RFSendFeilmelding")),
    opt(names!("Tilbakekalling")),
    opt(names!("Slettet")),
    opt(names!("Fjernet")),
    opt(names!("RfStatus")),
    one(names!("ItemSource")),
    one(names!("LokalKjent")),
    one(names!("InVib")),
    opt(names!("Kladd")),
    opt(names!("Brukere")),
    opt(names!("Seponering")),
];

pub(crate) static PRESCRIPTION_BRUKERE: &Model = &[many(names!("Bruker"))];

pub(crate) static PRESCRIPTION_BRUKER: &Model = &[
    opt(names!("BrukerId")),
    opt(names!("Hpr")),
    opt(names!("Navn")),
    one(names!("TypeOppdatering")),
];

// ---- ExportImport ----

pub(crate) static EXPORT_IMPORT: &Model = &[
    one(names!("Brukere")),
    many(names!("Institusjon")),
    opt(names!("ForskrivningsMaler")),
    opt(names!("Rapporter")),
    opt(names!("Protokoller")),
    any(names!("LokaltLegemiddel")),
    any(names!("LokaltMagistreltLegemiddel")),
    any(names!("LokaltKosttilskudd")),
    opt(names!("Inboks")),
];

pub(crate) static ORGANISATION_BRUKERE: &Model = &[many(names!("Helseperson"))];

pub(crate) static HELSEPERSON: &Model = &[
    one(names!("Id")),
    one(names!("Brukernavn")),
    one(names!("Brukertype")),
    one(names!("Aktiv")),
    opt(names!("FamilyName")),
    opt(names!("MiddleName")),
    opt(names!("GivenName")),
    opt(names!("DateOfBirth")),
    opt(names!("Nationality")),
    any(names!("Ident")),
    opt(names!("Address")),
    any(names!("TeleCom")),
    opt(names!("TypeHealthcareProfessional")),
    any(names!("Spesialitet")),
    opt(names!("BrukICPC")),
    opt(names!("HarForskrivningsrett")),
    opt(names!("ForskrivningsrettAB")),
];

pub(crate) static INSTITUSJON: &Model = &[
    one(names!("Id")),
    one(names!("Navn")),
    many(names!("Ident")),
    opt(names!("Address")),
    any(names!("TeleCom")),
];

pub(crate) static FORSKRIVNINGS_MALER: &Model = &[many(names!("Mal"))];

pub(crate) static RAPPORTER: &Model = &[many(names!("Rapport"))];

pub(crate) static RAPPORT: &Model = &[
    one(names!("Id")),
    one(names!("Titel")),
    one(names!("BrukerId")),
    opt(names!("PasientId")),
    opt(names!("InstitusjonsId")),
    one(names!("Tidspunkt")),
    one(names!("RapportFil")),
];

pub(crate) static PROTOKOLLER: &Model = &[many(names!("Protokoll"))];

pub(crate) static INBOKS: &Model = &[any(names!("Melding"))];
