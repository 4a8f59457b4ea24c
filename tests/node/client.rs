//! Clients the node tier's tests run on the host: a writer going through a Service's
//! ClusterIP (kube-proxy's DNAT in the node's namespace) and a sampler of member roles.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use understudy::localredis::redis_conn;

/// Writes `SET w:<n> <n>` in a closed loop to `host:port`, reconnecting on any error, and
/// records every acknowledged write with the time it was acknowledged.
pub struct Writer {
    acked: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(host: &str, port: u16) -> Self {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s, host) = (acked.clone(), stop.clone(), host.to_owned());
        let task = tokio::spawn(async move {
            let mut conn = None;
            let mut n: u64 = 0;
            while !s.load(SeqCst) {
                if conn.is_none() {
                    conn = redis_conn(&host, port, None, 300).await.ok();
                    if conn.is_none() {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        continue;
                    }
                }
                let c = conn.as_mut().expect("connected");
                n += 1;
                let r: redis::RedisResult<()> =
                    redis::cmd("SET").arg(format!("w:{n}")).arg(n).query_async(c).await;
                match r {
                    Ok(()) => a.lock().unwrap().push((n, Instant::now())),
                    Err(_) => conn = None,
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        Self { acked, stop, task }
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Wait until `n` more writes than now have been acknowledged.
    pub async fn wait_more(&self, n: usize, timeout: Duration) {
        let want = self.count() + n;
        let deadline = Instant::now() + timeout;
        while self.count() < want {
            assert!(Instant::now() < deadline, "the writer got no {n} acknowledgements within {timeout:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The longest gap between consecutive acknowledgements within [from, to].
    pub fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let acked = self.acked.lock().unwrap();
        let times: Vec<Instant> =
            acked.iter().map(|(_, at)| *at).filter(|at| *at >= from && *at <= to).collect();
        times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(to - from)
    }

    /// When the longest gap within [from, to] began, as an offset from `from`.
    pub fn longest_gap_began(&self, from: Instant, to: Instant) -> Option<Duration> {
        let acked = self.acked.lock().unwrap();
        let times: Vec<Instant> =
            acked.iter().map(|(_, at)| *at).filter(|at| *at >= from && *at <= to).collect();
        times.windows(2).max_by_key(|w| w[1] - w[0]).map(|w| w[0] - from)
    }

    /// The sequence number of the last acknowledged write.
    /// The writes acknowledged at or after `t`.
    pub fn acked_since(&self, t: Instant) -> Vec<u64> {
        self.acked.lock().unwrap().iter().filter(|(_, at)| *at >= t).map(|(n, _)| *n).collect()
    }

    pub fn last_seq(&self) -> u64 {
        self.acked.lock().unwrap().last().map(|(n, _)| *n).unwrap_or(0)
    }

    /// Stop and return every acknowledged sequence number.
    pub async fn stop(self) -> Vec<u64> {
        self.stop.store(true, SeqCst);
        let _ = self.task.await;
        self.acked.lock().unwrap().iter().map(|(n, _)| *n).collect()
    }
}

/// Which of `seqs` are missing on the server at `host:port`.
pub async fn missing(host: &str, port: u16, seqs: &[u64]) -> Vec<u64> {
    let mut c = redis_conn(host, port, None, 5000).await.expect("connect to check writes");
    let mut lost = Vec::new();
    for chunk in seqs.chunks(1000) {
        let keys: Vec<String> = chunk.iter().map(|n| format!("w:{n}")).collect();
        let vals: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut c).await.expect("MGET");
        lost.extend(chunk.iter().zip(vals).filter(|(_, v)| v.is_none()).map(|(n, _)| *n));
    }
    lost
}

/// `role` from INFO replication, or None if the server does not answer within 300 ms.
pub async fn role(host: &str, port: u16) -> Option<String> {
    let mut c = redis_conn(host, port, None, 300).await.ok()?;
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut c).await.ok()?;
    info.lines().find_map(|l| l.strip_prefix("role:")).map(|r| r.trim().to_owned())
}

/// `master_host` of a replica (None for a primary or an unreachable server).
pub async fn master_host(host: &str, port: u16) -> Option<String> {
    let mut c = redis_conn(host, port, None, 300).await.ok()?;
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut c).await.ok()?;
    let link_up = info.lines().any(|l| l.trim() == "master_link_status:up");
    let host = info.lines().find_map(|l| l.strip_prefix("master_host:")).map(|r| r.trim().to_owned());
    host.filter(|_| link_up)
}

/// Samples the role of every pod matching a selector (addresses re-read each round, since
/// recreated pods get new IPs) and remembers the most primaries ever seen in one round.
pub struct RoleSampler {
    max: Arc<AtomicUsize>,
    rounds: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RoleSampler {
    pub fn start(client: kube::Client, ns: &str, selector: &str, port: u16) -> Self {
        let (max, rounds) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (m, r, ns, selector) = (max.clone(), rounds.clone(), ns.to_owned(), selector.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let pods = crate::support::pods(&client, &ns, &selector).await;
                let ips: Vec<String> = pods.iter().filter_map(crate::support::pod_ip).collect();
                let roles = futures::future::join_all(ips.iter().map(|ip| role(ip, port))).await;
                m.fetch_max(roles.iter().filter(|r| r.as_deref() == Some("master")).count(), SeqCst);
                r.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { max, rounds, task }
    }

    pub fn max(&self) -> usize {
        self.max.load(SeqCst)
    }

    pub fn rounds(&self) -> usize {
        self.rounds.load(SeqCst)
    }
}

impl Drop for RoleSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
