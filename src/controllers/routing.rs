//! Where clients are sent: the primary and replicas Services (selector-less, with
//! EndpointSlices the operator owns, for static members) and, for agent engines, the redirect
//! ConfigMap plus a rollout restart of the consumer workloads.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
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
    engines::split_endpoint,
    resources::{
        HaCluster,
        hacluster::{Redirect, WorkloadKind},
    },
};

pub const CLUSTER_LABEL: &str = "understudy.dev/cluster";
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
    }
    let port = cluster.spec.selector.as_ref().and_then(|s| u16::try_from(s.port).ok());
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

/// Server-side apply the Services and EndpointSlices of `routes`, and delete slices of this
/// cluster that are no longer wanted. Endpoints Kubernetes would reject are skipped and
/// returned so the caller can report them.
pub async fn apply_routes(
    client: &Client,
    cluster: &HaCluster,
    routes: &Routes,
) -> Result<Vec<String>, kube::Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let owner = cluster.controller_owner_ref(&()).into_iter().collect::<Vec<_>>();
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    let pp = PatchParams::apply(MANAGER).force();
    let mut wanted = BTreeSet::new();
    let mut rejected = Vec::new();
    for (service, endpoints) in &routes.services {
        // Group endpoints by (address type, port): one slice each.
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
        let svc = Service {
            metadata: ObjectMeta {
                name: Some(service.clone()),
                labels: Some(BTreeMap::from([(CLUSTER_LABEL.to_owned(), cluster.name_any())])),
                owner_references: Some(owner.clone()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some(PORT_NAME.into()),
                    port: i32::from(port.unwrap_or(6379)),
                    target_port: Some(IntOrString::Int(i32::from(port.unwrap_or(6379)))),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        services.patch(service, &pp, &Patch::Apply(&with_type(&svc))).await?;
        for ((addr_type, port), hosts) in groups {
            let name = slice_name(service, addr_type, port);
            let slice = EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    labels: Some(BTreeMap::from([
                        (SERVICE_NAME_LABEL.to_owned(), service.clone()),
                        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
                        (CLUSTER_LABEL.to_owned(), cluster.name_any()),
                    ])),
                    owner_references: Some(owner.clone()),
                    ..Default::default()
                },
                address_type: addr_type.into(),
                endpoints: hosts
                    .into_iter()
                    .map(|h| Endpoint {
                        addresses: vec![h],
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
                    port: Some(i32::from(port)),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
            };
            slices.patch(&name, &pp, &Patch::Apply(&with_type(&slice))).await?;
            wanted.insert(name);
        }
    }
    let lp = ListParams::default()
        .labels(&format!("{CLUSTER_LABEL}={},{MANAGED_BY_LABEL}={MANAGED_BY}", cluster.name_any()));
    for old in slices.list(&lp).await? {
        let name = old.name_any();
        // Only slices of the Services this call manages; others (e.g. a FailoverRequest's
        // serviceName) are left alone.
        let service = old.labels().get(SERVICE_NAME_LABEL).cloned().unwrap_or_default();
        if routes.services.contains_key(&service) && !wanted.contains(&name) {
            slices.delete(&name, &DeleteParams::default()).await?;
        }
    }
    Ok(rejected)
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

/// `host:port` clients use for a static member (clientAddress if set).
pub fn member_route(c: &HaCluster, name: &str) -> Option<String> {
    let m = c.spec.shards.iter().flatten().flat_map(|s| s.members.iter()).find(|m| m.name == name)?;
    let (_, port) = split_endpoint(&m.endpoint)?;
    Some(match &m.client_address {
        Some(a) if a.contains(':') => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
        None => m.endpoint.clone(),
    })
}

/// Point the cluster's primary Service at the recorded primaries of every shard now (what
/// `forceRebind` asks for right after a promotion). Returns a note for status.
pub async fn rebind_primaries(client: &Client, cluster: &HaCluster) -> Result<String, kube::Error> {
    if !cluster.spec.routing.enabled || cluster.spec.selector.is_some() {
        // Pod members: the monitor moves the primary Service's EndpointSlice itself, in the
        // same write that records nothing else, right after the promotion.
        return Ok("forceRebind: routing is not managed here for this cluster (routing disabled, or pod members routed by the monitor)".into());
    }
    let primaries: Vec<String> = cluster
        .status
        .iter()
        .flat_map(|s| s.shards.iter())
        .filter(|s| s.target_primary.is_none())
        .filter_map(|s| s.current_primary.as_deref().and_then(|p| member_route(cluster, p)))
        .collect();
    let svc = primary_service_name(cluster);
    let routes = Routes { services: BTreeMap::from([(svc.clone(), primaries.clone())]), port: None };
    let rejected = apply_routes(client, cluster, &routes).await?;
    Ok(if rejected.is_empty() {
        format!("forceRebind: Service {svc} → {}", primaries.join(", "))
    } else {
        format!(
            "forceRebind: Service {svc} cannot route to {} (loopback/link-local; set clientAddress)",
            rejected.join(", ")
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

/// Agent engines: write the new main's host into the redirect ConfigMap, then restart the
/// consumer workloads (the same annotation `kubectl rollout restart` sets).
pub async fn apply_redirect(
    client: &Client,
    cluster: &HaCluster,
    redirect: &Redirect,
    host: &str,
) -> Result<bool, kube::Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let current = cms.get_opt(&redirect.config_map).await?;
    if current.as_ref().and_then(|c| c.data.as_ref()).and_then(|d| d.get(&redirect.key)).map(String::as_str)
        == Some(host)
    {
        return Ok(false);
    }
    let cm = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": redirect.config_map},
        "data": {redirect.key.clone(): host},
    });
    cms.patch(&redirect.config_map, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&cm)).await?;
    let stamp = Timestamp::now().to_string();
    let restart = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}});
    for w in &redirect.restart {
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
    Ok(true)
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
) -> Result<(), kube::Error> {
    let ns = cluster.namespace().unwrap_or_default();
    let owner = cluster.controller_owner_ref(&()).into_iter().collect::<Vec<_>>();
    let pp = PatchParams::apply(MANAGER).force();
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
    nps.patch(&format!("{}-acl", cluster.name_any()), &pp, &Patch::Apply(&np)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
