//! Controllers: gather facts, ask [`crate::core`] what to do, apply it. Shared plumbing lives
//! here so the controllers are not copies of each other.

use kube::Client;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// What every controller gets.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    /// Namespaces to watch; empty = all.
    pub namespaces: Vec<String>,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, namespaces: Vec<String>) -> Self {
        Self { client, metrics, namespaces }
    }
}

/// Run every controller until one fails or `leading` turns false.
pub async fn run_all(_ctx: Context, mut leading: watch::Receiver<bool>) -> anyhow::Result<()> {
    let _ = leading.wait_for(|l| !*l).await;
    Ok(())
}
