//! Where clients are sent: the primary and replicas Services (selector-less, with
//! EndpointSlices the operator owns, for static members) and, for agent engines, the redirect
//! ConfigMap plus a rollout restart of the consumer workloads.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::{LazyLock, Mutex},
};

use k8s_openapi::{
    api::{
        core::v1::{ConfigMap, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;

use super::MANAGER;
use crate::{
    core::redirect,
    engines::split_endpoint,
    resources::{
        HaCluster,
        hacluster::{Redirect, WorkloadKind},
    },
};

pub const CLUSTER_LABEL: &str = crate::resources::instances::CLUSTER_LABEL;
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "understudy.dev";
/// Name of the Service port and EndpointSlice port.
pub const PORT_NAME: &str = "main";

/// The desired routing of one cluster: the Service name → endpoints (`host:port`) it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routes {
    pub services: BTreeMap<String, Vec<String>>,
    /// The Services' port while they have no endpoint to take it from (pod members: the
    /// selector's port). Without it, 6379.
    pub port: Option<u16>,
}

/// Annotation on an HaCluster listing (comma-separated) further Services that route to its
/// primaries, like the primary Service: a FailoverRequest's `serviceName` is added here, so
/// that it follows every later failover rather than going stale. Remove a name here before
/// deleting its Service, or the monitor recreates it.
pub const PRIMARY_ALIASES: &str = "understudy.dev/primary-aliases";

/// The valid names of [`PRIMARY_ALIASES`] (DNS labels), sorted, without the cluster's own
/// Services.
pub fn primary_aliases(cluster: &HaCluster) -> BTreeSet<String> {
    let own = [primary_service_name(cluster), replicas_service_name(cluster)];
    cluster
        .annotations()
        .get(PRIMARY_ALIASES)
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| is_dns_label(n) && !own.iter().any(|o| o == n))
        .map(str::to_owned)
        .collect()
}

fn is_dns_label(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && n.as_bytes()[0].is_ascii_lowercase()
        && !n.ends_with('-')
}

/// Add `service` to the cluster's [`PRIMARY_ALIASES`] (a metadata patch: the spec a GitOps
/// tool applies is not touched).
pub async fn add_primary_alias(
    clusters: &Api<HaCluster>,
    cluster: &HaCluster,
    service: &str,
) -> Result<(), kube::Error> {
    let mut names = primary_aliases(cluster);
    if !names.insert(service.to_owned()) {
        return Ok(());
    }
    let value = names.into_iter().collect::<Vec<_>>().join(",");
    let patch = json!({"metadata": {"annotations": {PRIMARY_ALIASES: value}}});
    clusters.patch(&cluster.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}

pub fn primary_service_name(cluster: &HaCluster) -> String {
    cluster.spec.routing.primary_service.clone().unwrap_or_else(|| format!("{}-primary", cluster.name_any()))
}

pub fn replicas_service_name(cluster: &HaCluster) -> String {
    cluster
        .spec
        .routing
        .replicas_service
        .clone()
        .unwrap_or_else(|| format!("{}-replicas", cluster.name_any()))
}

/// Routes for static members: primaries of every shard behind the primary Service, healthy
/// replicas behind the replicas Service.
pub fn desired_routes(cluster: &HaCluster, primaries: &[String], replicas: &[String]) -> Routes {
    let mut services = BTreeMap::new();
    if cluster.spec.routing.enabled {
        services.insert(primary_service_name(cluster), primaries.to_vec());
        services.insert(replicas_service_name(cluster), replicas.to_vec());
        for alias in primary_aliases(cluster) {
            services.insert(alias, primaries.to_vec());
        }
    }
    let port = cluster.pod_membership().and_then(|s| u16::try_from(s.port).ok());
    Routes { services, port }
}

/// The EndpointSlice address type for a host, or None if Kubernetes would reject it
/// (loopback, link-local, unspecified).
pub fn address_type(host: &str) -> Option<&'static str> {
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() => None,
        Ok(IpAddr::V4(v4)) if v4.is_link_local() => None,
        Ok(IpAddr::V4(_)) => Some("IPv4"),
        Ok(IpAddr::V6(_)) => Some("IPv6"),
        // Kubernetes wants at least two DNS labels in an FQDN endpoint.
        Err(_) if host.contains('.') => Some("FQDN"),
        Err(_) => None,
    }
}

