//! The install artefacts against the real API server: `deploy/` applied with kubectl, the Helm
//! chart (`charts/understudy`) linted, rendered and applied in both RBAC modes, their RBAC
//! checked rule by rule with SubjectAccessReviews, and the operator binary run with nothing but
//! the chart's ServiceAccount token to prove those rights are enough for it to do its job.
//!
//! helm comes from `tools/helm/build.sh` (built from the Go module proxy on first use, ~4 min
//! on 2 cores, cached afterwards), so these tests never skip.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::{Api, Client, api::PostParams};
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::support::{self, Process, RedisServer, SupervisedAgent, eventually};

const KINDS: [&str; 4] = ["haclusters", "failoverrequests", "shardfailovers", "protectiongroups"];
const STATUS: [&str; 4] =
    ["haclusters/status", "failoverrequests/status", "shardfailovers/status", "protectiongroups/status"];

/// Node conditions, read cluster-wide (a ClusterRole of its own, also with watchNamespaces).
const NODE_RULES: &[(&str, &[&str], &[&str])] = &[("", &["nodes"], &["get", "list", "watch"])];

/// Exactly what the operator may do (API group, resources, verbs); nothing else.
const OPERATOR_RULES: &[(&str, &[&str], &[&str])] = &[
    ("understudy.dev", &KINDS, &["get", "list", "watch", "patch"]),
    ("understudy.dev", &STATUS, &["get", "patch", "update"]),
    ("", &["secrets"], &["get"]),
    ("", &["services"], &["get", "create", "patch"]),
    ("understudy.dev", &["shardfailovers"], &["create"]),
    ("", &["pods"], &["get", "list", "watch", "create", "patch", "delete"]),
    ("", &["pods/resize"], &["patch"]),
    ("", &["persistentvolumeclaims"], &["get", "list", "watch", "create", "patch", "delete"]),
    ("policy", &["poddisruptionbudgets"], &["create"]),
    ("", &["events"], &["create", "patch"]),
    ("", &["endpoints"], &["get", "delete"]),
    ("events.k8s.io", &["events"], &["create", "patch"]),
    ("discovery.k8s.io", &["endpointslices"], &["get", "list", "create", "patch", "delete"]),
    ("networking.k8s.io", &["networkpolicies"], &["get", "create", "patch"]),
];
const LEASE_RULES: &[(&str, &[&str], &[&str])] =
    &[("coordination.k8s.io", &["leases"], &["get", "create", "update"])];
const VIEW_RULES: &[(&str, &[&str], &[&str])] = &[
    ("understudy.dev", &KINDS, &["get", "list", "watch"]),
    ("understudy.dev", &STATUS, &["get", "list", "watch"]),
];
const EDIT_RULES: &[(&str, &[&str], &[&str])] = &[
    (
        "understudy.dev",
        &KINDS,
        &["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"],
    ),
    ("understudy.dev", &STATUS, &["get", "list", "watch"]),
];
/// Verbs checked for being denied wherever a rule does not grant them.
const ALL_VERBS: [&str; 8] =
    ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"];

/// One permission: (API group, resource[/subresource], verb).
type Grant = (String, String, String);

fn table(rules: &[(&str, &[&str], &[&str])]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for (group, resources, verbs) in rules {
        for r in *resources {
            for v in *verbs {
                out.insert((group.to_string(), r.to_string(), v.to_string()));
            }
        }
    }
    out
}

