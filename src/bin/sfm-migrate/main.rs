//! `sfm-migrate`: the data controller's migration client (DESIGN section 6). Run `sfm-migrate --help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use clap::{Args, Parser, Subcommand};
use sfm_migration::client::api::{ApiClient, Auth};
use sfm_migration::client::check::{CheckOptions, CheckReport, check_export};
use sfm_migration::client::config::{KeyStore, StoredToken, config_dir};
use sfm_migration::client::ledger::Ledger;
use sfm_migration::client::upload::{UploadOptions, settle_pending, upload};
use sfm_migration::client::workflow::{
    activate_and_wait, as_named_by_nhn_uploader, delete_export, key_check, manifest, verify,
};
use sfm_migration::client::{Failure, Outcome};
use sfm_migration::format::envelope::RecipientCertificate;

mod keys;
use keys::{key_command, login};

#[derive(Parser)]
#[command(
    name = "sfm-migrate",
    version,
    about = "Moves an organisation's FM export into its new SFM database through NHN's migration API",
    long_about = "Moves an organisation's FM export into its new SFM database through NHN's migration API.\n\n\
        Typical use: `sfm-migrate key add oslo < key.txt`, `sfm-migrate login ...` when the database\n\
        requires HelseID, then `sfm-migrate run --api https://... /path/to/export`."
)]
struct Cli {
    /// Where the client keeps its keys and token (default: ~/.config/sfm-migrate).
    #[arg(long, global = true, env = "SFM_MIGRATE_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// The migration API's address (default: the one stored with the active key).
    #[arg(long, global = true, env = "SFM_MIGRATE_API")]
    api: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Get a HelseID access token (client credentials with a signed client assertion), or store one
    /// you were given.
    Login(LoginArgs),
    /// Forget the stored HelseID token.
    Logout,
    /// Manage migration keys: several may be registered, one is active.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Check an export folder before anything is sent.
    Check(CheckArgs),
    /// Send the export: the organisation file first, then patients in parallel; resumable.
    Upload(UploadArgs),
    /// Send the manifest of every file and its digest; the API confirms it holds exactly those.
    Verify(VerifyArgs),
    /// Ask for operational mode, wait for it, then delete the export's files (unless --keep).
    Activate(ActivateArgs),
    /// check, upload, verify and activate in one go.
    Run(RunArgs),
    /// Show the migration's progress as the API sees it.
    Status,
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Register a migration key (read from SFM_MIGRATION_KEY or standard input, never an argument).
    Add {
        /// Your name for the key, e.g. the organisation.
        name: String,
        /// The migration API this key is for.
        #[arg(long = "for-api")]
        for_api: Option<String>,
        /// Make it the active key even if another is active.
        #[arg(long = "use")]
        make_active: bool,
    },
    /// List the registered keys (names and key ids, never the secrets).
    List,
    /// Make a key the active one.
    Use { name: String },
    /// Remove a key.
    Remove { name: String },
}

#[derive(Args)]
struct LoginArgs {
    /// An access token you were given (as NHN's uploader accepts); else SFM_HELSEID_TOKEN.
    #[arg(long, env = "SFM_HELSEID_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The type of a given token; only Bearer works (a DPoP token is useless without its key).
    #[arg(long, default_value = "Bearer")]
    token_type: String,
    /// HelseID's issuer, e.g. https://helseid-sts.nhn.no.
    #[arg(long)]
    issuer: Option<String>,
    /// Your HelseID client id.
    #[arg(long)]
    client_id: Option<String>,
    /// Your client's private key (RSA or P-256, PEM) that signs the client assertion.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The key id (kid) registered with HelseID for that key.
    #[arg(long)]
    kid: Option<String>,
    /// The scope(s) to ask for.
    #[arg(long, default_value = "nhn:sfm-migration/upload")]
    scope: String,
    /// Ask for a DPoP-bound token (RFC 9449).
    #[arg(long)]
    dpop: bool,
}

