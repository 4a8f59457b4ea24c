//! Start the local test control plane and keep it running until Ctrl-C, for poking at it
//! with kubectl: `cargo run --example controlplane`.

use understudy::controlplane::{ControlPlane, Options};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cp = ControlPlane::start(Options::default()).await?;
    println!("export KUBECONFIG={}", cp.kubeconfig_path().display());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