fn slice_name(service: &str, address_type: &str, port: u16) -> String {
    format!("{service}-{}-{port}", address_type.to_ascii_lowercase())
}

/// What a routing write left undone, for the caller to report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Endpoints Kubernetes would reject (loopback, link-local): left out of the Services.
    pub rejected: Vec<String>,
    /// Objects routing needs whose name is taken by an object this cluster does not own:
    /// left alone, with why.
    pub conflicts: Vec<String>,
    /// The Services among them (their EndpointSlices are not ours to touch either).
    pub unowned_services: BTreeSet<String>,
}

/// (kind, namespace, name, owner uid).
type OwnedKey = (String, String, String, String);

/// Objects this operator created or found owned by the cluster, by (kind, namespace, name):
/// their uid, sent with every later apply as a precondition (the API server refuses an
/// apply whose uid is not the object's, and does not create one), so that an object deleted
/// and recreated by someone else is looked at again rather than taken over.
static OWNED: LazyLock<Mutex<HashMap<OwnedKey, String>>> = LazyLock::new(Default::default);

/// Server-side apply `obj` (a `K` named `name` in `ns`) only if the object does not exist
/// (it is created) or an owner reference names `owner_uid`. `Ok(Err(why))` when the name
/// is taken by an object someone else owns: nothing is written.
async fn apply_owned<K>(
    api: &Api<K>,
    ns: &str,
    name: &str,
    mut obj: serde_json::Value,
    owner_uid: &str,
) -> Result<Result<(), String>, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let kind = K::kind(&()).into_owned();
    // Keyed by owner too: another cluster naming the same object must look for itself.
    let key = (kind.clone(), ns.to_owned(), name.to_owned(), owner_uid.to_owned());
    let pp = PatchParams::apply(MANAGER).force();
    let cached = OWNED.lock().expect("owned lock").get(&key).cloned();
    if let Some(uid) = cached {
        obj["metadata"]["uid"] = json!(uid);
        match api.patch(name, &pp, &Patch::Apply(&obj)).await {
            Ok(_) => return Ok(Ok(())),
            // Gone, or another object under the name now (uid mismatch): look again.
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => {
                OWNED.lock().expect("owned lock").remove(&key);
            }
            Err(e) => return Err(e),
        }
    }
    // Looked at again: the uid precondition of the cached attempt no longer applies.
    if let Some(meta) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("uid");
    }
    let applied = match api.get_opt(name).await? {
        Some(existing) if !existing.owner_references().iter().any(|o| o.uid == owner_uid) => {
            return Ok(Err(format!(
                "{kind} {name} exists and is not owned by this HaCluster; left alone (delete or rename it, or choose another name)"
            )));
        }
        Some(existing) => {
            obj["metadata"]["uid"] = json!(existing.uid());
            api.patch(name, &pp, &Patch::Apply(&obj)).await?
        }
        // Created by the apply (server-side apply again, so that later applies own every field
        // they set: a POST would leave its fields to an "Update" manager, and list entries the
        // applies then change would be duplicated). An object someone creates between the
        // read and this write would be applied over: a window of one round trip, once.
        None => api.patch(name, &pp, &Patch::Apply(&obj)).await?,
    };
    if let Some(uid) = applied.uid() {
        OWNED.lock().expect("owned lock").insert(key, uid);
    }
    Ok(Ok(()))
}

/// Whether `obj` names `cluster` as an owner.
pub fn owned_by<K: Resource>(obj: &K, cluster: &HaCluster) -> bool {
    let uid = cluster.uid().unwrap_or_default();
    obj.owner_references().iter().any(|o| o.uid == uid)
}

