//! `understudy run`: health, readiness and metrics endpoints, and Lease-based leader election
//! between two real processes.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;

use crate::support::{self, Process, eventually, http_get};

fn run_args<'a>(ns: &'a str, listen: &'a str, identity: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "--leader-elect",
        "--leader-election-namespace",
        ns,
        "--identity",
        identity,
        "--listen",
        listen,
        "--namespaces",
        ns,
    ]
}

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get_opt("understudy-leader").await.ok().flatten()?.spec?.holder_identity.filter(|h| !h.is_empty())
}

#[tokio::test]
async fn one_leader_acts_and_a_second_replica_stays_passive_until_the_leader_leaves() {
    let client = support::client().await;
    let ns = support::namespace(&client, "leader").await;
    let leases: Api<Lease> = Api::namespaced(client, &ns);
    let (a_addr, b_addr) = (
        format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap()),
        format!("127.0.0.1:{}", understudy::controlplane::free_port().unwrap()),
    );
    let mut a = Process::understudy(&run_args(&ns, &a_addr, "replica-a"), "understudy-a");
    let a_sock = a_addr.parse().unwrap();
    eventually(Duration::from_secs(30), "replica-a ready", || async {
        matches!(http_get(a_sock, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await;
    let first = eventually(Duration::from_secs(30), "a lease holder", || holder(&leases)).await;
    assert_eq!(first, "replica-a");

    let b = Process::understudy(&run_args(&ns, &b_addr, "replica-b"), "understudy-b");
    let b_sock = b_addr.parse().unwrap();
    eventually(Duration::from_secs(30), "replica-b ready", || async {
        matches!(http_get(b_sock, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await;
    // Several renew periods: b must stay passive while a renews.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(holder(&leases).await.as_deref(), Some("replica-a"));
    let (code, metrics) = http_get(b_sock, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("understudy_leader 0"), "standby reports leader 0:\n{metrics}");
    let (_, metrics) = http_get(a_sock, "/metrics").await.unwrap();
    assert!(metrics.contains("understudy_leader 1"), "leader reports leader 1:\n{metrics}");
    assert!(http_get(a_sock, "/healthz").await.unwrap().0 == 200);
    assert!(b.log().contains("waiting for leadership"), "{}", b.log());

    // The leader shuts down gracefully and hands the lease over; b takes over quickly.
    let status = a.terminate();
    assert!(status.success(), "leader exited with {status}: {}", a.log());
    assert!(a.log().contains("released leadership"), "{}", a.log());
    let t = std::time::Instant::now();
    let next = eventually(Duration::from_secs(30), "replica-b to lead", || async {
        holder(&leases).await.filter(|h| h == "replica-b")
    })
    .await;
    assert_eq!(next, "replica-b");
    eprintln!("standby took over {:.1}s after the leader released the lease", t.elapsed().as_secs_f64());
    let lease = leases.get("understudy-leader").await.unwrap();
    assert_eq!(lease.spec.unwrap().lease_transitions, Some(1));
}
