//! The XML documents of a synthetic export: `ExportData.xml` (users, institution, reports),
//! `PatientData.xml` and the KITH message files of a patient. Written as text from fixed code lists,
//! so every value is known to need no escaping; the output validates against NHN's XSD (the test
//! `tests/export_xsd.rs` proves it with `xmllint --schema`).

use std::fmt::Write as _;

use chrono::NaiveDate;
use rand::Rng;
use rand::rngs::StdRng;
use uuid::Uuid;

use super::tables::{
    CITIES, DRUGS, Drug, FAMILY_NAMES, GIVEN_NAMES_F, GIVEN_NAMES_M, OID_ORG_ID, OID_PERSON_ID,
    STREETS,
};
use crate::format::layout::report_document;
use crate::format::xml::EXPORT_NAMESPACE;

/// A user of the organisation (a `Helseperson` in `Brukere`).
#[derive(Clone)]
pub struct SyntheticUser {
    pub id: Uuid,
    pub username: String,
    pub user_type: &'static str,
    pub family_name: &'static str,
    pub given_name: &'static str,
    pub birth: NaiveDate,
    pub fodselsnummer: String,
    /// Doctors and nurses have one; assistants do not.
    pub hpr: Option<String>,
}

impl SyntheticUser {
    fn full_name(&self) -> String {
        format!("{} {}", self.given_name, self.family_name)
    }
}

/// The organisation an export belongs to.
#[derive(Clone)]
pub struct SyntheticOrganisation {
    pub institution_id: Uuid,
    pub name: String,
    pub organisation_number: String,
    pub her_id: String,
    pub users: Vec<SyntheticUser>,
}

impl SyntheticOrganisation {
    /// Users with an HPR number (the prescribers a patient may reference).
    pub fn prescribers(&self) -> Vec<&SyntheticUser> {
        self.users
            .iter()
            .filter(|u| u.hpr.is_some() && u.user_type == "Doctor")
            .collect()
    }
}

/// A report of the export: its id and the user that made it.
pub struct SyntheticReport {
    pub id: Uuid,
    pub user: Uuid,
    pub patient: Option<Uuid>,
    pub title: &'static str,
}

