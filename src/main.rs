use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Understudy: owns the roles of replicated stateful services on Kubernetes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every CustomResourceDefinition as YAML (or write one file per kind).
    Crds {
        /// Write `<plural>.<group>.yaml` files into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds { dir } => print_crds(dir),
    }
}

fn print_crds(dir: Option<PathBuf>) -> anyhow::Result<()> {
    for crd in understudy::resources::crds() {
        let yaml = understudy::resources::crd_yaml(&crd)?;
        match &dir {
            Some(dir) => {
                let path = dir.join(understudy::resources::crd_file_name(&crd));
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