/// The grants of a Role/ClusterRole's `rules`, failing on anything broader than a plain list:
/// wildcards, non-resource URLs, or rules restricted by name (which this table cannot express).
fn grants(role: &Value) -> BTreeSet<Grant> {
    let name = role["metadata"]["name"].as_str().unwrap_or("?");
    let strings = |v: &Value, field: &str| -> Vec<String> {
        v[field].as_array().unwrap_or(&vec![]).iter().map(|s| s.as_str().unwrap().to_owned()).collect()
    };
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap_or_else(|| panic!("{name} has no rules")) {
        assert!(rule.get("nonResourceURLs").is_none(), "{name}: nonResourceURLs in {rule}");
        assert!(rule.get("resourceNames").is_none(), "{name}: resourceNames in {rule}");
        let (groups, resources, verbs) =
            (strings(rule, "apiGroups"), strings(rule, "resources"), strings(rule, "verbs"));
        for s in groups.iter().chain(&resources).chain(&verbs) {
            assert!(!s.contains('*'), "{name}: wildcard {s:?} in {rule}");
        }
        for g in &groups {
            for r in &resources {
                for v in &verbs {
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("charts/understudy")
}

/// The pinned helm, built by tools/helm/build.sh on first use (never skipped).
fn helm() -> &'static Path {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    HELM.get_or_init(|| {
        // Progress and errors go straight to the terminal: the first build takes minutes.
        let out = Command::new(repo().join("tools/helm/build.sh"))
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("running tools/helm/build.sh");
        assert!(out.status.success(), "tools/helm/build.sh failed (its output is above)");
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(path.is_file(), "tools/helm/build.sh printed {path:?}, which is not a file");
        path
    })
}

/// Run helm; returns (success, stdout, stderr).
fn helm_result(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm()).args(args).output().expect("running helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn helm_ok(args: &[&str]) -> String {
    let (ok, out, err) = helm_result(args);
    assert!(ok, "helm {args:?} failed:\n{err}\n{out}");
    out
}

/// `helm template <release> charts/understudy -n <namespace> <extra...>`.
fn render(release: &str, namespace: &str, extra: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", release, chart.to_str().unwrap(), "--namespace", namespace];
    args.extend_from_slice(extra);
    helm_ok(&args)
}

/// Every non-empty document of a multi-document YAML stream.
fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn get<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    find(docs, kind, name).unwrap_or_else(|| {
        let have: Vec<String> =
            docs.iter().map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"])).collect();
        panic!("no {kind} {name} in {have:?}")
    })
}

/// Every Role and ClusterRole in `docs` is free of wildcards (checked by `grants`).
fn assert_no_wildcards(docs: &[Value]) {
    for d in docs.iter().filter(|d| d["kind"] == "Role" || d["kind"] == "ClusterRole") {
        grants(d);
    }
}

/// The operator container of a Deployment.
fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn args(deployment: &Value) -> Vec<&str> {
    container(deployment)["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect()
}

/// Write `yaml` to a temporary file and `kubectl <verb> -f` it (extra args after).
fn kubectl_file(verb: &str, yaml: &str, extra: &[&str]) -> (bool, String, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("understudy-deploy-{}-{n}.yaml", std::process::id()));
    std::fs::write(&path, yaml).unwrap();
    let mut args = vec![verb, "-f", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let r = support::kubectl_result(&args);
    let _ = std::fs::remove_file(&path);
    r
}

fn apply(yaml: &str) {
    let (ok, out, err) = kubectl_file("apply", yaml, &[]);
    assert!(ok, "kubectl apply of the rendered chart failed:\n{err}\n{out}");
}

/// Objects as the API server stored them (`kubectl get ... -o json`).
fn server_objects(args: &[&str]) -> Vec<Value> {
    let mut a = vec!["get"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let list: Value = serde_json::from_str(&support::kubectl(&a)).unwrap();
    match list["items"].as_array() {
        Some(items) => items.clone(),
        None => vec![list],
    }
}

/// Does the API server's RBAC authorizer let `user` do `verb` on `group`/`resource`
/// (`resource` may be `kind/subresource`) in `namespace` (None: cluster-wide)?
async fn allowed(client: &Client, user: &str, grant: &Grant, namespace: Option<&str>) -> bool {
    let (group, resource, verb) = grant;
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r.to_owned(), Some(s.to_owned())),
        None => (resource.clone(), None),
    };
    let sa_ns = user.split(':').nth(2).unwrap_or_default();
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{sa_ns}"),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.clone()),
                resource: Some(resource),
                subresource,
                verb: Some(verb.clone()),
                namespace: namespace.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let done = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview");
    done.status.map(|s| s.allowed).unwrap_or(false)
}

