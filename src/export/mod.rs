//! `sfm-export`: the reference exporter. Writes a synthetic export in NHN's FM format (DESIGN section
//! 5) for N patients: `ExportData.dat`, `Index.txt` (CRLF, backslashes), `Patients0..k` with at most
//! 16,000 `.pat` files each and `Reports\*.rpt`, every file a zip in NHN's envelope encrypted to the
//! given certificate.
//!
//! Everything but the encryption is reproducible from the seed: each patient draws from its own
//! generator seeded by (seed, patient number), so the output does not depend on the number of threads
//! or their scheduling. The content key and IV of each envelope are fresh random values, as they must
//! be; the plaintext zips are byte-for-byte the same for the same seed.

mod tables;
pub mod xml;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::format::archive::write_archive;
use crate::format::envelope::{self, DEFAULT_EXTENSION, RecipientCertificate};
use crate::format::index::{INDEX_FILE_NAME, IndexEntry, ORGANISATION_FILE_NAME, write_index};
use crate::format::layout::{MAX_PATIENTS_PER_FOLDER, PATIENT_FOLDER_PREFIX, report_location};
use crate::format::patient_file::{ORGANISATION_DOCUMENT, PATIENT_DOCUMENT};

use self::xml::{SyntheticOrganisation, SyntheticReport};

/// What to generate.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// Number of patients.
    pub patients: usize,
    /// Number of users (every doctor and nurse with an HPR number).
    pub users: usize,
    /// Number of reports.
    pub reports: usize,
    /// Mean XML bytes per patient (`PatientData.xml` plus its message files).
    pub mean_patient_bytes: usize,
    /// Relative spread of the size around the mean, 0 to 0.95 (uniform in mean·(1 ± spread)).
    pub spread: f64,
    /// The seed everything but the encryption follows.
    pub seed: u64,
    /// The organisation number (9 digits, valid mod 11); derived from the seed when `None`.
    pub organisation_number: Option<String>,
    /// The HER-id; derived from the seed when `None`.
    pub her_id: Option<String>,
    /// Patients per `Patients<N>` folder (NHN's limit is 16,000; smaller values exercise the layout).
    pub patients_per_folder: usize,
    /// Worker threads.
    pub threads: usize,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            patients: 100,
            users: 25,
            reports: 0,
            mean_patient_bytes: 100 * 1024,
            spread: 0.5,
            seed: 1,
            organisation_number: None,
            her_id: None,
            patients_per_folder: MAX_PATIENTS_PER_FOLDER,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot build a file of the export: {0}")]
    Format(String),
}

/// What was written.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    pub patients: usize,
    pub users: usize,
    pub reports: usize,
    pub organisation_number: String,
    /// XML bytes before zip and encryption.
    pub xml_bytes: u64,
    /// Bytes of the encrypted files written.
    pub file_bytes: u64,
    pub elapsed: Duration,
}

