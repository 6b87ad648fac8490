//! `sfm-operator`: the controller for MigrationDatabase and MigrationKey.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "SFM migration operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crds,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Crds => print!("{}", sfm_migration::crd::crds_yaml()?),
    }
    Ok(())
}