/// `user` may do exactly `granted` among `ALL_VERBS` on the resources `granted` mentions, in
/// `namespace` (None: cluster-wide, i.e. in every namespace).
async fn assert_exact_rights(
    client: &Client,
    user: &str,
    granted: &BTreeSet<Grant>,
    namespace: Option<&str>,
) {
    let resources: BTreeSet<(String, String)> =
        granted.iter().map(|(g, r, _)| (g.clone(), r.clone())).collect();
    let mut wrong = Vec::new();
    for (group, resource) in resources {
        for verb in ALL_VERBS {
            let grant = (group.clone(), resource.clone(), verb.to_owned());
            let want = granted.contains(&grant);
            if allowed(client, user, &grant, namespace).await != want {
                wrong.push(format!("{verb} {group}/{resource}: expected allowed={want}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{user} in {namespace:?}:\n{}", wrong.join("\n"));
}

/// `user` may do none of `grants` in `namespace`.
async fn assert_no_rights(client: &Client, user: &str, grants: &BTreeSet<Grant>, namespace: Option<&str>) {
    for g in grants {
        assert!(!allowed(client, user, g, namespace).await, "{user} may {g:?} in {namespace:?}");
    }
}

fn sa_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The Deployment's pod spec follows the restricted Pod Security Standard and runs `understudy`
/// with the Downward API env, the http port, probes and resources.
fn assert_operator_pod(d: &Value, service_account: &str) {
    let pod = &d["spec"]["template"]["spec"];
    let c = container(d);
    assert_eq!(pod["serviceAccountName"], service_account);
    assert_eq!(c["image"], "ghcr.io/understudy-dev/understudy:0.1.0");
    assert_eq!(c["command"], json!(["understudy"]));
    let env = c["env"].as_array().unwrap();
    for (name, path) in [("POD_NAMESPACE", "metadata.namespace"), ("POD_NAME", "metadata.name")] {
        assert!(
            env.iter().any(|e| e["name"] == name && e["valueFrom"]["fieldRef"]["fieldPath"] == path),
            "env {name} from {path}: {env:?}"
        );
    }
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(c["ports"][0]["containerPort"], 8080);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "http");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(c["resources"][k][r].is_string(), "resources.{k}.{r} missing: {}", c["resources"]);
        }
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
}

/// The aggregated roles for users: view and edit, aggregated into view / edit and admin.
fn assert_aggregated_roles(docs: &[Value], prefix: &str) {
    let view = get(docs, "ClusterRole", &format!("{prefix}-view"));
    assert_eq!(view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"], "true");
    assert_eq!(grants(view), table(VIEW_RULES));
    let edit = get(docs, "ClusterRole", &format!("{prefix}-edit"));
    let labels = &edit["metadata"]["labels"];
    assert_eq!(labels["rbac.authorization.k8s.io/aggregate-to-edit"], "true");
    assert_eq!(labels["rbac.authorization.k8s.io/aggregate-to-admin"], "true");
    assert_eq!(grants(edit), table(EDIT_RULES));
}

#[tokio::test]
async fn deploy_manifests_apply_and_grant_exactly_what_the_operator_needs() {
    let client = support::client().await;
    let dir = repo().join("deploy");
    // As a user would, after `kubectl apply -f crds/` (the fixture installed them).
    let out = support::kubectl(&["apply", "-f", dir.to_str().unwrap()]);
    for obj in [
        "namespace/understudy-system",
        "serviceaccount/understudy",
        "clusterrole.rbac.authorization.k8s.io/understudy",
        "clusterrolebinding.rbac.authorization.k8s.io/understudy",
        "role.rbac.authorization.k8s.io/understudy-leader-election",
        "rolebinding.rbac.authorization.k8s.io/understudy-leader-election",
        "clusterrole.rbac.authorization.k8s.io/understudy-view",
        "clusterrole.rbac.authorization.k8s.io/understudy-edit",
        "deployment.apps/understudy",
    ] {
        assert!(out.contains(obj), "kubectl apply -f deploy/ did not apply {obj}:\n{out}");
    }

    // What the API server stored.
    let mut objs = server_objects(&[
        "-n",
        "understudy-system",
        "deployment/understudy",
        "serviceaccount/understudy",
        "role/understudy-leader-election",
        "rolebinding/understudy-leader-election",
    ]);
    objs.extend(server_objects(&[
        "clusterrole/understudy",
        "clusterrolebinding/understudy",
        "clusterrole/understudy-nodes",
        "clusterrolebinding/understudy-nodes",
        "clusterrole/understudy-view",
        "clusterrole/understudy-edit",
    ]));
    assert_no_wildcards(&objs);
    assert_eq!(grants(get(&objs, "ClusterRole", "understudy")), table(OPERATOR_RULES));
    assert_eq!(grants(get(&objs, "ClusterRole", "understudy-nodes")), table(NODE_RULES));
    assert_eq!(grants(get(&objs, "Role", "understudy-leader-election")), table(LEASE_RULES));
    assert_aggregated_roles(&objs, "understudy");
    let subject = json!([{"kind": "ServiceAccount", "name": "understudy", "namespace": "understudy-system"}]);
    assert_eq!(get(&objs, "ClusterRoleBinding", "understudy")["subjects"], subject);
    assert_eq!(get(&objs, "ClusterRoleBinding", "understudy-nodes")["subjects"], subject);
    assert_eq!(get(&objs, "RoleBinding", "understudy-leader-election")["subjects"], subject);

    let d = get(&objs, "Deployment", "understudy");
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(args(d), ["run", "--leader-elect", "--log-format=json"]);
    assert_operator_pod(d, "understudy");

    // The authorizer agrees: exactly these rights, in any namespace; the Lease only at home.
    let sa = sa_user("understudy-system", "understudy");
    assert_exact_rights(&client, &sa, &table(OPERATOR_RULES), None).await;
    assert_exact_rights(&client, &sa, &table(OPERATOR_RULES), Some("default")).await;
    assert_exact_rights(&client, &sa, &table(NODE_RULES), None).await;
    assert_exact_rights(&client, &sa, &table(LEASE_RULES), Some("understudy-system")).await;
    assert_no_rights(&client, &sa, &table(LEASE_RULES), Some("default")).await;

    let (ok, _, err) = support::kubectl_result(&["delete", "-f", dir.to_str().unwrap(), "--wait=false"]);
    assert!(ok, "kubectl delete -f deploy/: {err}");
}

#[test]
fn helm_lint_passes_for_both_rbac_modes() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let out = helm_ok(&["lint", "--strict", chart]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let out = helm_ok(&[
        "lint",
        "--strict",
        chart,
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "leaderElection.enabled=false",
        "--set",
        "replicaCount=1",
        "--set",
        "logFormat=text",
    ]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
    // The values schema rejects what the operator would reject.
    let (ok, out, err) = helm_result(&["lint", chart, "--set", "logFormat=xml"]);
    assert!(!ok && out.contains("/logFormat"), "logFormat=xml accepted:\n{out}\n{err}");
}

#[test]
fn chart_crds_are_the_generated_crds() {
    let list = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let generated = support::crds_dir();
    let copied = chart().join("crds");
    let fix = "regenerate with `understudy crds --dir crds` and copy: cp crds/*.yaml charts/understudy/crds/";
    assert_eq!(list(&generated), list(&copied), "charts/understudy/crds differs from crds/; {fix}");
    for name in list(&generated) {
        let a = std::fs::read(generated.join(&name)).unwrap();
        let b = std::fs::read(copied.join(&name)).unwrap();
        assert!(a == b, "charts/understudy/crds/{name} differs from crds/{name}; {fix}");
    }
}

#[tokio::test]
async fn helm_chart_by_default_installs_cluster_wide_with_leader_election() {
    let client = support::client().await;
    let ns = support::namespace(&client, "helm-cw").await;
    let yaml = render("cw", &ns, &[]);
    let objs = docs(&yaml);
    assert_no_wildcards(&objs);
    assert_eq!(grants(get(&objs, "ClusterRole", "cw-understudy")), table(OPERATOR_RULES));
    assert_eq!(grants(get(&objs, "ClusterRole", &format!("cw-understudy-{ns}-nodes"))), table(NODE_RULES));
    assert_eq!(grants(get(&objs, "Role", "cw-understudy-leader-election")), table(LEASE_RULES));
    assert_aggregated_roles(&objs, "cw-understudy");
    assert!(
        objs.iter().all(|o| o["kind"] != "Role" || o["metadata"]["namespace"] == ns.as_str()),
        "namespaced Roles outside the release namespace without watchNamespaces"
    );
    let svc = get(&objs, "Service", "cw-understudy-metrics");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    let d = get(&objs, "Deployment", "cw-understudy");
    assert_eq!(d["metadata"]["namespace"], ns.as_str());
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(args(d), ["run", "--leader-elect", "--log-format=json"]);
    assert_operator_pod(d, "cw-understudy");
    // The two rights that are off by default come with their flags when turned on.
    let opted = docs(&render(
        "cw",
        &ns,
        &["--set", "allowWorkloadRestarts=true", "--set", "allowClientAddress=true"],
    ));
    let mut with_restarts = table(OPERATOR_RULES);
    with_restarts.extend(table(&[(
        "apps",
        &["deployments", "statefulsets", "daemonsets"],
        &["get", "patch"],
    )]));
    assert_eq!(grants(get(&opted, "ClusterRole", "cw-understudy")), with_restarts);
    assert_eq!(
        args(get(&opted, "Deployment", "cw-understudy")),
        ["run", "--leader-elect", "--log-format=json", "--allow-client-address", "--allow-workload-restarts"]
    );

    // ConfigMap writes only where redirects are configured: by default nowhere (above); with
    // "*" everywhere the operator works; with a list, a Role granting exactly that in each
    // listed namespace, bound to the operator, and nothing cluster-wide.
    let cm = table(&[("", &["configmaps"], &["get", "create", "patch"])]);
    let everywhere = docs(&render("cw", &ns, &["--set", "redirectNamespaces={*}"]));
    assert_eq!(
        grants(get(&everywhere, "ClusterRole", "cw-understudy")),
        table(OPERATOR_RULES).union(&cm).cloned().collect()
    );
    assert!(everywhere.iter().all(|o| o["metadata"]["name"] != "cw-understudy-redirect"));
    let narrowed = docs(&render("cw", &ns, &["--set", "redirectNamespaces={team-a,team-b}"]));
    assert_eq!(grants(get(&narrowed, "ClusterRole", "cw-understudy")), table(OPERATOR_RULES));
    for team in ["team-a", "team-b"] {
        let redirect = |kind: &str| {
            narrowed
                .iter()
                .find(|o| {
                    o["kind"] == kind
                        && o["metadata"]["name"] == "cw-understudy-redirect"
                        && o["metadata"]["namespace"] == team
                })
                .unwrap_or_else(|| panic!("no redirect {kind} in {team}"))
        };
        assert_eq!(grants(redirect("Role")), cm);
        let binding = redirect("RoleBinding");
        assert_eq!(binding["roleRef"]["name"], "cw-understudy-redirect");
        assert_eq!(binding["subjects"][0]["name"], "cw-understudy");
    }

    // The CRDs the chart installs are the generated ones; the API server accepts them.
    let with_crds = docs(&render("cw", &ns, &["--include-crds"]));
    for f in std::fs::read_dir(support::crds_dir()).unwrap() {
        let crd = &docs(&std::fs::read_to_string(f.unwrap().path()).unwrap())[0];
        let name = crd["metadata"]["name"].as_str().unwrap();
        assert_eq!(get(&with_crds, "CustomResourceDefinition", name), crd);
    }

    apply(&yaml);
    let stored =
        server_objects(&["-n", &ns, "deployment/cw-understudy", "role/cw-understudy-leader-election"]);
    assert_eq!(
        args(get(&stored, "Deployment", "cw-understudy")),
        ["run", "--leader-elect", "--log-format=json"]
    );
    let sa = sa_user(&ns, "cw-understudy");
    assert_exact_rights(&client, &sa, &table(OPERATOR_RULES), None).await;
    assert_exact_rights(&client, &sa, &table(LEASE_RULES), Some(&ns)).await;
    assert_no_rights(&client, &sa, &table(LEASE_RULES), Some("default")).await;

    let (ok, _, err) = kubectl_file("delete", &yaml, &["--wait=false"]);
    assert!(ok, "deleting the release: {err}");
}

#[tokio::test]
async fn helm_chart_with_watch_namespaces_grants_rights_only_there() {
    let client = support::client().await;
    let ns = support::namespace(&client, "helm-ns").await;
    let (w1, w2) = (support::namespace(&client, "helm-w").await, support::namespace(&client, "helm-w").await);
    let watch = format!("watchNamespaces={{{w1},{w2}}}");
    let set = ["--set", &watch, "--set", "leaderElection.enabled=false"];

    // Two replicas without leader election would both act: the chart refuses.
    let chart = chart();
    let (ok, _, err) = helm_result(
        &[&["template", "nsd", chart.to_str().unwrap(), "--namespace", &ns][..], &set[..]].concat(),
    );
    assert!(!ok && err.contains("leaderElection.enabled"), "replicaCount 2 without leader election: {err}");

    let yaml =
        render("nsd", &ns, &[&set[..], &["--set", "replicaCount=1", "--set", "logFormat=text"]].concat());
    let objs = docs(&yaml);
    assert_no_wildcards(&objs);
    assert!(
        find(&objs, "ClusterRole", "nsd-understudy").is_none(),
        "cluster-wide operator role with watchNamespaces"
    );
    assert!(find(&objs, "ClusterRoleBinding", "nsd-understudy").is_none());
    assert_eq!(grants(get(&objs, "ClusterRole", &format!("nsd-understudy-{ns}-nodes"))), table(NODE_RULES));
    assert!(
        find(&objs, "Role", "nsd-understudy-leader-election").is_none(),
        "lease Role without leader election"
    );
    for w in [&w1, &w2] {
        let role = objs
            .iter()
            .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == w.as_str())
            .unwrap_or_else(|| panic!("no Role in {w}"));
        assert_eq!(grants(role), table(OPERATOR_RULES));
        let binding = objs
            .iter()
            .find(|o| o["kind"] == "RoleBinding" && o["metadata"]["namespace"] == w.as_str())
            .unwrap_or_else(|| panic!("no RoleBinding in {w}"));
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "nsd-understudy", "namespace": ns}])
        );
    }
    assert_aggregated_roles(&objs, "nsd-understudy");
    let d = get(&objs, "Deployment", "nsd-understudy");
    assert_eq!(d["spec"]["replicas"], 1);
    let a = args(d);
    assert_eq!(a, ["run".to_owned(), "--log-format=text".into(), format!("--namespaces={w1},{w2}")]);
    assert!(!a.contains(&"--leader-elect"));
    assert_operator_pod(d, "nsd-understudy");

    apply(&yaml);
    let stored = server_objects(&["-n", &ns, "deployment/nsd-understudy"]);
    assert_eq!(args(&stored[0]), a);
    server_objects(&["-n", &w1, "role/nsd-understudy", "rolebinding/nsd-understudy"]);
    let sa = sa_user(&ns, "nsd-understudy");
    assert_exact_rights(&client, &sa, &table(OPERATOR_RULES), Some(&w1)).await;
    assert_exact_rights(&client, &sa, &table(OPERATOR_RULES), Some(&w2)).await;
    assert_no_rights(&client, &sa, &table(OPERATOR_RULES), Some(&ns)).await;
    assert_no_rights(&client, &sa, &table(OPERATOR_RULES), Some("default")).await;
    assert_no_rights(&client, &sa, &table(OPERATOR_RULES), None).await;
    assert_exact_rights(&client, &sa, &table(NODE_RULES), None).await;
    assert_no_rights(&client, &sa, &table(LEASE_RULES), Some(&ns)).await;

    let (ok, _, err) = kubectl_file("delete", &yaml, &["--wait=false"]);
    assert!(ok, "deleting the release: {err}");
}

