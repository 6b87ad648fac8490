//! A corpus for the XSD check (issue #16): documents that validate against NHN's XSD, and variants of
//! them that `xmllint --schema` rejects, each for its own reason (a value of the wrong type, a value
//! outside a built-in type's range, a missing or unknown element, a missing or unknown attribute, an
//! empty boolean), inside and outside `PrescriptionDetails`, in the patient and in the organisation
//! file. Made from NHN's samples by the test itself; `samples.rs` must be a sibling module.
//!
//! NHN's XSD defines no facets or enumerations of its own (no `restriction` with a facet anywhere):
//! the facets here are those of the built-in types (`xs:int`'s range, `xs:date`'s calendar).
#![allow(dead_code)]

use super::samples::{organisation_zip, patient_zip};
use sfm_migration::format::archive::{ArchiveLimits, read_archive};
use sfm_migration::format::patient_file::{ORGANISATION_DOCUMENT, PATIENT_DOCUMENT};

/// An allergy (`Legemiddelreaksjon`) that validates; NHN's sample patient has none.
const ALLERGY: &str = r#"<Legemiddelreaksjon><GruppeId>a7e1d3f0-5b1e-4a51-9e55-0d1f9a1c2b01</GruppeId><Id>a7e1d3f0-5b1e-4a51-9e55-0d1f9a1c2b02</Id><HeadOfHistory>true</HeadOfHistory><CAVE><CAVEId>a7e1d3f0-5b1e-4a51-9e55-0d1f9a1c2b03</CAVEId><RegisteringsDato>2020-05-01</RegisteringsDato><Signatur>Lege</Signatur><Virkestoff><VirkestoffId>v1</VirkestoffId><VirkestoffNavn>Penicillin</VirkestoffNavn></Virkestoff><Reaksjon V="1" S="2.16.578.1.12.4.1.1.7497" DN="Anafylaksi"/></CAVE><SistOppdatertDato>2020-05-02</SistOppdatertDato><Discarded>false</Discarded></Legemiddelreaksjon>"#;

fn document(zip: &[u8], name: &str) -> String {
    let archive = read_archive(zip, &ArchiveLimits::default()).unwrap();
    String::from_utf8(archive.get(name).unwrap().data.clone()).unwrap()
}

/// NHN's 2021 sample `PatientData.xml` with its known departures mended (the `InVib` that newer
/// exports write before `Brukere`; the `Id` and `State` of 13 `Melding`s) and one allergy added:
/// it validates against the XSD.
pub fn mended_patient_xml() -> String {
    let mut xml = document(&patient_zip(), PATIENT_DOCUMENT);
    for flag in ["true", "false"] {
        xml = xml.replace(
            &format!("<LokalKjent>{flag}</LokalKjent><Brukere>"),
            &format!("<LokalKjent>{flag}</LokalKjent><InVib>false</InVib><Brukere>"),
        );
        xml = xml.replace(
            &format!("<Korrespondance>{flag}</Korrespondance><MsgId>"),
            &format!("<Korrespondance>{flag}</Korrespondance><State>Successful</State><MsgId>"),
        );
    }
    let mut mended = String::with_capacity(xml.len());
    for (n, part) in xml.split("<Melding><Korrespondance>").enumerate() {
        if n > 0 {
            mended.push_str(&format!(
                "<Melding><Id>{}</Id><Korrespondance>",
                uuid::Uuid::from_u128(0x5f3e_0000_0000_4000_8000_0000_0000_0000 + n as u128)
            ));
        }
        mended.push_str(part);
    }
    mended.replacen("<Behandlinger>", &format!("{ALLERGY}<Behandlinger>"), 1)
}

/// NHN's sample `ExportData.xml` (it validates as it is).
pub fn organisation_xml() -> String {
    document(&organisation_zip(), ORGANISATION_DOCUMENT)
}

/// Which document a variant is of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Patient,
    Organisation,
}

/// One invalid variant: why it departs, and the document.
pub struct Variant {
    pub reason: &'static str,
    pub kind: Kind,
    pub xml: String,
}