/// A random version-4 UUID from `rng`: reproducible from the seed.
pub fn uuid(rng: &mut StdRng) -> Uuid {
    uuid::Builder::from_random_bytes(rng.r#gen()).into_uuid()
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

/// A birth date between `from` and `to` years (inclusive).
pub fn birth_date(rng: &mut StdRng, from: i32, to: i32) -> NaiveDate {
    let year = rng.gen_range(from..=to);
    let ordinal = rng.gen_range(1..=365);
    NaiveDate::from_yo_opt(year, ordinal).expect("day 1..=365 exists in every year")
}

/// A valid synthetic (Test-Norge, month + 80) fødselsnummer for `birth`.
pub fn fodselsnummer(rng: &mut StdRng, birth: NaiveDate) -> String {
    let start: u16 = rng.gen_range(0..1000);
    (0..1000u16)
        .map(|k| (start + k) % 1000)
        .find_map(|individual| crate::ident::synthetic_fodselsnummer(birth, individual))
        .expect("every birth date from 1900 to 2039 has some valid individual number")
}

/// Makes the organisation: the institution and `users` users, every doctor and nurse with a
/// distinct HPR number.
pub fn organisation(
    rng: &mut StdRng,
    users: usize,
    organisation_number: String,
    her_id: String,
) -> SyntheticOrganisation {
    let mut list = Vec::with_capacity(users);
    let mut hprs = std::collections::BTreeSet::new();
    for n in 0..users {
        let user_type = match n % 5 {
            0..=2 => "Doctor",
            3 => "Nurse",
            _ => "Assistant",
        };
        let female = rng.gen_bool(0.5);
        let given_name = *pick(rng, if female { GIVEN_NAMES_F } else { GIVEN_NAMES_M });
        let family_name = *pick(rng, FAMILY_NAMES);
        let birth = birth_date(rng, 1950, 1995);
        let hpr = (user_type != "Assistant").then(|| {
            loop {
                let candidate = rng.gen_range(1_000_000u32..999_999_999);
                if hprs.insert(candidate) {
                    break format!("{candidate:09}");
                }
            }
        });
        list.push(SyntheticUser {
            id: uuid(rng),
            username: format!("{}{}{}", &given_name[..1], &family_name[..1], n).to_uppercase(),
            user_type,
            family_name,
            given_name,
            birth,
            fodselsnummer: fodselsnummer(rng, birth),
            hpr,
        });
    }
    SyntheticOrganisation {
        institution_id: uuid(rng),
        name: format!("{} legekontor", pick(rng, CITIES).1),
        organisation_number,
        her_id,
        users: list,
    }
}

fn ident(out: &mut String, id: &str, code: &str, oid: &str, name: &str) {
    let _ = write!(
        out,
        "<Ident><Id>{id}</Id><TypeId V=\"{code}\" S=\"{oid}\" DN=\"{name}\" /></Ident>"
    );
}

/// `ExportData.xml`.
pub fn organisation_xml(org: &SyntheticOrganisation, reports: &[SyntheticReport]) -> String {
    let mut out = String::with_capacity(4096 + org.users.len() * 800);
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><ExportImport xmlns=\"{EXPORT_NAMESPACE}\"><Brukere>"
    );
    for user in &org.users {
        let _ = write!(
            out,
            "<Helseperson><Id>{}</Id><Brukernavn>{}</Brukernavn><Brukertype>{}</Brukertype><Aktiv>true</Aktiv>\
             <FamilyName>{}</FamilyName><GivenName>{}</GivenName><DateOfBirth>{}</DateOfBirth>",
            user.id, user.username, user.user_type, user.family_name, user.given_name, user.birth
        );
        ident(
            &mut out,
            &user.fodselsnummer,
            "FNR",
            OID_PERSON_ID,
            "Fødselsnummer",
        );
        if let Some(hpr) = &user.hpr {
            ident(&mut out, hpr, "HPR", OID_PERSON_ID, "HPR-nummer");
        }
        match user.user_type {
            "Doctor" => out.push_str(
                "<TypeHealthcareProfessional V=\"LE\" DN=\"Lege\" /><Spesialitet V=\"39\" DN=\"Allmennmedisin\" />\
                 <BrukICPC>true</BrukICPC><HarForskrivningsrett>true</HarForskrivningsrett><ForskrivningsrettAB>All</ForskrivningsrettAB>",
            ),
            "Nurse" => out.push_str(
                "<TypeHealthcareProfessional V=\"SP\" DN=\"Sykepleier\" /><BrukICPC>false</BrukICPC><HarForskrivningsrett>false</HarForskrivningsrett>",
            ),
            _ => out.push_str("<BrukICPC>false</BrukICPC>"),
        }
        out.push_str("</Helseperson>");
    }
    let _ = write!(
        out,
        "</Brukere><Institusjon><Id>{}</Id><Navn>{}</Navn>",
        org.institution_id, org.name
    );
    ident(&mut out, &org.her_id, "HER", OID_ORG_ID, "HER-id");
    ident(
        &mut out,
        &org.organisation_number,
        "ENH",
        OID_ORG_ID,
        "Organisasjonsnummeret i Enhetsregister",
    );
    out.push_str(
        "<Address><StreetAdr>Storgata 1</StreetAdr><PostalCode>0150</PostalCode><City>Oslo</City><Country V=\"NO\" DN=\"Norge\" /></Address>\
         <TeleCom><TypeTelecom V=\"HP\" DN=\"Hovedtelefon\" /><TeleAddress V=\"tel:22222222\" /></TeleCom></Institusjon>",
    );
    if !reports.is_empty() {
        out.push_str("<Rapporter>");
        for report in reports {
            let _ = write!(
                out,
                "<Rapport><Id>{}</Id><Titel>{}</Titel><BrukerId>{}</BrukerId>",
                report.id, report.title, report.user
            );
            if let Some(patient) = report.patient {
                let _ = write!(out, "<PasientId>{patient}</PasientId>");
            }
            let _ = write!(
                out,
                "<Tidspunkt>2024-05-02T10:15:00</Tidspunkt><RapportFil>{}</RapportFil></Rapport>",
                report_document(&report.id.to_string())
            );
        }
        out.push_str("</Rapporter>");
    }
    out.push_str("</ExportImport>");
    out
}

/// What a patient's zip holds: `PatientData.xml` and its message files.
pub struct PatientDocuments {
    pub patient_xml: String,
    pub messages: Vec<(String, String)>,
}

impl PatientDocuments {
    /// Bytes of XML in all documents.
    pub fn xml_bytes(&self) -> usize {
        self.patient_xml.len() + self.messages.iter().map(|(_, m)| m.len()).sum::<usize>()
    }
}

fn date_time(rng: &mut StdRng) -> String {
    let date = birth_date(rng, 2019, 2025);
    format!(
        "{date}T{:02}:{:02}:{:02}",
        rng.gen_range(7..18),
        rng.gen_range(0..60),
        rng.gen_range(0..60)
    )
}

/// One KITH `MsgHead` e-prescription message (ERM1), about 3 KB.
fn message_xml(
    rng: &mut StdRng,
    org: &SyntheticOrganisation,
    doctor: &SyntheticUser,
    msg_id: Uuid,
    gen_date: &str,
    drug: &Drug,
) -> String {
    let resept_id = uuid(rng);
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><MsgHead xmlns=\"http://www.kith.no/xmlstds/msghead/2006-05-24\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><MsgInfo><Type V=\"ERM1\" DN=\"Resept\" />\
         <MIGversion>v1.2 2006-05-24</MIGversion><GenDate>{gen_date}</GenDate><MsgId>{msg_id}</MsgId>\
         <Sender><Organisation><OrganisationName>{org_name}</OrganisationName><Ident><Id>{org_no}</Id>\
         <TypeId V=\"ENH\" S=\"{OID_ORG_ID}\" DN=\"Organisasjonsnummeret i Enhetsregister\" /></Ident>\
         <Ident><Id>{her}</Id><TypeId V=\"HER\" S=\"{OID_ORG_ID}\" DN=\"HER-id\" /></Ident>\
         <HealthcareProfessional><FamilyName>{family}</FamilyName><GivenName>{given}</GivenName>\
         <Ident><Id>{hpr}</Id><TypeId V=\"HPR\" S=\"{OID_PERSON_ID}\" DN=\"HPR-nummer\" /></Ident>\
         </HealthcareProfessional></Organisation></Sender><Receiver><Organisation>\
         <OrganisationName>Reseptformidleren</OrganisationName><Ident><Id>965336796</Id>\
         <TypeId V=\"ENH\" S=\"{OID_ORG_ID}\" DN=\"Organisasjonsnummeret i Enhetsregister\" /></Ident>\
         </Organisation></Receiver></MsgInfo><Document><RefDoc><MsgType V=\"XML\" DN=\"XML-instans\" />\
         <Content><Resept xmlns=\"http://www.kith.no/xmlstds/eresept/m1/2013-10-08\"><ReseptDokLegemiddel>\
         <Forskrivningsdato>{date}</Forskrivningsdato><Utloper>{date}</Utloper><ReseptId>{resept_id}</ReseptId>\
         <Varegruppekode V=\"L\" DN=\"Legemiddel\" /><Reiterasjon>{reit}</Reiterasjon>\
         <Forskrivning><Bruksomrade>{usage}</Bruksomrade><DosVeiledEnkel>{dose}</DosVeiledEnkel>\
         <Legemiddel><Atc V=\"{atc}\" S=\"2.16.578.1.12.4.1.1.7180\" DN=\"{substance}\" />\
         <NavnFormStyrke>{nfs}</NavnFormStyrke><Reseptgruppe V=\"C\" DN=\"Reseptgruppe C\" /></Legemiddel>\
         </Forskrivning></ReseptDokLegemiddel></Resept></Content></RefDoc></Document></MsgHead>",
        org_name = org.name,
        org_no = org.organisation_number,
        her = org.her_id,
        family = doctor.family_name,
        given = doctor.given_name,
        hpr = doctor.hpr.as_deref().unwrap_or_default(),
        date = &gen_date[..10],
        reit = rng.gen_range(0..4),
        usage = drug.7,
        dose = drug.6,
        atc = drug.0,
        substance = drug.1,
        nfs = drug.2,
    )
}