/// Shows the operator's log in the test output if the test fails while it runs.
struct DumpLogOnPanic<'a>(&'a Process);

impl Drop for DumpLogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- operator log ({}):\n{}", self.0.log.display(), self.0.log());
        }
    }
}

/// A kubeconfig for the shared control plane that authenticates with `token` only.
fn token_kubeconfig(token: &str, name: &str) -> PathBuf {
    let admin = std::fs::read_to_string(&support::shared().kubeconfig).unwrap();
    let mut cfg: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
    for user in cfg["users"].as_sequence_mut().unwrap() {
        user["user"] = serde_yaml::from_str(&format!("token: {token}")).unwrap();
    }
    let path = std::env::temp_dir().join(format!("understudy-{name}-{}.kubeconfig", std::process::id()));
    std::fs::write(&path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    path
}

/// The operator binary, run with the chart's command line and nothing but its ServiceAccount's
/// token, bootstraps a real Redis HaCluster in a watched namespace: the chart's RBAC suffices.
#[tokio::test]
async fn operator_does_its_job_with_only_the_charts_rbac() {
    const WAIT: Duration = Duration::from_secs(60);
    let client = support::client().await;
    let ns = support::namespace(&client, "helm-e2e").await;
    let watched = support::namespace(&client, "helm-e2e-w").await;
    let watch = format!("watchNamespaces={{{watched}}}");
    let yaml = render("e2e", &ns, &["--set", &watch, "--set", "logFormat=text"]);
    apply(&yaml);
    let deployment = get(&docs(&yaml), "Deployment", "e2e-understudy").clone();

    let token = support::kubectl(&["create", "token", "e2e-understudy", "-n", &ns, "--duration=1h"]);
    let kubeconfig = token_kubeconfig(token.trim(), "e2e");
    // The token is the ServiceAccount's: it is refused outside the watched namespace.
    let denied = Command::new(&support::shared().kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "haclusters", "-n", "default"])
        .output()
        .unwrap();
    assert!(!denied.status.success(), "the chart's ServiceAccount may read haclusters in default");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("forbidden"));

    let servers = [RedisServer::start(None), RedisServer::start(None)];
    let members: Vec<Value> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"name": format!("m{i}"), "endpoint": s.endpoint(),
                   "clientAddress": format!("10.78.{}.{}", s.port >> 8, s.port & 0xff)})
        })
        .collect();
    let cluster = json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": "cache", "namespace": watched},
        "spec": {"engine": "Redis", "shards": [{"name": "s0", "members": members}],
                 "failover": {"heartbeatInterval": "200ms"}},
    });
    apply(&cluster.to_string());

    // The rendered Deployment's command line, as its pod would run it (Downward API env).
    let port = understudy::controlplane::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_understudy"));
    cmd.args(args(&deployment))
        .args(["--listen", &listen])
        .env("KUBECONFIG", &kubeconfig)
        .env("POD_NAMESPACE", &ns)
        .env("POD_NAME", "e2e-understudy-0")
        .env("RUST_LOG", "info,understudy=debug");
    let log = std::env::temp_dir().join(format!("understudy-e2e-{}.log", std::process::id()));
    let child = understudy::controlplane::spawn(cmd, &log).expect("start understudy");
    let operator = Process { child, log: log.clone() };
    let dump = DumpLogOnPanic(&operator);

    let lease = || support::kubectl_result(&["get", "lease", "understudy-leader", "-n", &ns, "-o", "json"]);
    let holder = eventually(WAIT, "the Lease in the release namespace", || async {
        let (ok, out, _) = lease();
        ok.then(|| serde_json::from_str::<Value>(&out).ok()).flatten()?["spec"]["holderIdentity"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert_eq!(holder, "e2e-understudy-0");

    let status = eventually(WAIT, "HaCluster cache Healthy with a primary", || async {
        let (ok, out, _) =
            support::kubectl_result(&["get", "hacluster", "cache", "-n", &watched, "-o", "json"]);
        let c: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        let st = c["status"].clone();
        (st["phase"] == "Healthy" && st["shards"][0]["currentPrimary"].is_string()).then_some(st)
    })
    .await;
    // Routing: the operator created the primary Service (and its EndpointSlice).
    eventually(WAIT, "Service cache-primary", || async {
        support::kubectl_result(&["get", "service", "cache-primary", "-n", &watched]).0.then_some(())
    })
    .await;
    // The chart does not allow clientAddress by default: the operator says it ignores it.
    eventually(WAIT, "Routed=False ClientAddressNotAllowed", || async {
        let (ok, out, _) =
            support::kubectl_result(&["get", "hacluster", "cache", "-n", &watched, "-o", "json"]);
        let c: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        c["status"]["conditions"].as_array()?.iter().find(|c| {
            c["type"] == "Routed" && c["status"] == "False" && c["reason"] == "ClientAddressNotAllowed"
        })?;
        Some(())
    })
    .await;
    assert!(!operator.log().to_lowercase().contains("forbidden"), "the operator was refused something");

    // An agent cluster with a redirect: the chart grants no ConfigMap writes by default, so the
    // cluster elects its main all the same and says why replicas are not told.
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "agent-token", "namespace": watched}, "stringData": {"token": "t0ken"}});
    apply(&secret.to_string());
    let agents = [SupervisedAgent::start("127.0.0.1", "t0ken"), SupervisedAgent::start("127.0.0.1", "t0ken")];
    let agent_cluster = json!({
        "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
        "metadata": {"name": "app", "namespace": watched},
        "spec": {"engine": "Agent", "secretRef": {"name": "agent-token"},
                 "shards": [{"name": "main", "members": agents.iter().enumerate()
                     .map(|(i, a)| json!({"name": format!("n{i}"), "endpoint": a.addr.to_string()})).collect::<Vec<_>>()}],
                 "failover": {"heartbeatInterval": "200ms"},
                 "redirect": {"configMap": "app-config"}},
    });
    apply(&agent_cluster.to_string());
    let message = eventually(WAIT, "Routed=False RedirectFailed with a main", || async {
        let (ok, out, _) =
            support::kubectl_result(&["get", "hacluster", "app", "-n", &watched, "-o", "json"]);
        let c: Value = serde_json::from_str(&out).ok().filter(|_| ok)?;
        c["status"]["shards"][0]["currentPrimary"].as_str()?;
        let cond = c["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Routed" && c["status"] == "False" && c["reason"] == "RedirectFailed")?;
        cond["message"].as_str().map(str::to_owned)
    })
    .await;
    assert!(message.contains("app-config") && message.contains("redirectNamespaces"), "{message}");
    let cms = support::kubectl_result(&["get", "configmap", "app-config", "-n", &watched]);
    assert!(!cms.0, "the ConfigMap was written without the right to");
    for line in operator.log().lines().filter(|l| l.to_lowercase().contains("forbidden")) {
        assert!(line.contains("configmaps"), "refused something other than the redirect ConfigMap: {line}");
    }
    drop(agents);
    drop(dump);
    drop(operator);
    let _ = std::fs::remove_file(&log);
    assert!(status["shards"][0]["members"].as_array().is_some_and(|m| m.len() == 2), "{status}");

    let _ = std::fs::remove_file(&kubeconfig);
    let (ok, _, err) = kubectl_file("delete", &yaml, &["--wait=false"]);
    assert!(ok, "deleting the release: {err}");
}

