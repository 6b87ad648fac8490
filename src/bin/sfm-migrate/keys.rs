//! `sfm-migrate key ...` and `sfm-migrate login`: the migration key and the HelseID token the client
//! keeps in its configuration folder, never printed.

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use chrono::Utc;
use sfm_migration::client::config::{KeyStore, StoredToken};
use sfm_migration::client::{Failure, Outcome};
use sfm_migration::helseid::client::{ClientCredentials, SigningKey, client_credentials};

use super::{Context, KeyCommand, LoginArgs};

pub(crate) fn key_command(ctx: &Context, command: KeyCommand) -> Outcome<ExitCode> {
    let mut store = KeyStore::load(&ctx.dir)?;
    match command {
        KeyCommand::Add {
            name,
            for_api,
            make_active,
        } => {
            let key = match std::env::var("SFM_MIGRATION_KEY") {
                Ok(key) if !key.trim().is_empty() => key,
                _ => {
                    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!("Paste the migration key and press Enter:");
                    }
                    let mut line = String::new();
                    std::io::stdin()
                        .take(4096)
                        .read_to_string(&mut line)
                        .map_err(|e| {
                            Failure::new(
                                format!("Cannot read the key from standard input ({e})."),
                                "pipe the key in, e.g. `sfm-migrate key add NAME < key.txt`",
                            )
                        })?;
                    line.lines().next().unwrap_or_default().to_owned()
                }
            };
            store.add(&name, &key, for_api.or(ctx.api_flag.clone()), make_active)?;
            store.save(&ctx.dir)?;
            println!(
                "Registered key {name:?}{}.",
                if store.active.as_deref() == Some(&name) {
                    " (active)"
                } else {
                    ""
                }
            );
        }
        KeyCommand::List => {
            if store.keys.is_empty() {
                println!("No keys registered; add one with `sfm-migrate key add <name>`.");
            }
            for key in &store.keys {
                let active = store.active.as_deref() == Some(key.name.as_str());
                println!(
                    "{} {:<24} key id {:<20} api {} added {}",
                    if active { "*" } else { " " },
                    key.name,
                    key.key_id(),
                    key.api.as_deref().unwrap_or("-"),
                    key.added_at.format("%Y-%m-%d %H:%M")
                );
            }
        }
        KeyCommand::Use { name } => {
            store.use_key(&name)?;
            store.save(&ctx.dir)?;
            println!("Key {name:?} is now active.");
        }
        KeyCommand::Remove { name } => {
            store.remove(&name)?;
            store.save(&ctx.dir)?;
            println!("Removed key {name:?}.");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn login(ctx: &Context, args: LoginArgs) -> Outcome<ExitCode> {
    if let Some(token) = args.token {
        if args.token_type.eq_ignore_ascii_case("dpop") {
            return Err(Failure::new(
                "A DPoP token cannot be used without the key it is bound to.",
                "log in with --issuer, --client-id and --key-file and --dpop instead",
            ));
        }
        StoredToken {
            access_token: token.trim().to_owned(),
            token_type: "Bearer".into(),
            expires_at: None,
            dpop_key_pem: None,
        }
        .save(&ctx.dir)?;
        println!("Stored the access token.");
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(issuer), Some(client_id), Some(key_file)) =
        (args.issuer, args.client_id, args.key_file)
    else {
        return Err(Failure::new(
            "Login needs either --token, or --issuer, --client-id and --key-file.",
            "give your HelseID client's id and private key (see `sfm-migrate login --help`)",
        ));
    };
    let pem = std::fs::read(&key_file)
        .map_err(|e| sfm_migration::client::io_failure("read", &key_file, &e))?;
    let key = SigningKey::from_pem(&pem, args.kid).map_err(|e| {
        Failure::new(
            format!("{}: {e}.", key_file.display()),
            "give the private key registered for your HelseID client (PEM)",
        )
    })?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| Failure::new(format!("Cannot set up HTTPS ({e})."), "check the system"))?;
    let token = client_credentials(
        &http,
        &ClientCredentials {
            issuer,
            client_id,
            key,
            scope: args.scope,
            dpop: args.dpop,
        },
    )
    .await
    .map_err(|e| {
        Failure::new(
            format!("HelseID login failed: {e}."),
            "check the issuer address, client id, key and scope; ask NHN whether the client is allowed the scope",
        )
    })?;
    let expires_at = token
        .expires_in
        .map(|s| Utc::now() + chrono::Duration::seconds(s as i64));
    StoredToken {
        access_token: token.access_token.clone(),
        token_type: token.token_type.clone(),
        expires_at,
        dpop_key_pem: token.dpop_key.as_ref().map(|k| k.pem().to_owned()),
    }
    .save(&ctx.dir)?;
    println!(
        "Logged in: {} token{}, stored in {}.",
        token.token_type,
        expires_at
            .map(|at| format!(" valid until {at}"))
            .unwrap_or_default(),
        ctx.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