/// One prescription version (`Prescription`), naming the doctor by user id and HPR number.
/// The ids every version of one prescription shares.
struct PrescriptionIds {
    prescription: Uuid,
    info: Uuid,
    resept: Uuid,
}

fn prescription(
    out: &mut String,
    rng: &mut StdRng,
    ids: &PrescriptionIds,
    previous: Option<Uuid>,
    doctor: &SyntheticUser,
    head: bool,
) -> Uuid {
    let (prescription_id, info_id, resept_id) = (ids.prescription, ids.info, ids.resept);
    let version = uuid(rng);
    let _ = write!(
        out,
        "<Prescription><PrescriptionId>{prescription_id}</PrescriptionId><HeadOfHistory>{head}</HeadOfHistory>\
         <Aktiv>{head}</Aktiv><PrescriptionVersionId>{version}</PrescriptionVersionId>"
    );
    if let Some(previous) = previous {
        let _ = write!(
            out,
            "<RefForrigePrescriptionVersion>{previous}</RefForrigePrescriptionVersion>"
        );
    }
    let _ = write!(
        out,
        "<ForskrivningsInfoId>{info_id}</ForskrivningsInfoId><Tidspunkt>{}</Tidspunkt><ReseptId>{resept_id}</ReseptId>\
         <RfStatus>Ekspederbar</RfStatus><ItemSource>Rf</ItemSource><LokalKjent>true</LokalKjent><InVib>false</InVib><Brukere>",
        date_time(rng)
    );
    let name = doctor.full_name();
    for what in ["Registered by", "Created by", "LastEdited by"] {
        let _ = write!(
            out,
            "<Bruker><BrukerId>{}</BrukerId><Navn>{name}</Navn><TypeOppdatering>{what}</TypeOppdatering></Bruker>",
            doctor.id
        );
    }
    let hpr = doctor.hpr.as_deref().unwrap_or_default();
    for what in ["Forskriver", "Signed by"] {
        let _ = write!(
            out,
            "<Bruker><Hpr>{hpr}</Hpr><Navn>{name}</Navn><TypeOppdatering>{what}</TypeOppdatering></Bruker>"
        );
    }
    out.push_str("</Brukere></Prescription>");
    version
}