/// The image tag users get by default follows the crate version: the chart's appVersion (its
/// default tag), deploy/'s Deployment, and tools/image.sh / the Dockerfile's name for it.
#[test]
fn default_image_tags_follow_the_crate_version() {
    let version = env!("CARGO_PKG_VERSION");
    let chart = std::fs::read_to_string(repo().join("charts/understudy/Chart.yaml")).unwrap();
    assert!(chart.contains(&format!("appVersion: \"{version}\"")), "Chart.yaml appVersion is not {version}");
    let deployment = std::fs::read_to_string(repo().join("deploy/03-deployment.yaml")).unwrap();
    assert!(
        deployment.contains(&format!("image: ghcr.io/understudy-dev/understudy:{version}")),
        "deploy/03-deployment.yaml does not run ghcr.io/understudy-dev/understudy:{version}"
    );
    let values = std::fs::read_to_string(repo().join("charts/understudy/values.yaml")).unwrap();
    assert!(values.contains("repository: ghcr.io/understudy-dev/understudy"));
    let image_sh = std::fs::read_to_string(repo().join("tools/image.sh")).unwrap();
    assert!(image_sh.contains("ghcr.io/understudy-dev/understudy:$version"));
}

/// Discovery in the chart: off by default; on, it needs its namespaces and an explicit choice
/// about authentication, mounts the password from the user's Secret (never a value in the
/// chart) and puts a Service in front of every replica.
#[test]
fn chart_serves_discovery_only_when_configured_completely() {
    let plain = docs(&render("r", "ops", &[]));
    assert!(find(&plain, "Service", "r-understudy-sentinel").is_none());
    let args = get(&plain, "Deployment", "r-understudy")["spec"]["template"]["spec"]["containers"][0]["args"]
        .clone();
    assert!(!format!("{args:?}").contains("sentinel"), "{args:?}");

    let chart = chart();
    for (extra, says) in [
        (&["--set", "sentinel.enabled=true", "--set", "sentinel.auth.none=true"][..], "sentinel.namespaces"),
        (
            &["--set", "sentinel.enabled=true", "--set-json", "sentinel.namespaces=[\"*\"]"][..],
            "exactly one of",
        ),
        (
            &[
                "--set",
                "sentinel.enabled=true",
                "--set-json",
                "sentinel.namespaces=[\"*\"]",
                "--set",
                "sentinel.auth.none=true",
                "--set",
                "sentinel.auth.existingSecret=s",
            ][..],
            "exactly one of",
        ),
    ] {
        let mut args = vec!["template", "r", chart.to_str().unwrap(), "--namespace", "ops"];
        args.extend_from_slice(extra);
        let (ok, _, err) = helm_result(&args);
        assert!(!ok && err.contains(says), "{extra:?}: {err}");
    }

    let on = docs(&render(
        "r",
        "ops",
        &[
            "--set",
            "sentinel.enabled=true",
            "--set-json",
            "sentinel.namespaces=[\"apps\",\"cache\"]",
            "--set",
            "sentinel.auth.existingSecret=discovery",
        ],
    ));
    let pod = &get(&on, "Deployment", "r-understudy")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    for want in [
        "--sentinel-listen=0.0.0.0:26379",
        "--sentinel-namespaces=apps,cache",
        "--sentinel-password-file=/etc/understudy/sentinel/password",
    ] {
        assert!(args.contains(&want), "{want} not in {args:?}");
    }
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "discovery");
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/understudy/sentinel");
    let svc = get(&on, "Service", "r-understudy-sentinel");
    assert_eq!(svc["spec"]["ports"][0]["port"], 26379);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "sentinel");
}