impl ExportSummary {
    /// Patients per second.
    pub fn patients_per_second(&self) -> f64 {
        self.patients as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn mix(seed: u64, stream: u64, n: u64) -> u64 {
    // SplitMix64 of the three, so neighbouring patients get unrelated generators.
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The generator of patient `n`.
pub fn patient_rng(seed: u64, n: usize) -> StdRng {
    StdRng::seed_from_u64(mix(seed, 1, n as u64))
}

/// The id of patient `n` (its file name), without generating the patient.
pub fn patient_id(seed: u64, n: usize) -> Uuid {
    xml::uuid(&mut StdRng::seed_from_u64(mix(seed, 2, n as u64)))
}

/// The organisation of an export, from the seed.
pub fn organisation(options: &ExportOptions) -> Result<SyntheticOrganisation, ExportError> {
    let mut rng = StdRng::seed_from_u64(mix(options.seed, 0, 0));
    let organisation_number = match &options.organisation_number {
        Some(number) => {
            crate::ident::OrganisationNumber::parse(number).map_err(|e| {
                ExportError::Invalid(format!("the organisation number is not valid: {e}"))
            })?;
            number.clone()
        }
        None => loop {
            if let Some(number) =
                crate::ident::organisation_number_with_check(rng.gen_range(90_000_000..99_999_999))
            {
                break number;
            }
        },
    };
    let her_id = options
        .her_id
        .clone()
        .unwrap_or_else(|| rng.gen_range(100_000..9_999_999u32).to_string());
    if options.users == 0 {
        return Err(ExportError::Invalid("at least one user is needed".into()));
    }
    Ok(xml::organisation(
        &mut rng,
        options.users.max(1),
        organisation_number,
        her_id,
    ))
}

/// The plaintext zip of patient `n` (what the `.pat` envelope wraps) and its XML size.
pub fn patient_zip(
    options: &ExportOptions,
    org: &SyntheticOrganisation,
    n: usize,
) -> Result<(Vec<u8>, usize), ExportError> {
    let prescribers = org.prescribers();
    let mut rng = patient_rng(options.seed, n);
    let spread = options.spread.clamp(0.0, 0.95);
    let factor = if spread > 0.0 {
        rng.gen_range(1.0 - spread..=1.0 + spread)
    } else {
        1.0
    };
    let target = ((options.mean_patient_bytes as f64) * factor) as usize;
    let documents = xml::patient_documents(
        &mut rng,
        patient_id(options.seed, n),
        org,
        &prescribers,
        target,
    );
    let mut entries: Vec<(&str, &[u8])> =
        vec![(PATIENT_DOCUMENT, documents.patient_xml.as_bytes())];
    for (name, content) in &documents.messages {
        entries.push((name.as_str(), content.as_bytes()));
    }
    let zip = write_archive(&entries).map_err(|e| ExportError::Format(e.to_string()))?;
    Ok((zip, documents.xml_bytes()))
}

fn reports(options: &ExportOptions, org: &SyntheticOrganisation) -> Vec<SyntheticReport> {
    let mut rng = StdRng::seed_from_u64(mix(options.seed, 3, 0));
    let titles = [
        "Fylkesmann",
        "Legemiddelliste",
        "Interaksjonsrapport",
        "Multidose",
    ];
    (0..options.reports)
        .map(|_| {
            let user = &org.users[rng.gen_range(0..org.users.len())];
            let patient = (options.patients > 0 && rng.gen_bool(0.5))
                .then(|| patient_id(options.seed, rng.gen_range(0..options.patients)));
            SyntheticReport {
                id: xml::uuid(&mut rng),
                user: user.id,
                patient,
                title: titles[rng.gen_range(0..titles.len())],
            }
        })
        .collect()
}

/// The plaintext zip of the organisation file.
pub fn organisation_zip(
    options: &ExportOptions,
    org: &SyntheticOrganisation,
) -> Result<Vec<u8>, ExportError> {
    let text = xml::organisation_xml(org, &reports(options, org));
    write_archive(&[(ORGANISATION_DOCUMENT, text.as_bytes())])
        .map_err(|e| ExportError::Format(e.to_string()))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    fs::write(path, bytes).map_err(|source| ExportError::Io {
        path: path.to_owned(),
        source,
    })
}

fn encrypt(zip: &[u8], certificate: &RecipientCertificate) -> Result<Vec<u8>, ExportError> {
    envelope::encrypt(zip, certificate, DEFAULT_EXTENSION)
        .map_err(|e| ExportError::Format(e.to_string()))
}

/// The folder and `Index.txt` path of patient `n`.
pub fn patient_entry(options: &ExportOptions, n: usize) -> IndexEntry {
    IndexEntry::patient(
        (n / options.patients_per_folder.max(1)) as u32,
        patient_id(options.seed, n),
    )
}

/// Writes the export into `out` (created if missing; must not already hold an export). `progress`
/// is called now and then with the number of patients written.
pub fn write_export(
    options: &ExportOptions,
    certificate: &RecipientCertificate,
    out: &Path,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<ExportSummary, ExportError> {
    let started = Instant::now();
    if options.patients_per_folder == 0 || options.patients_per_folder > MAX_PATIENTS_PER_FOLDER {
        return Err(ExportError::Invalid(format!(
            "patients per folder must be 1 to {MAX_PATIENTS_PER_FOLDER}"
        )));
    }
    if !(0.0..=0.95).contains(&options.spread) {
        return Err(ExportError::Invalid("the spread must be 0 to 0.95".into()));
    }
    if options.mean_patient_bytes < 2048 {
        return Err(ExportError::Invalid(
            "the mean patient size must be at least 2 KB".into(),
        ));
    }
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| ExportError::Io { path, source }
    };
    fs::create_dir_all(out).map_err(io_error(out))?;
    if out.join(ORGANISATION_FILE_NAME).exists() || out.join(INDEX_FILE_NAME).exists() {
        return Err(ExportError::Invalid(format!(
            "{} already holds an export; choose an empty folder",
            out.display()
        )));
    }
    let org = organisation(options)?;
    let org_zip = organisation_zip(options, &org)?;
    let mut xml_bytes = 0u64;
    let mut file_bytes = 0u64;
    let org_file = encrypt(&org_zip, certificate)?;
    file_bytes += org_file.len() as u64;
    xml_bytes += crate::format::archive::read_archive(&org_zip, &Default::default())
        .map(|a| a.total_bytes())
        .unwrap_or(0);

    let folders = options.patients.div_ceil(options.patients_per_folder);
    for folder in 0..folders {
        let path = out.join(format!("{PATIENT_FOLDER_PREFIX}{folder}"));
        fs::create_dir_all(&path).map_err(io_error(&path))?;
    }
    let report_list = reports(options, &org);
    if !report_list.is_empty() {
        let mut rng = StdRng::seed_from_u64(mix(options.seed, 4, 0));
        for report in &report_list {
            // `Reports0\<id>.rpt`, a zip holding the document `RapportFil` names, `<id>.xps`.
            let (folder, file_name) = report_location(&report.id.to_string());
            let folder = out.join(folder);
            fs::create_dir_all(&folder).map_err(io_error(&folder))?;
            let content = xml::report_content(&mut rng, report);
            let name = format!("{}.xps", report.id);
            let zip = write_archive(&[(name.as_str(), &content)])
                .map_err(|e| ExportError::Format(e.to_string()))?;
            let file = encrypt(&zip, certificate)?;
            file_bytes += file.len() as u64;
            write_file(&folder.join(file_name), &file)?;
        }
    }

    // Patients, in parallel: each worker takes the next number.
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let xml_total = AtomicU64::new(0);
    let file_total = AtomicU64::new(0);
    let failure: Mutex<Option<ExportError>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..options.threads.max(1) {
            scope.spawn(|| {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= options.patients || failure.lock().map(|f| f.is_some()).unwrap_or(true)
                    {
                        break;
                    }
                    let result = (|| {
                        let (zip, xml) = patient_zip(options, &org, n)?;
                        let file = encrypt(&zip, certificate)?;
                        let entry = patient_entry(options, n);
                        write_file(&out.join(entry.relative_path()), &file)?;
                        xml_total.fetch_add(xml as u64, Ordering::Relaxed);
                        file_total.fetch_add(file.len() as u64, Ordering::Relaxed);
                        Ok::<(), ExportError>(())
                    })();
                    if let Err(error) = result {
                        if let Ok(mut slot) = failure.lock() {
                            slot.get_or_insert(error);
                        }
                        break;
                    }
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if finished.is_multiple_of(500) {
                        progress(finished);
                    }
                }
            });
        }
    });
    if let Some(error) = failure.into_inner().ok().flatten() {
        return Err(error);
    }
    xml_bytes += xml_total.into_inner();
    file_bytes += file_total.into_inner();

    // The organisation file and the index last: an export is complete once Index.txt exists.
    write_file(&out.join(ORGANISATION_FILE_NAME), &org_file)?;
    let entries: Vec<IndexEntry> = (0..options.patients)
        .map(|n| patient_entry(options, n))
        .collect();
    write_file(&out.join(INDEX_FILE_NAME), write_index(&entries).as_bytes())?;
    progress(options.patients);
    Ok(ExportSummary {
        patients: options.patients,
        users: org.users.len(),
        reports: report_list.len(),
        organisation_number: org.organisation_number.clone(),
        xml_bytes,
        file_bytes,
        elapsed: started.elapsed(),
    })
}