/// One `Legemiddelbehandling` with 1 to 5 prescription versions, about 2 to 8 KB.
fn treatment(out: &mut String, rng: &mut StdRng, doctor: &SyntheticUser) {
    let drug = pick(rng, DRUGS);
    let start = birth_date(rng, 2018, 2025);
    let prescription_id = uuid(rng);
    let info_id = uuid(rng);
    let resept_id = uuid(rng);
    let _ = write!(
        out,
        "<Legemiddelbehandling><LibId>{}</LibId><DatoOppstart>{start}</DatoOppstart>",
        uuid(rng)
    );
    let versions = rng.gen_range(1..=5);
    let mut previous = None;
    for v in 0..versions {
        let ids = PrescriptionIds {
            prescription: prescription_id,
            info: info_id,
            resept: resept_id,
        };
        previous = Some(prescription(
            out,
            rng,
            &ids,
            previous,
            doctor,
            v + 1 == versions,
        ));
    }
    let amount = rng.gen_range(1..=4) * 30;
    let _ = write!(
        out,
        "<PrescriptionDetails><LegemiddelForskrivningsInfo><Id>{info_id}</Id><Forskrivningsdato>{start}</Forskrivningsdato>\
         <ForskrivningsType V=\"E\" DN=\"Eresept\" /><Utloper>{expiry}</Utloper><OppdatertFest>2024-01-14T10:58:37</OppdatertFest>\
         <TidligsteUtlevering>{start}</TidligsteUtlevering><LastResept>false</LastResept>\
         <ReseptDokLegemiddel><Varegruppekode V=\"L\" DN=\"Legemiddel\" /><Antall>1</Antall><Reiterasjon>{reit}</Reiterasjon>\
         <Mengde U=\"{unit}\" V=\"{amount}\" /><Forskrivning><Bruksomrade>{usage}</Bruksomrade><DosVeiledEnkel>{dose}</DosVeiledEnkel>\
         <IngenKombinasjon>false</IngenKombinasjon><Bruk V=\"1\" DN=\"Fast\" /><Dosering><Starttidspunkt V=\"{start}\" />\
         <DoseFastTidspunkt><Mengde U=\"{unit}\" V=\"1\" /><Intervall U=\"d\" V=\"1\" /><Tidsomrade V=\"2\" DN=\"Formiddag\" />\
         <GisEksakt>false</GisEksakt></DoseFastTidspunkt></Dosering><LegemiddelVirkestoff>\
         <Atc V=\"{atc}\" S=\"2.16.578.1.12.4.1.1.7180\" DN=\"{substance}\" /><NavnFormStyrke>{nfs}</NavnFormStyrke>\
         <Reseptgruppe V=\"C\" DN=\"Reseptgruppe C\" /><LegemiddelformKort V=\"{form}\" S=\"2.16.578.1.12.4.1.1.7448\" DN=\"{form_name}\" />\
         <Id>ID_{virk}</Id></LegemiddelVirkestoff></Forskrivning></ReseptDokLegemiddel>\
         <ConfirmedIsNotFertile>false</ConfirmedIsNotFertile><DeliveryMode>Undefined</DeliveryMode>\
         </LegemiddelForskrivningsInfo></PrescriptionDetails></Legemiddelbehandling>",
        expiry = start + chrono::Days::new(365),
        reit = rng.gen_range(0..4),
        unit = drug.5,
        usage = drug.7,
        dose = drug.6,
        atc = drug.0,
        substance = drug.1,
        nfs = drug.2,
        form = drug.3,
        form_name = drug.4,
        virk = uuid(rng).hyphenated().to_string().to_uppercase(),
    );
}