/// Server-side apply the Services and EndpointSlices of `routes`, and delete slices of this
/// cluster that are no longer wanted. Endpoints Kubernetes would reject are skipped; names
/// taken by objects the cluster does not own are left alone; both are returned so the caller
/// can report them.
///
/// Clients wait on this write during a switchover, so the slices of Services already known to
/// be this cluster's go first, the primary Service's before the others (measured in `bench
/// lifecycle`: a Service apply before each slice was a third of the switchover's pause). The
/// Services are applied after them, which also finds one deleted or taken over meanwhile;
/// a slice written early for a Service found taken is deleted again.
pub async fn apply_routes(
    client: &Client,
    cluster: &HaCluster,
    routes: &Routes,
) -> Result<Applied, kube::Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let owner_uid = cluster.uid().unwrap_or_default();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let mut rejected = Vec::new();
    let mut conflicts = Vec::new();
    let mut unowned_services = BTreeSet::new();
    let primary = primary_service_name(cluster);
    let mut order: Vec<&String> = routes.services.keys().collect();
    order.sort_by_key(|s| **s != primary);
    // Per Service: its slices by (address type, port) → hosts, and its port.
    let mut planned = BTreeMap::new();
    for service in &order {
        let endpoints = &routes.services[*service];
        let mut groups: BTreeMap<(&'static str, u16), Vec<String>> = BTreeMap::new();
        for ep in endpoints {
            match split_endpoint(ep).and_then(|(h, p)| address_type(h).map(|t| (t, p, h))) {
                Some((t, p, h)) => groups.entry((t, p)).or_default().push(h.to_owned()),
                None => rejected.push(ep.clone()),
            }
        }
        let port = groups
            .keys()
            .next()
            .map(|(_, p)| *p)
            .or_else(|| endpoints.iter().find_map(|e| split_endpoint(e).map(|(_, p)| p)))
            .or(routes.port);
        planned.insert((*service).clone(), (groups, port));
    }
    let mut wanted = BTreeSet::new();
    let mut early = BTreeSet::new();
    for service in &order {
        if is_owned::<Service>(&ns, service, &owner_uid) {
            let (groups, _) = &planned[*service];
            conflicts.extend(apply_slices(&slices, cluster, service, groups, &mut wanted).await?);
            early.insert((*service).clone());
        }
    }
    for service in &order {
        let (groups, port) = &planned[*service];
        let port = i32::from(port.unwrap_or(6379));
        let svc = Service {
            metadata: ObjectMeta {
                name: Some((*service).clone()),
                labels: Some(BTreeMap::from([(CLUSTER_LABEL.to_owned(), cluster.name_any())])),
                owner_references: Some(cluster.controller_owner_ref(&()).into_iter().collect()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some(PORT_NAME.into()),
                    port,
                    target_port: Some(IntOrString::Int(port)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Err(why) = apply_owned(&services, &ns, service, with_type(&svc), &owner_uid).await? {
            conflicts.push(why);
            unowned_services.insert((*service).clone());
            if early.contains(*service) {
                for (addr_type, port) in groups.keys() {
                    let name = slice_name(service, addr_type, *port);
                    wanted.remove(&name);
                    match slices.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            continue;
        }
        if !early.contains(*service) {
            conflicts.extend(apply_slices(&slices, cluster, service, groups, &mut wanted).await?);
        }
    }
    let lp = ListParams::default()
        .labels(&format!("{CLUSTER_LABEL}={},{MANAGED_BY_LABEL}={MANAGED_BY}", cluster.name_any()));
    for old in slices.list(&lp).await? {
        let name = old.name_any();
        // Only slices of the Services this call manages; others (e.g. a FailoverRequest's
        // serviceName) are left alone.
        let service = old.labels().get(SERVICE_NAME_LABEL).cloned().unwrap_or_default();
        if routes.services.contains_key(&service) && !wanted.contains(&name) && owned_by(&old, cluster) {
            slices.delete(&name, &DeleteParams::default()).await?;
        }
    }
    Ok(Applied { rejected, conflicts, unowned_services })
}

/// Whether a `K` named `name` in `ns` is known (from an earlier write) to be owned by the
/// cluster whose uid is `owner_uid`.
/// Move the primary Services of a one-shard cluster to `endpoint`, the member just promoted,
/// without waiting for the promotion's outcome record: clients' writes wait on this, not on
/// the record (measured in `bench lifecycle`: the outcome write took 14–74 ms of a
/// switchover's pause). Only the EndpointSlices of Services already known to be the
/// cluster's and named in `last`, the routes last written, are touched, and only where the
/// slice keeps its name (same address type and port as the one it replaces): no other object
/// is created, deleted or looked up here. The monitor's full routing write after the record
/// finds these slices as wanted. Returns whether anything was written.
///
/// Safe before the record: the saga promotes only after the decision (target and epoch) is
/// recorded and the old primary is fenced, so the Services follow the data plane; a restarted
/// operator resumes the recorded promotion to this same member.
pub async fn route_promoted_early(
    client: &Client,
    cluster: &HaCluster,
    last: &Routes,
    from: &str,
    endpoint: &str,
) -> Result<bool, kube::Error> {
    let (Some((host, port)), Some((from_host, from_port))) = (split_endpoint(endpoint), split_endpoint(from))
    else {
        return Ok(false);
    };
    let (Some(addr_type), Some(from_type)) = (address_type(host), address_type(from_host)) else {
        return Ok(false);
    };
    if (addr_type, port) != (from_type, from_port) {
        return Ok(false);
    }
    let ns = cluster.namespace().unwrap_or_default();
    let owner_uid = cluster.uid().unwrap_or_default();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let mut primaries: Vec<String> = vec![primary_service_name(cluster)];
    primaries.extend(primary_aliases(cluster));
    let groups = BTreeMap::from([((addr_type, port), vec![host.to_owned()])]);
    let mut written = false;
    for service in &primaries {
        // Exactly the old primary, as last written, behind a Service known to be ours.
        if last.services.get(service).map(Vec::as_slice) != Some(&[from.to_owned()][..])
            || !is_owned::<Service>(&ns, service, &owner_uid)
            || !is_owned::<EndpointSlice>(&ns, &slice_name(service, addr_type, port), &owner_uid)
        {
            continue;
        }
        let conflicts = apply_slices(&slices, cluster, service, &groups, &mut BTreeSet::new()).await?;
        written |= conflicts.is_empty();
    }
    Ok(written)
}

fn is_owned<K: Resource<DynamicType = ()>>(ns: &str, name: &str, owner_uid: &str) -> bool {
    let key = (K::kind(&()).into_owned(), ns.to_owned(), name.to_owned(), owner_uid.to_owned());
    OWNED.lock().expect("owned lock").contains_key(&key)
}

/// Apply the EndpointSlices of Service `service` (one per address type and port); returns
/// the slices whose names are taken by objects the cluster does not own.
async fn apply_slices(
    slices: &Api<EndpointSlice>,
    cluster: &HaCluster,
    service: &str,
    groups: &BTreeMap<(&'static str, u16), Vec<String>>,
    wanted: &mut BTreeSet<String>,
) -> Result<Vec<String>, kube::Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let owner_uid = cluster.uid().unwrap_or_default();
    let mut conflicts = Vec::new();
    for ((addr_type, port), hosts) in groups {
        let name = slice_name(service, addr_type, *port);
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (SERVICE_NAME_LABEL.to_owned(), service.to_owned()),
                    (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                    (CLUSTER_LABEL.to_owned(), cluster.name_any()),
                ])),
                owner_references: Some(cluster.controller_owner_ref(&()).into_iter().collect()),
                ..Default::default()
            },
            address_type: (*addr_type).into(),
            endpoints: hosts
                .iter()
                .map(|h| Endpoint {
                    addresses: vec![h.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some(PORT_NAME.into()),
                port: Some(i32::from(*port)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
        };
        wanted.insert(name.clone());
        if let Err(why) = apply_owned(slices, &ns, &name, with_type(&slice), &owner_uid).await? {
            conflicts.push(why);
        }
    }
    Ok(conflicts)
}

/// A Service this operator routes has no selector, so every EndpointSlice of it must be ours.
/// Others are stale: an earlier version gave pod members selector Services, and when the
/// selector goes, kube-controller-manager leaves its last EndpointSlice and Endpoints in place
/// (and mirrors those Endpoints into yet another slice) — kube-proxy would keep routing to the
/// old primary beside the new one. Deleted here, the Endpoints first so nothing mirrors them.
/// Returns how many objects were removed.
pub async fn remove_foreign_endpoints(
    client: &Client,
    ns: &str,
    services: impl IntoIterator<Item = &String>,
) -> Result<usize, kube::Error> {
    let mut removed = 0;
    for service in services {
        removed += remove_foreign_endpoints_of(client, ns, service).await?;
    }
    Ok(removed)
}

async fn remove_foreign_endpoints_of(client: &Client, ns: &str, service: &str) -> Result<usize, kube::Error> {
    let mut removed = 0;
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(client.clone(), ns);
    #[allow(deprecated)] // core/v1 Endpoints: deprecated for EndpointSlices, still served
    if endpoints.get_opt(service).await?.is_some() {
        match endpoints.delete(service, &DeleteParams::default()).await {
            Ok(_) => {
                removed += 1;
                tracing::info!(%service, "deleted stale Endpoints of a selector-less Service");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
    for slice in slices.list(&lp).await? {
        if slice.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY) {
            continue;
        }
        let name = slice.name_any();
        match slices.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                tracing::info!(%service, slice = %name, "deleted an EndpointSlice this operator did not write")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// `host:port` clients use for a static member: its endpoint, or its clientAddress with the
/// endpoint's port where the operator allows clientAddress.
pub fn member_route(c: &HaCluster, name: &str, allow_client_address: bool) -> Option<String> {
    let m = c.spec.shards.iter().flatten().flat_map(|s| s.members.iter()).find(|m| m.name == name)?;
    Some(route_of(m, allow_client_address))
}

/// See [`member_route`].
pub fn route_of(m: &crate::resources::hacluster::MemberSpec, allow_client_address: bool) -> String {
    match (&m.client_address, split_endpoint(&m.endpoint)) {
        (Some(a), Some((_, port))) if allow_client_address && a.contains(':') => format!("[{a}]:{port}"),
        (Some(a), Some((_, port))) if allow_client_address => format!("{a}:{port}"),
        _ => m.endpoint.clone(),
    }
}

/// Point the cluster's primary Service at the recorded primaries of every shard now (what
/// `forceRebind` asks for right after a promotion). Returns a note for status.
pub async fn rebind_primaries(
    client: &Client,
    cluster: &HaCluster,
    allow_client_address: bool,
) -> Result<String, kube::Error> {
    if !cluster.spec.routing.enabled || cluster.pod_membership().is_some() {
        // Pod members: the monitor moves the primary Service's EndpointSlice itself, in the
        // same write that records nothing else, right after the promotion.
        return Ok("forceRebind: routing is not managed here for this cluster (routing disabled, or pod members routed by the monitor)".into());
    }
    let primaries: Vec<String> = cluster
        .status
        .iter()
        .flat_map(|s| s.shards.iter())
        .filter(|s| s.target_primary.is_none())
        .filter_map(|s| {
            s.current_primary.as_deref().and_then(|p| member_route(cluster, p, allow_client_address))
        })
        .collect();
    let svc = primary_service_name(cluster);
    let routes = Routes { services: BTreeMap::from([(svc.clone(), primaries.clone())]), port: None };
    let applied = apply_routes(client, cluster, &routes).await?;
    Ok(if let Some(why) = applied.conflicts.first() {
        format!("forceRebind: {why}")
    } else if applied.rejected.is_empty() {
        format!("forceRebind: Service {svc} → {}", primaries.join(", "))
    } else {
        format!(
            "forceRebind: Service {svc} cannot route to {} (loopback/link-local; set clientAddress)",
            applied.rejected.join(", ")
        )
    })
}

/// Serialize with apiVersion/kind, as server-side apply needs.
fn with_type<K: Resource<DynamicType = ()> + serde::Serialize>(obj: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(obj).unwrap_or_default();
    v["apiVersion"] = json!(K::api_version(&()));
    v["kind"] = json!(K::kind(&()));
    v
}

/// Every shard's main host, in status order, for the redirect ConfigMap: each shard's current
/// primary, except `promoted` (shard, member) which names the member just promoted. Shards
/// without a primary (or whose primary has no address) are left out.
pub(super) fn redirect_mains(
    shards: &[crate::resources::hacluster::ShardStatus],
    declared: &[super::hacluster::Declared],
    promoted: Option<(&str, &str)>,
) -> Vec<(String, String)> {
    let mut primaries: Vec<(String, Option<String>)> =
        shards.iter().map(|s| (s.name.clone(), s.current_primary.clone())).collect();
    if let Some((shard, member)) = promoted {
        match primaries.iter_mut().find(|(s, _)| s == shard) {
            Some(entry) => entry.1 = Some(member.to_owned()),
            None => primaries.push((shard.to_owned(), Some(member.to_owned()))),
        }
    }
    primaries
        .into_iter()
        .filter_map(|(shard, primary)| {
            let d = declared.iter().find(|d| Some(&d.name) == primary.as_ref())?;
            let (host, _) = split_endpoint(&d.route)?;
            Some((shard, host.to_owned()))
        })
        .collect()
}

/// Agent engines: write each shard's main host into the redirect ConfigMap
/// ([`crate::core::redirect`] says the keys), then restart the consumer workloads of the
/// shards whose main changed (the same annotation `kubectl rollout restart` sets) where
/// `restarts` allows it. `mains` is every shard's main, in the cluster's shard order: the
/// ConfigMap is applied whole, so a key left out would be removed. Returns the shards whose
/// main changed (nothing is written when none did).
pub async fn apply_redirect(
    client: &Client,
    cluster: &HaCluster,
    redirect: &Redirect,
    mains: &[(String, String)],
    restarts: bool,
) -> Result<Vec<String>, kube::Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let current = cms.get_opt(&redirect.config_map).await?;
    let current = current.and_then(|c| c.data).unwrap_or_default();
    let changed = redirect::changed_shards(&current, &redirect.key, mains);
    let data = redirect::redirect_data(&redirect.key, mains);
    if changed.is_empty() && data.iter().all(|(k, v)| current.get(k) == Some(v)) {
        return Ok(changed);
    }
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": redirect.config_map},
        "data": data,
    });
    cms.patch(&redirect.config_map, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&cm)).await?;
    let stamp = Timestamp::now().to_string();
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}});
    let consumers = redirect.restart.iter().filter(|w| redirect::restarts(w.shard.as_deref(), &changed));
    for w in consumers.filter(|_| restarts) {
        let pp = PatchParams::default();
        let res = match w.kind {
            WorkloadKind::Deployment => {
                Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns)
                    .patch(&w.name, &pp, &Patch::Merge(&restart))
                    .await
                    .map(|_| ())
            }
            WorkloadKind::StatefulSet => {
                Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(client.clone(), &ns)
                    .patch(&w.name, &pp, &Patch::Merge(&restart))
                    .await
                    .map(|_| ())
            }
            WorkloadKind::DaemonSet => {
                Api::<k8s_openapi::api::apps::v1::DaemonSet>::namespaced(client.clone(), &ns)
                    .patch(&w.name, &pp, &Patch::Merge(&restart))
                    .await
                    .map(|_| ())
            }
        };
        match res {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::warn!(workload = %w.name, "redirect: workload to restart does not exist");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(changed)
}

/// Pod members: set (or clear) `understudy.dev/role` on each pod whose label is not what it
/// should be. Returns how many pods were patched.
pub async fn label_pods(
    client: &Client,
    namespace: &str,
    roles: &[(String, Option<&'static str>)],
    current: &std::collections::HashMap<String, Option<String>>,
) -> Result<usize, kube::Error> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let mut patched = 0;
    for (pod, role) in roles {
        let have = current.get(pod).cloned().flatten();
        if have.as_deref() == *role {
            continue;
        }
        let patch = json!({"metadata": {"labels": {crate::resources::shared::ROLE_LABEL: role}}});
        match pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => patched += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(patched)
}

/// Pod members: the ACL NetworkPolicy admits the members themselves plus the `acls` CIDRs
/// (none = members only). (Their Services are selector-less, like static members': the
/// monitor writes the EndpointSlices, see [`apply_routes`].)
pub async fn apply_acl_policy(
    client: &Client,
    cluster: &HaCluster,
    sel: &crate::resources::hacluster::PodMembership,
) -> Result<Result<(), String>, kube::Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let owner = cluster.controller_owner_ref(&()).into_iter().collect::<Vec<_>>();
    let mut from = vec![json!({"podSelector": {"matchLabels": sel.match_labels}})];
    for cidr in cluster.spec.acls.iter().flatten() {
        from.push(json!({"ipBlock": {"cidr": cidr}}));
    }
    let np = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {
            "name": format!("{}-acl", cluster.name_any()),
            "labels": {CLUSTER_LABEL: cluster.name_any()},
            "ownerReferences": owner,
        },
        "spec": {
            "podSelector": {"matchLabels": sel.match_labels},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": from, "ports": [{"port": sel.port, "protocol": "TCP"}]}],
        }
    });
    let nps: Api<k8s_openapi::api::networking::v1::NetworkPolicy> = Api::namespaced(client.clone(), &ns);
    let name = format!("{}-acl", cluster.name_any());
    apply_owned(&nps, &ns, &name, np, &cluster.uid().unwrap_or_default()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_dns_labels_other_than_the_clusters_own_services() {
        let mut c: HaCluster = serde_json::from_value(json!({
            "apiVersion": "understudy.dev/v1alpha1", "kind": "HaCluster",
            "metadata": {"name": "k", "annotations": {PRIMARY_ALIASES: "k-writes, b,k-primary,Bad!,-x,,k-replicas"}},
            "spec": {"engine": "Redis", "shards": [{"name": "s0", "members": [{"name": "a", "endpoint": "10.0.0.1:6379"}]}]}
        }))
        .unwrap();
        assert_eq!(primary_aliases(&c).into_iter().collect::<Vec<_>>(), ["b", "k-writes"]);
        let routes = desired_routes(&c, &["10.0.0.1:6379".into()], &[]);
        assert_eq!(routes.services.get("k-writes"), Some(&vec!["10.0.0.1:6379".to_owned()]));
        c.spec.routing.enabled = false;
        assert!(desired_routes(&c, &["10.0.0.1:6379".into()], &[]).services.is_empty());
    }

    #[test]
    fn address_types() {
        assert_eq!(address_type("10.0.0.7"), Some("IPv4"));
        assert_eq!(address_type("fd00::1"), Some("IPv6"));
        assert_eq!(address_type("redis-0.redis"), Some("FQDN"));
        assert_eq!(address_type("localhost"), None);
        assert_eq!(address_type("127.0.0.1"), None);
        assert_eq!(address_type("::1"), None);
        assert_eq!(address_type("169.254.1.1"), None);
    }
}