#[derive(Args)]
struct VerifyArgs {
    /// The export folder (holds ExportData.dat and Index.txt).
    folder: PathBuf,
    /// For an export NHN's own uploader sent: every file `Index.txt` names (and ExportData.dat),
    /// read and hashed here, by the name that uploader gives it (the file name alone), against the
    /// API's manifest of what it stored. Prints the digest an NHN operator approves.
    #[arg(long)]
    against_index: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// The export folder (holds ExportData.dat and Index.txt).
    folder: PathBuf,
    /// The "SFM migrering" certificate: also check every file was encrypted to a key of its size.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Largest file accepted, in MB.
    #[arg(long, default_value_t = 512)]
    max_file_mb: u64,
}

#[derive(Args, Clone)]
struct UploadTuning {
    /// Concurrent uploads, 1 to 1000.
    #[arg(long, default_value_t = 10)]
    workers: usize,
    /// Bytes per PATCH request, in MB.
    #[arg(long, default_value_t = 8)]
    chunk_mb: usize,
    /// Send again files the API rejected before.
    #[arg(long)]
    resend_rejected: bool,
    /// Plain progress lines instead of a progress bar.
    #[arg(long)]
    plain: bool,
}

#[derive(Args)]
struct UploadArgs {
    /// The export folder (holds ExportData.dat and Index.txt).
    folder: PathBuf,
    #[command(flatten)]
    tuning: UploadTuning,
}

#[derive(Args)]
struct ActivateArgs {
    /// The export folder (holds ExportData.dat and Index.txt).
    folder: PathBuf,
    /// Keep the export files after the database is operational.
    #[arg(long)]
    keep: bool,
    /// How long to wait for operational mode, in seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
}

#[derive(Args)]
struct RunArgs {
    /// The export folder (holds ExportData.dat and Index.txt).
    folder: PathBuf,
    #[command(flatten)]
    tuning: UploadTuning,
    /// Keep the export files after the database is operational.
    #[arg(long)]
    keep: bool,
    /// How long to wait for operational mode, in seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
}

fn main() -> ExitCode {
    sfm_migration::tls::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start ({error})");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
    }
}

struct Context {
    dir: PathBuf,
    api_flag: Option<String>,
}

impl Context {
    fn api(&self, workers: usize) -> Outcome<ApiClient> {
        let store = KeyStore::load(&self.dir)?;
        let token = StoredToken::load(&self.dir)?;
        let (key, key_api) = match store.active_key() {
            Ok(key) => (Some(key.token()?.expose()), key.api.clone()),
            // No key but a HelseID login: enough for a database that accepts uploads without a key
            // (the way NHN's own uploader works).
            Err(_) if token.is_some() => (None, None),
            Err(failure) => return Err(failure),
        };
        let base = self.api_flag.clone().or(key_api).ok_or_else(|| {
            Failure::new(
                "The client does not know the migration API's address.",
                "give it with --api https://... (or store it with `sfm-migrate key add --for-api`)",
            )
        })?;
        let auth = Auth::new(key, token)?;
        ApiClient::new(&base, auth, workers)
    }
}

