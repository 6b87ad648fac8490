//! `sfm-export`: the reference exporter and synthetic data generator (DESIGN section 5).
//!
//! `sfm-export keygen --out DIR` makes a demo RSA key and "SFM migrering" certificate;
//! `sfm-export generate --cert DIR/cert.pem --patients N --out EXPORT` writes an encrypted export.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sfm_migration::export::{ExportOptions, write_export};
use sfm_migration::format::envelope::{RecipientCertificate, generate_demo_key_pair};

#[derive(Parser)]
#[command(
    name = "sfm-export",
    version,
    about = "Writes synthetic FM exports in NHN's format, encrypted to the SFM migration certificate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a demo RSA key (private_key.pem, PKCS#8) and self-signed certificate (certificate.pem).
    Keygen {
        /// Folder to write the two files into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// RSA key size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = 2048)]
        bits: usize,
        /// The certificate's common name.
        #[arg(long, default_value = "SFM migrering")]
        common_name: String,
    },
    /// Write a synthetic export for N patients into a folder.
    Generate {
        /// The "SFM migrering" certificate (PEM) every file is encrypted to.
        #[arg(long)]
        cert: PathBuf,
        /// The export folder to write (created; must not hold an export yet).
        #[arg(long)]
        out: PathBuf,
        /// Number of patients.
        #[arg(long, default_value_t = 100)]
        patients: usize,
        /// Number of users in the organisation file.
        #[arg(long, default_value_t = 25)]
        users: usize,
        /// Number of report files (default: one per 200 patients, at least one).
        #[arg(long)]
        reports: Option<usize>,
        /// Mean KB of XML per patient (PatientData.xml and its messages).
        #[arg(long, default_value_t = 100)]
        size_kb: usize,
        /// Spread of the patient size around the mean (0 to 0.95).
        #[arg(long, default_value_t = 0.5)]
        spread: f64,
        /// Seed: the same seed gives the same export (apart from the encryption's random keys).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Organisation number to export for (9 digits, mod 11); derived from the seed otherwise.
        #[arg(long)]
        organisation_number: Option<String>,
        /// HER-id of the institution; derived from the seed otherwise.
        #[arg(long)]
        her_id: Option<String>,
        /// Patients per Patients<N> folder (at most 16000, NHN's limit).
        #[arg(long, default_value_t = 16_000)]
        patients_per_folder: usize,
        /// Worker threads (default: the number of cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() -> ExitCode {
    sfm_migration::tls::install_crypto_provider();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("sfm-export: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Keygen {
            out,
            bits,
            common_name,
        } => {
            let pair = generate_demo_key_pair(bits, &common_name).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&out)
                .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
            let key = out.join("private_key.pem");
            let cert = out.join("certificate.pem");
            write_private(&key, pair.private_key_pem.as_bytes())?;
            std::fs::write(&cert, &pair.certificate_pem)
                .map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
            println!(
                "wrote {} (RSA {bits}, readable by you only) and {}",
                key.display(),
                cert.display()
            );
            Ok(())
        }
        Command::Generate {
            cert,
            out,
            patients,
            users,
            reports,
            size_kb,
            spread,
            seed,
            organisation_number,
            her_id,
            patients_per_folder,
            threads,
        } => {
            let pem = std::fs::read(&cert)
                .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
            let certificate = RecipientCertificate::from_pem(&pem)
                .map_err(|e| format!("{} is not a usable certificate: {e}", cert.display()))?;
            let defaults = ExportOptions::default();
            let options = ExportOptions {
                patients,
                users,
                reports: reports.unwrap_or((patients / 200).max(1)),
                mean_patient_bytes: size_kb * 1024,
                spread,
                seed,
                organisation_number,
                her_id,
                patients_per_folder,
                threads: threads.unwrap_or(defaults.threads),
            };
            let summary = write_export(&options, &certificate, &out, &|done| {
                if done < patients {
                    eprintln!("  {done}/{patients} patients");
                }
            })
            .map_err(|e| e.to_string())?;
            let secs = summary.elapsed.as_secs_f64();
            println!(
                "wrote {} patients, {} users, {} reports for organisation {} to {} in {secs:.1} s: \
                 {:.0} patients/s, {:.1} MB XML ({:.1} MB/s), {:.1} MB encrypted files, RSA {} bits",
                summary.patients,
                summary.users,
                summary.reports,
                summary.organisation_number,
                out.display(),
                summary.patients_per_second(),
                summary.xml_bytes as f64 / 1e6,
                summary.xml_bytes as f64 / 1e6 / secs.max(1e-9),
                summary.file_bytes as f64 / 1e6,
                certificate.key_bits(),
            );
            Ok(())
        }
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(bytes)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
