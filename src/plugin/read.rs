//! `status` and `history`: read, build the view ([`render`]), print it.

use k8s_openapi::{api::events::v1::Event, jiff::Timestamp};
use kube::{
    Api, Client, Resource,
    api::ListParams,
    core::{DeserializeGuard, NamespaceResourceScope},
};
use serde::{Serialize, de::DeserializeOwned};

use super::{HistoryArgs, Output, PluginError, StatusArgs, connect::Target, render};
use crate::resources::{FailoverRequest, HaCluster, ProtectionGroup, ShardFailover};

pub async fn status(target: &Target, args: StatusArgs) -> Result<(), PluginError> {
    let now = Timestamp::now();
    let scope = if args.all_namespaces { None } else { Some(target.namespace.as_str()) };
    let clusters = match &args.cluster {
        Some(name) => vec![get_cluster(&target.client, &target.namespace, name).await?],
        None => list::<HaCluster>(&target.client, scope).await?,
    };
    let sfos = list::<ShardFailover>(&target.client, scope).await?;
    let frs = list::<FailoverRequest>(&target.client, scope).await?;
    let views: Vec<render::ClusterView> = clusters
        .iter()
        .map(|c| {
            let ns = c.metadata.namespace.as_deref();
            let sfos: Vec<ShardFailover> =
                sfos.iter().filter(|s| s.metadata.namespace.as_deref() == ns).cloned().collect();
            let frs: Vec<FailoverRequest> =
                frs.iter().filter(|f| f.metadata.namespace.as_deref() == ns).cloned().collect();
            render::cluster_view(c, &sfos, &frs)
        })
        .collect();
    let list = render::StatusList { clusters: views };
    match (args.output, &args.cluster) {
        (Output::Table, Some(_)) => print!("{}", render::cluster_text(&list.clusters[0], now)),
        (Output::Table, None) if list.clusters.is_empty() => match scope {
            Some(ns) => println!("No HaClusters in namespace {ns}."),
            None => println!("No HaClusters in any namespace."),
        },
        (Output::Table, None) => {
            print!("{}", render::clusters_table(&list.clusters, args.all_namespaces, now));
        }
        (output, _) => print_machine(output, &list)?,
    }
    Ok(())
}

pub async fn history(target: &Target, args: HistoryArgs) -> Result<(), PluginError> {
    let client = &target.client;
    let ns = target.namespace.as_str();
    let cluster = get_cluster(client, ns, &args.cluster).await?;
    let sfos = list::<ShardFailover>(client, Some(ns)).await?;
    let frs = list::<FailoverRequest>(client, Some(ns)).await?;
    let mut events = list_events(client, ns).await?;
    // The protecting group (status.protection.group is `namespace/name`) may live elsewhere.
    let group_ref = cluster.status.as_ref().and_then(|s| s.protection.as_ref()).map(|p| p.group.clone());
    let mut group = None;
    if let Some((gns, gname)) = group_ref.as_deref().and_then(|g| g.split_once('/')) {
        group = Api::<ProtectionGroup>::namespaced(client.clone(), gns).get_opt(gname).await.ok().flatten();
        if group.is_some() && gns != ns {
            events.extend(list_events(client, gns).await?);
        }
    }
    let view = render::history(&cluster, &sfos, &frs, group.as_ref(), &events);
    match args.output {
        Output::Table => print!("{}", render::history_text(&view, Timestamp::now())),
        output => print_machine(output, &view)?,
    }
    Ok(())
}

/// An HaCluster, or why there is none.
pub async fn get_cluster(client: &Client, ns: &str, name: &str) -> Result<HaCluster, PluginError> {
    Api::<HaCluster>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .ok_or_else(|| PluginError::Refused(format!("HaCluster {name} not found in namespace {ns}")))
}

/// Every object of a kind in a namespace (or all); one the plugin cannot read (it passed the
/// API server's schema, not these types) is skipped with a warning rather than failing the
/// command.
pub async fn list<K>(client: &Client, ns: Option<&str>) -> Result<Vec<K>, PluginError>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<DeserializeGuard<K>> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut out = Vec::new();
    for guarded in api.list(&ListParams::default()).await?.items {
        match guarded.0 {
            Ok(obj) => out.push(obj),
            Err(e) => eprintln!("warning: skipping a {} that cannot be read: {e}", K::kind(&())),
        }
    }
    Ok(out)
}

async fn list_events(client: &Client, ns: &str) -> Result<Vec<Event>, PluginError> {
    Ok(Api::<Event>::namespaced(client.clone(), ns).list(&ListParams::default()).await?.items)
}

fn print_machine<T: Serialize>(output: Output, value: &T) -> Result<(), PluginError> {
    let text = match output {
        Output::Yaml => serde_yaml::to_string(value).map_err(|e| PluginError::Client(e.to_string()))?,
        _ => serde_json::to_string_pretty(value).map_err(|e| PluginError::Client(e.to_string()))? + "\n",
    };
    print!("{text}");
    Ok(())
}
