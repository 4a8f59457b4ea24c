//! `helm install` of charts/understudy with the image built from this checkout: the operator
//! runs as two non-root pods with only the chart's RBAC, one leads; an upgrade to a new tag
//! never has two leaders acting; uninstall keeps the CRDs and the users' objects.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease, core::v1::Pod};
use kube::{Api, Client};
use understudy::resources::HaCluster;

use crate::support::{self, TestNs, eventually, is_ready, pod_ip, pods};

const WAIT: Duration = Duration::from_secs(120);
const OPERATOR: &str = "app.kubernetes.io/name=understudy";

/// `understudy_leader` of one operator pod, read from its /metrics through the pod network.
async fn leader_gauge(ip: &str) -> Option<u8> {
    let addr: std::net::SocketAddr = format!("{ip}:8080").parse().ok()?;
    let (code, body) =
        tokio::time::timeout(Duration::from_millis(500), http_get(addr, "/metrics")).await.ok()?.ok()?;
    if code != 200 {
        return None;
    }
    body.lines().find_map(|l| l.strip_prefix("understudy_leader ")).and_then(|v| v.trim().parse().ok())
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await?;
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// How many operator pods report `understudy_leader 1` right now.
async fn leaders(client: &Client, ns: &str) -> usize {
    let ips: Vec<String> = pods(client, ns, OPERATOR).await.iter().filter_map(pod_ip).collect();
    futures::future::join_all(ips.iter().map(|ip| leader_gauge(ip)))
        .await
        .into_iter()
        .filter(|g| *g == Some(1))
        .count()
}

fn uid_of(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_the_image_as_non_root_pods_with_one_leader_and_upgrades_without_two() {
    let Some(node) = support::node() else { return };
    let _shared = support::SHARED_NODE.read().await;
    let client = node.client().await.expect("client");
    let ns = TestNs::new(node, &client, "install").await;
    node.install_operator(&ns.name, &[]).unwrap();

    // `helm install --wait` returned: the Deployment is Available with both replicas Ready,
    // which /readyz grants only once the Lease was read (leader or standby) and, on the
    // leader, every cache has synced.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = deployments.get("understudy").await.unwrap();
    let st = d.status.clone().unwrap();
    assert_eq!(st.ready_replicas, Some(2), "{st:?}");
    assert!(
        st.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Available" && c.status == "True"),
        "Deployment Available"
    );
    let running = pods(&client, &ns.name, OPERATOR).await;
    assert_eq!(running.len(), 2);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns.name);
    let holder = eventually(WAIT, "a Lease holder", || async {
        leases.get("understudy-leader").await.ok()?.spec?.holder_identity
    })
    .await;
    let names: Vec<String> = running.iter().filter_map(|p| p.metadata.name.clone()).collect();
    assert!(names.contains(&holder), "the Lease is held by {holder}, not one of the pods {names:?}");
    eventually(WAIT, "exactly one pod reporting understudy_leader 1", || async {
        (leaders(&client, &ns.name).await == 1).then_some(())
    })
    .await;

    for p in &running {
        assert!(is_ready(p));
        let spec = p.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("understudy"), "its own ServiceAccount");
        let status = p.status.as_ref().unwrap();
        let cid = status.container_statuses.as_ref().unwrap()[0].container_id.clone().unwrap();
        let image = &status.container_statuses.as_ref().unwrap()[0].image;
        assert!(image.ends_with(&node.operator_image), "runs {image}, not {}", node.operator_image);
        // The process itself, as the kernel sees it: user 65532, not root.
        let pid = node.container_pid(&cid).unwrap();
        let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert_eq!(uid_of(&proc_status), Some(65532), "operator process uid:\n{proc_status}");
    }
    // Only the chart's RBAC: in watchNamespaces mode the ServiceAccount may work on HaClusters
    // in its namespace and read no Secret anywhere else.
    let sa = format!("--as=system:serviceaccount:{}:understudy", ns.name);
    let can = |args: &[&str]| {
        node.run(&node.kubectl, &[&["auth", "can-i"], args, &[sa.as_str()]].concat()).1.trim().to_owned()
    };
    assert_eq!(can(&["patch", "haclusters.understudy.dev/status", "-n", &ns.name]), "yes");
    assert_eq!(can(&["list", "secrets", "-n", "default"]), "no");
    // Secrets are read by name only, also where it works.
    assert_eq!(can(&["list", "secrets", "-n", &ns.name]), "no");
    assert_eq!(can(&["watch", "secrets", "-n", &ns.name]), "no");
    assert_eq!(can(&["list", "secrets", "--all-namespaces"]), "no");
    assert_eq!(can(&["delete", "pods", "-n", "kube-system"]), "no");
    // The pods act with that RBAC alone: the leader's log shows the controllers running
    // without a single forbidden request.
    let (_, logs, _) = node.run(&node.kubectl, &["-n", &ns.name, "logs", &holder]);
    assert!(logs.contains("acquired leadership"), "leader log:\n{logs}");
    assert!(!logs.contains("forbidden"), "the operator hit an RBAC denial:\n{logs}");

    // An HaCluster (a user's object) survives everything below.
    node.apply(&ns.name, &crate::redis_pods::haclusterlike("kept")).unwrap();

    // helm upgrade to a new tag (the same image under another name): a rolling update that
    // hands the Lease over. Sample every operator pod's leader gauge meanwhile.
    let next = format!("{}-next", env!("CARGO_PKG_VERSION"));
    node.tag_image(&node.operator_image, &format!("ghcr.io/understudy-dev/understudy:{next}")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (max, rounds) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sampler = {
        let (stop, max, rounds, client, ns) =
            (stop.clone(), max.clone(), rounds.clone(), client.clone(), ns.name.clone());
        tokio::spawn(async move {
            while !stop.load(SeqCst) {
                max.fetch_max(leaders(&client, &ns).await, SeqCst);
                rounds.fetch_add(1, SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let tag = format!("image.tag={next}");
    node.operator_release("upgrade", &ns.name, &["--set", &tag]).unwrap();
    eventually(WAIT, "both operator pods on the new tag and one leader", || async {
        let ps = pods(&client, &ns.name, OPERATOR).await;
        let upgraded = ps.len() == 2
            && ps.iter().all(|p: &Pod| {
                is_ready(p)
                    && p.spec
                        .as_ref()
                        .is_some_and(|s| s.containers[0].image.as_deref().is_some_and(|i| i.ends_with(&next)))
            });
        (upgraded && leaders(&client, &ns.name).await == 1).then_some(())
    })
    .await;
    stop.store(true, SeqCst);
    sampler.await.unwrap();
    eprintln!(
        "upgrade: {} leader samples, at most {} leader(s) at once",
        rounds.load(SeqCst),
        max.load(SeqCst)
    );
    assert!(rounds.load(SeqCst) > 10, "the leader sampler ran {} rounds", rounds.load(SeqCst));
    assert_eq!(max.load(SeqCst), 1, "two operator pods acted as leader at once during the upgrade");

    // helm uninstall: the operator goes, the CRDs and the HaCluster stay.
    node.helm(&["uninstall", "understudy", "-n", &ns.name, "--wait", "--timeout", "60s"]).unwrap();
    eventually(WAIT, "operator pods gone", || async {
        pods(&client, &ns.name, OPERATOR).await.is_empty().then_some(())
    })
    .await;
    node.kubectl(&["get", "crd", "haclusters.understudy.dev", "shardfailovers.understudy.dev"]).unwrap();
    let hacs: Api<HaCluster> = Api::namespaced(client.clone(), &ns.name);
    assert!(hacs.get("kept").await.is_ok(), "the HaCluster survived helm uninstall");
}
