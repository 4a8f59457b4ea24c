//! The client, configured as kubectl would be, and who is asking.

use k8s_openapi::{
    api::authentication::v1::SelfSubjectReview, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    Api, Client, Config,
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
};

use super::{ConnectionArgs, PluginError, RequestArgs, render};

/// A client and the namespace commands act in.
pub struct Target {
    pub client: Client,
    pub namespace: String,
}

/// kubectl's rules: `--kubeconfig`, else `$KUBECONFIG` (several files merged), else
/// `~/.kube/config`; `--context`, else the current context; `--namespace`, else the
/// context's namespace, else `default`.
pub async fn connect(args: &ConnectionArgs) -> Result<Target, PluginError> {
    let kubeconfig = match &args.kubeconfig {
        Some(path) => Kubeconfig::read_from(path),
        None => Kubeconfig::read(),
    }
    .map_err(|e| PluginError::Client(format!("reading the kubeconfig: {e}")))?;
    let options = KubeConfigOptions { context: args.context.clone(), ..Default::default() };
    let config = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| PluginError::Client(format!("kubeconfig: {e}")))?;
    let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| PluginError::Client(format!("client: {e}")))?;
    Ok(Target { client, namespace })
}

/// Who asked, when and why: what the plugin records on the objects it creates or changes.
#[derive(Clone, Debug)]
pub struct Requester {
    pub user: String,
    pub reason: Option<String>,
    pub at: Timestamp,
}

impl Requester {
    /// The Kubernetes user as the API server authenticated us (SelfSubjectReview), else the
    /// local `$USER@hostname`.
    pub async fn identify(client: &Client, args: &RequestArgs) -> Self {
        let review = SelfSubjectReview::default();
        let user =
            match Api::<SelfSubjectReview>::all(client.clone()).create(&PostParams::default(), &review).await
            {
                Ok(r) => r.status.and_then(|s| s.user_info).and_then(|u| u.username),
                Err(_) => None,
            };
        let user = user.unwrap_or_else(local_user);
        Self { user, reason: args.reason.clone(), at: Timestamp::now() }
    }

    /// `alice at 2026-12-05T03:15:00Z (reason: kernel upgrade)`: the value of the annotation
    /// the plugin leaves on an object it changed.
    pub fn describe(&self) -> String {
        let mut s = format!("{} at {}", self.user, render::rfc3339(&Time(self.at)));
        if let Some(r) = &self.reason {
            s = format!("{s} (reason: {})", render::one_line(r));
        }
        s
    }
}

fn local_user() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{user}@{host}")
}