/// A patient: demographics with a synthetic fødselsnummer, GP and (sometimes) multi-dose doctor from
/// the organisation's prescribers, allergies, message files and treatments until the XML reaches
/// `target_bytes` (at least one treatment).
pub fn patient_documents(
    rng: &mut StdRng,
    id: Uuid,
    org: &SyntheticOrganisation,
    prescribers: &[&SyntheticUser],
    target_bytes: usize,
) -> PatientDocuments {
    let female = rng.gen_bool(0.52);
    let given = *pick(rng, if female { GIVEN_NAMES_F } else { GIVEN_NAMES_M });
    let family = *pick(rng, FAMILY_NAMES);
    let birth = birth_date(rng, 1925, 2020);
    let fnr = fodselsnummer(rng, birth);
    let (postal, city, county) = *pick(rng, CITIES);
    let gp = *pick(rng, prescribers);
    let mut out = String::with_capacity(target_bytes + 16 * 1024);
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><PasientExport xmlns=\"{EXPORT_NAMESPACE}\"><Id>{id}</Id>\
         <DemografiskInfo><FamilyName>{family}</FamilyName><GivenName>{given}</GivenName><Sex V=\"{sex}\" DN=\"{sex_name}\" />\
         <DateOfBirth>{birth}</DateOfBirth>",
        sex = if female { 2 } else { 1 },
        sex_name = if female { "Kvinne" } else { "Mann" },
    );
    ident(&mut out, &fnr, "FNR", OID_PERSON_ID, "Fødselsnummer");
    let _ = write!(
        out,
        "<Address><Type V=\"H\" DN=\"Bostedsadresse\" /><StreetAdr>{} {}</StreetAdr><PostalCode>{postal}</PostalCode>\
         <City>{city}</City><County V=\"{county}\" DN=\"{city}\" /><Country V=\"NO\" DN=\"Norge\" /></Address></DemografiskInfo>\
         <Fastlege><HprId>{}</HprId><Navn>{}</Navn></Fastlege>",
        pick(rng, STREETS),
        rng.gen_range(1..120),
        gp.hpr.as_deref().unwrap_or_default(),
        gp.full_name()
    );
    if rng.gen_bool(0.15) {
        let doctor = *pick(rng, prescribers);
        let _ = write!(
            out,
            "<MultidoseAnsvarligLege><HprId>{}</HprId><Navn>{}</Navn></MultidoseAnsvarligLege>",
            doctor.hpr.as_deref().unwrap_or_default(),
            doctor.full_name()
        );
    }

    // Messages: about a fifth of the XML.
    let message_count = (target_bytes / 15_000).max(1);
    let message_count = rng
        .gen_range(message_count / 2..=message_count + message_count / 2)
        .max(1);
    let mut messages = Vec::with_capacity(message_count);
    out.push_str("<Meldinger>");
    for _ in 0..message_count {
        let file_id = uuid(rng);
        let msg_id = uuid(rng);
        let gen_date = date_time(rng);
        let drug = pick(rng, DRUGS);
        let doctor = *pick(rng, prescribers);
        let name = format!("{file_id}.xml");
        let _ = write!(
            out,
            "<Melding><Id>{}</Id><Korrespondance>true</Korrespondance><State>Successful</State><MsgId>{msg_id}</MsgId>\
             <Type V=\"ERM1\" DN=\"Resept\" /><GenDate>{gen_date}</GenDate><MeldingsFil>{name}</MeldingsFil></Melding>",
            uuid(rng)
        );
        messages.push((name, message_xml(rng, org, doctor, msg_id, &gen_date, drug)));
    }
    out.push_str("</Meldinger>");

    for _ in 0..rng.gen_range(0..=2) {
        let drug = pick(rng, DRUGS);
        let _ = write!(
            out,
            "<Legemiddelreaksjon><GruppeId>{}</GruppeId><Id>{}</Id><HeadOfHistory>true</HeadOfHistory><CAVE>\
             <CAVEId>{}</CAVEId><RegisteringsDato>{}</RegisteringsDato><Signatur>{}</Signatur>\
             <Virkestoff><VirkestoffId>ID_{}</VirkestoffId><VirkestoffNavn>{}</VirkestoffNavn></Virkestoff>\
             <Reaksjon V=\"3\" S=\"2.16.578.1.12.4.1.1.7497\" DN=\"Utslett\" /><Alvorlighetsgrad V=\"2\" DN=\"Moderat\" />\
             </CAVE><SistOppdatertDato>{}</SistOppdatertDato><RegistrertAv>{}</RegistrertAv></Legemiddelreaksjon>",
            uuid(rng),
            uuid(rng),
            uuid(rng),
            birth_date(rng, 2015, 2024),
            gp.username,
            uuid(rng).hyphenated().to_string().to_uppercase(),
            drug.1,
            birth_date(rng, 2015, 2024),
            gp.id,
        );
    }

    let messages_bytes: usize = messages.iter().map(|(_, m)| m.len()).sum();
    out.push_str("<Behandlinger>");
    loop {
        let doctor = *pick(rng, prescribers);
        treatment(&mut out, rng, doctor);
        if out.len() + messages_bytes + 200 >= target_bytes {
            break;
        }
    }
    out.push_str("</Behandlinger></PasientExport>");
    PatientDocuments {
        patient_xml: out,
        messages,
    }
}

/// The content of a report: a small XPS-like document (opaque to the API).
pub fn report_content(rng: &mut StdRng, report: &SyntheticReport) -> Vec<u8> {
    let mut text = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><FixedDocument xmlns=\"http://schemas.microsoft.com/xps/2005/06\">\
         <!-- synthetic report {} -->",
        report.id
    );
    for _ in 0..rng.gen_range(5..40) {
        let _ = write!(text, "<PageContent Source=\"Pages/{}.fpage\" />", uuid(rng));
    }
    text.push_str("</FixedDocument>");
    text.into_bytes()
}
