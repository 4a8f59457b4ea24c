//! Following one object until it reaches an end: a watch on it, a line printed for each
//! change (see [`ProgressLog`]), and a deadline.

use std::{
    fmt::Debug,
    io::Write as _,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt as _,
        watcher::{self, Event},
    },
};
use serde::de::DeserializeOwned;

use super::{
    PluginError,
    render::{self, Outcome, ProgressLog},
};

/// What is followed and how to read it.
pub struct Followed<'a, K> {
    pub api: &'a Api<K>,
    pub name: &'a str,
    /// `Kind/name`, for messages.
    pub what: String,
    /// The command that shows it later (printed when following stops early).
    pub how: String,
    pub timeout: Duration,
    pub progress: &'a dyn Fn(&K) -> Vec<(String, String)>,
    pub outcome: &'a dyn Fn(&K) -> Option<Outcome>,
}

/// Watch until `outcome` says the object reached an end; print each change of `progress`
/// with the time since following started. Errors: timed out (the operation goes on),
/// interrupted, the object deleted.
pub async fn follow<K>(f: Followed<'_, K>) -> Result<Outcome, PluginError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={}", f.name));
    let mut stream = std::pin::pin!(watcher::watcher(f.api.clone(), config).default_backoff());
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + f.timeout;
    let mut log = ProgressLog::default();
    let mut warned = false;
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(PluginError::TimedOut {
                    what: f.what,
                    waited: render::human_duration(f.timeout),
                    how: f.how,
                });
            }
            _ = tokio::signal::ctrl_c() => return Err(PluginError::Interrupted(f.what)),
        };
        match event {
            Some(Ok(Event::Apply(obj) | Event::InitApply(obj))) => {
                let lines = log.changes((f.progress)(&obj));
                let mut out = std::io::stdout().lock();
                for line in lines {
                    let _ = writeln!(out, "{} {line}", render::elapsed(started.elapsed()));
                }
                let _ = out.flush();
                if let Some(end) = (f.outcome)(&obj) {
                    return Ok(end);
                }
            }
            Some(Ok(Event::Delete(_))) => {
                return Err(PluginError::Refused(format!("{} was deleted while it was followed", f.what)));
            }
            Some(Ok(Event::Init | Event::InitDone)) => {}
            // Not allowed to watch: retrying will not help.
            Some(Err(
                watcher::Error::InitialListFailed(kube::Error::Api(s))
                | watcher::Error::WatchStartFailed(kube::Error::Api(s)),
            )) if s.code == 401 || s.code == 403 => {
                return Err(PluginError::Client(format!(
                    "cannot follow {}: {}; it goes on in the cluster (`{}` with credentials that may watch it)",
                    f.what,
                    render::one_line(&s.message),
                    f.how
                )));
            }
            // The watch is retried with backoff; say once that it is struggling.
            Some(Err(e)) => {
                if !warned {
                    eprintln!("warning: watching {}: {e} (retrying)", f.what);
                    warned = true;
                }
            }
            None => return Err(PluginError::Client(format!("the watch of {} ended", f.what))),
        }
    }
}

impl<K> Followed<'_, K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default,
{
    /// Follow to the end, as the command's result: the message when it succeeded, the reason
    /// on one line when it failed.
    pub async fn to_the_end(self) -> Result<String, PluginError> {
        let what = self.what.clone();
        match follow(self).await? {
            Outcome::Succeeded(message) => Ok(message),
            Outcome::Failed(reason) => Err(PluginError::Refused(format!("{what} failed: {reason}"))),
        }
    }
}