/// `(reason, from, to)`: the first `from` in the document becomes `to`.
const PATIENT_CHANGES: &[(&str, &str, &str)] = &[
    // Inside PrescriptionDetails.
    (
        "PrescriptionDetails: xs:int Reiterasjon holds a word",
        "<Reiterasjon>0</Reiterasjon>",
        "<Reiterasjon>three</Reiterasjon>",
    ),
    (
        "PrescriptionDetails: xs:int Reiterasjon beyond the type's range",
        "<Reiterasjon>0</Reiterasjon>",
        "<Reiterasjon>99999999999</Reiterasjon>",
    ),
    (
        "PrescriptionDetails: xs:decimal Mengde/@V with a decimal comma",
        r#"<Mengde U="g" V="120" />"#,
        r#"<Mengde U="g" V="1,5" />"#,
    ),
    (
        "PrescriptionDetails: an unknown element",
        "<LastResept>false</LastResept>",
        "<LastResept>false</LastResept><Hemmelig>x</Hemmelig>",
    ),
    (
        "PrescriptionDetails: a required element missing",
        r#"<ReseptDokLegemiddel><Varegruppekode V="L" DN="Legemiddel" />"#,
        "<ReseptDokLegemiddel>",
    ),
    (
        "PrescriptionDetails: xs:date not a calendar day",
        "<TidligsteUtlevering>2021-01-27</TidligsteUtlevering>",
        "<TidligsteUtlevering>2021-02-30</TidligsteUtlevering>",
    ),
    (
        "PrescriptionDetails: xs:boolean LastResept holds a word",
        "<LastResept>false</LastResept>",
        "<LastResept>nei</LastResept>",
    ),
    (
        "PrescriptionDetails: a required attribute (DN) missing",
        r#"<Varegruppekode V="L" DN="Legemiddel" />"#,
        r#"<Varegruppekode V="L" />"#,
    ),
    // Outside PrescriptionDetails.
    (
        "allergy: an empty xs:boolean",
        "<HeadOfHistory>true</HeadOfHistory><CAVE>",
        "<HeadOfHistory></HeadOfHistory><CAVE>",
    ),
    (
        "Prescription: InVib missing before Brukere (the 2021 departure)",
        "<InVib>false</InVib><Brukere>",
        "<Brukere>",
    ),
    (
        "PasientExport: an unknown element",
        "<Behandlinger>",
        "<Ukjent>x</Ukjent><Behandlinger>",
    ),
    (
        "PasientExport: an element of another namespace",
        "<Behandlinger>",
        r#"<x:Extra xmlns:x="urn:example:x"/><Behandlinger>"#,
    ),
    (
        "DemografiskInfo: xs:date DateOfBirth holds a word",
        "<DateOfBirth>2005-01-09</DateOfBirth>",
        "<DateOfBirth>yesterday</DateOfBirth>",
    ),
    (
        "Melding: an unknown attribute",
        r#"<Type V="ERM1" DN="Resept" />"#,
        r#"<Type V="ERM1" DN="Resept" Extra="1" />"#,
    ),
    (
        "DemografiskInfo: the required GivenName missing",
        "<GivenName>",
        "<Fornavn>",
    ),
    (
        "Melding: xs:boolean Korrespondance holds a word",
        "<Korrespondance>true</Korrespondance>",
        "<Korrespondance>kanskje</Korrespondance>",
    ),
];

const ORGANISATION_CHANGES: &[(&str, &str, &str)] = &[
    (
        "Helseperson: xs:boolean Aktiv holds a word",
        "<Aktiv>true</Aktiv>",
        "<Aktiv>ja</Aktiv>",
    ),
    (
        "Institusjon: an unknown element",
        "</Institusjon>",
        "<Hemmelig/></Institusjon>",
    ),
    (
        "Helseperson: the required Brukernavn missing",
        "<Brukernavn>",
        "<Brukarnamn>",
    ),
];

fn apply(base: &str, from: &str, to: &str, reason: &str) -> String {
    assert!(
        base.contains(from),
        "{reason}: `{from}` is not in the document"
    );
    let changed = base.replacen(from, to, 1);
    // A change that opens an element renames its end tag too.
    match (from, to) {
        ("<GivenName>", "<Fornavn>") => changed.replacen("</GivenName>", "</Fornavn>", 1),
        ("<Brukernavn>", "<Brukarnamn>") => changed.replacen("</Brukernavn>", "</Brukarnamn>", 1),
        _ => changed,
    }
}

/// Every invalid variant, patient and organisation.
pub fn invalid_variants() -> Vec<Variant> {
    let patient = mended_patient_xml();
    let organisation = organisation_xml();
    let of = |kind, base: &str, changes: &[(&'static str, &str, &str)]| {
        changes
            .iter()
            .map(|(reason, from, to)| Variant {
                reason,
                kind,
                xml: apply(base, from, to, reason),
            })
            .collect::<Vec<_>>()
    };
    let mut variants = of(Kind::Patient, &patient, PATIENT_CHANGES);
    variants.extend(of(Kind::Organisation, &organisation, ORGANISATION_CHANGES));
    variants
}

/// `xmllint --noout --schema XSD` on each file: `true` where it validates. One xmllint run.
pub fn xmllint_verdicts(xsd: &std::path::Path, files: &[std::path::PathBuf]) -> Vec<bool> {
    let output = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(xsd)
        .args(files)
        .output()
        .expect("run xmllint (Debian package libxml2-utils)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    files
        .iter()
        .map(|file| {
            let name = file.to_str().unwrap();
            let validates = stderr
                .lines()
                .any(|line| line == format!("{name} validates"));
            let fails = stderr
                .lines()
                .any(|line| line == format!("{name} fails to validate"));
            assert!(
                validates != fails,
                "xmllint gave no verdict on {name}: {stderr}"
            );
            validates
        })
        .collect()
}