async fn run(cli: Cli) -> Outcome<ExitCode> {
    let ctx = Context {
        dir: config_dir(cli.config_dir.as_deref())?,
        api_flag: cli.api.clone(),
    };
    match cli.command {
        Command::Key(command) => key_command(&ctx, command),
        Command::Login(args) => login(&ctx, args).await,
        Command::Logout => {
            let path = ctx.dir.join(sfm_migration::client::config::TOKEN_FILE);
            match std::fs::remove_file(&path) {
                Ok(()) => println!("Logged out: the stored HelseID token is deleted."),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    println!("No HelseID token was stored.")
                }
                Err(e) => return Err(sfm_migration::client::io_failure("delete", &path, &e)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => {
            let certificate_bits = match &args.cert {
                Some(path) => Some(certificate_bits(path)?),
                None => None,
            };
            let report = check_export(
                &args.folder,
                &CheckOptions {
                    max_file_bytes: args.max_file_mb * 1024 * 1024,
                    certificate_bits,
                    ..CheckOptions::default()
                },
            )?;
            print!("{report}");
            if report.is_ok() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(report.failure())
            }
        }
        Command::Status => {
            let api = ctx.api(1)?;
            let status = api.status().await.map_err(|e| e.failure())?;
            println!("database {}: {}", status.database, status.phase);
            if let Some(reason) = &status.phase_reason {
                println!("  reason: {reason}");
            }
            println!("  organisation stored: {}", status.organisation_stored);
            for (what, counts) in [
                ("users", status.users),
                ("patients", status.patients),
                ("reports", status.reports),
            ] {
                println!(
                    "  {what}: received {}, stored {}, rejected {}",
                    counts.received, counts.stored, counts.rejected
                );
            }
            for rejection in &status.rejections {
                println!(
                    "  rejected {} ({}): {}",
                    rejection.file, rejection.code, rejection.message
                );
            }
            if let Some(digest) = &status.validated_digest {
                println!("  validated manifest digest: {digest}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Upload(args) => {
            let report = checked(&args.folder)?;
            let api = ctx.api(args.tuning.workers)?;
            let summary = do_upload(&api, &args.folder, &report, &args.tuning).await?;
            Ok(if summary {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Verify(args) => {
            let report = checked(&args.folder)?;
            let api = ctx.api(1)?;
            if args.against_index {
                verify_against_index(&api, &report).await?;
                return Ok(ExitCode::SUCCESS);
            }
            let database = database_of(&api).await?;
            do_verify(&api, &args.folder, &report, &database).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Activate(args) => {
            let api = ctx.api(1)?;
            database_of(&api).await?;
            let report =
                sfm_migration::client::check::check_export(&args.folder, &CheckOptions::default())?;
            do_activate(&api, &args.folder, &report, args.keep, args.timeout_secs).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let report = checked(&args.folder)?;
            let api = ctx.api(args.tuning.workers)?;
            if !do_upload(&api, &args.folder, &report, &args.tuning).await? {
                return Ok(ExitCode::FAILURE);
            }
            let (_, check) = key_check(&api).await?;
            do_verify(&api, &args.folder, &report, &check.database).await?;
            do_activate(&api, &args.folder, &report, args.keep, args.timeout_secs).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn certificate_bits(path: &Path) -> Outcome<usize> {
    let pem =
        std::fs::read(path).map_err(|e| sfm_migration::client::io_failure("read", path, &e))?;
    RecipientCertificate::from_pem(&pem)
        .map(|c| c.key_bits())
        .map_err(|e| {
            Failure::new(
                format!("{} is not a usable certificate ({e}).", path.display()),
                "give the \"SFM migrering\" certificate NHN published, in PEM",
            )
        })
}

/// Runs the check and stops on problems (printing the report).
fn checked(folder: &Path) -> Outcome<CheckReport> {
    let report = check_export(folder, &CheckOptions::default())?;
    if !report.is_ok() {
        print!("{report}");
        return Err(report.failure());
    }
    eprintln!(
        "Checked {}: {} patient files, {} report files, {:.1} MB",
        folder.display(),
        report.count(sfm_migration::contract::FileType::Patient),
        report.count(sfm_migration::contract::FileType::Report),
        report.total_bytes() as f64 / 1e6
    );
    Ok(report)
}

/// Ctrl-C once: stop taking new files; twice: exit now.
fn cancel_on_ctrl_c() -> Arc<AtomicBool> {
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\nStopping: finishing the requests in flight (Ctrl-C again to quit at once; the ledger keeps what was sent)"
            );
            flag.store(true, Ordering::Relaxed);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    cancel
}

async fn do_upload(
    api: &ApiClient,
    folder: &Path,
    report: &CheckReport,
    tuning: &UploadTuning,
) -> Outcome<bool> {
    let (version, check) = key_check(api).await?;
    eprintln!(
        "Migration API {} (contract {}), key {} for database {} ({})",
        version.product_version, version.api_version, check.key_id, check.database, check.phase
    );
    if check.expires_at < Utc::now() + chrono::Duration::hours(1) {
        eprintln!(
            "warning: the migration key expires at {}; ask NHN for a new one if the upload may take longer",
            check.expires_at
        );
    }
    let ledger = Ledger::open(folder, &check.database)?;
    let options = UploadOptions {
        workers: tuning.workers,
        chunk_size: tuning.chunk_mb.max(1) * 1024 * 1024,
        resend_rejected: tuning.resend_rejected,
        plain_progress: tuning.plain,
        ..UploadOptions::default()
    };
    let cancel = cancel_on_ctrl_c();
    let summary = upload(api, report, &ledger, &options, &cancel).await?;
    print!("{summary}");
    if summary.cancelled {
        eprintln!("Interrupted: run the same command again to continue where it stopped.");
        return Ok(false);
    }
    if !summary.failed.is_empty() {
        return Err(Failure::new(
            format!("{} file(s) could not be sent.", summary.failed.len()),
            "see the reasons above, then run the same command again; it sends only what is missing",
        ));
    }
    if summary.pending > 0 {
        let still = settle_pending(api, &ledger, &options.retry, 16).await?;
        if still > 0 {
            eprintln!(
                "{still} file(s) are still being ingested by the API; verify waits for them."
            );
        }
    }
    if !summary.rejected.is_empty() {
        eprintln!(
            "{} file(s) were rejected: `sfm-migrate status` gives the reasons; ask your EPJ supplier for corrected files.",
            summary.rejected.len()
        );
    }
    Ok(true)
}

/// The database this client's credentials reach: by the key check when it has a key, else by the
/// status a HelseID token alone may read.
async fn database_of(api: &ApiClient) -> Outcome<String> {
    if api.has_key() {
        let (_, check) = key_check(api).await?;
        return Ok(check.database);
    }
    let status = api.status().await.map_err(|e| e.failure())?;
    Ok(status.database)
}

/// `verify --against-index`: the export as `Index.txt` names it, by the names NHN's uploader gives
/// the files, against what the API stored.
async fn verify_against_index(api: &ApiClient, report: &CheckReport) -> Outcome<()> {
    let manifest = as_named_by_nhn_uploader(&manifest(report, None)?)?;
    let digest = manifest.digest();
    eprintln!(
        "Verifying {} files named by Index.txt (manifest digest {digest})",
        manifest.files.len()
    );
    if let Ok(status) = api.status().await
        && let Some(stored) = status.stored
        && stored.digest != digest
    {
        eprintln!(
            "The API's manifest of what it stored ({} files, digest {}) differs; verify lists how.",
            stored.files, stored.digest
        );
    }
    let answer = verify(api, &manifest, Duration::from_secs(600)).await?;
    println!(
        "Verified: the API holds exactly the files Index.txt names ({} files: {} users, {} patients, {} reports).",
        answer.files, answer.users, answer.patients, answer.reports
    );
    println!(
        "Digest to approve: {} (spec.activation.approvedDigest of the MigrationDatabase; an NHN operator sets it).",
        answer.digest
    );
    Ok(())
}

async fn do_verify(
    api: &ApiClient,
    folder: &Path,
    report: &CheckReport,
    database: &str,
) -> Outcome<()> {
    let ledger = Ledger::open(folder, database)?;
    let manifest = manifest(report, Some(&ledger))?;
    eprintln!(
        "Verifying {} files (manifest digest {})",
        manifest.files.len(),
        manifest.digest()
    );
    let answer = verify(api, &manifest, Duration::from_secs(600)).await?;
    println!(
        "Verified: the API holds exactly this export ({} files: {} users, {} patients, {} reports), digest {} at {}",
        answer.files,
        answer.users,
        answer.patients,
        answer.reports,
        answer.digest,
        answer.validated_at
    );
    Ok(())
}

async fn do_activate(
    api: &ApiClient,
    folder: &Path,
    report: &CheckReport,
    keep: bool,
    timeout_secs: u64,
) -> Outcome<()> {
    activate_and_wait(api, Duration::from_secs(timeout_secs)).await?;
    println!("The database is operational: the migration is complete.");
    if keep {
        println!("The export files were kept (--keep).");
    } else {
        let deleted = delete_export(folder, report)?;
        println!(
            "Deleted the export: {deleted} files ({} and the files it names); nothing else in {} was touched.",
            sfm_migration::format::index::INDEX_FILE_NAME,
            folder.display()
        );
    }
    Ok(())
}
