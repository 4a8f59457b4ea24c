//! What an agent cluster's redirect ConfigMap says, and which consumers a change restarts.
//!
//! The ConfigMap holds one key per shard, `<key>.<shard>` = that shard's main host, and the
//! bare `<key>` = the first shard's main host (what a single-shard cluster's consumers have
//! always read, seed 004's `com.systar.electron.host`). A consumer workload restarts only
//! when the main of its shard changed (or of any shard, for one that names none).

use std::collections::BTreeMap;

/// The ConfigMap key naming `shard`'s main.
pub fn shard_key(key: &str, shard: &str) -> String {
    format!("{key}.{shard}")
}

/// The ConfigMap data for `mains` (shard → main host, in the cluster's shard order; the first
/// one also fills the bare `key`).
pub fn redirect_data(key: &str, mains: &[(String, String)]) -> BTreeMap<String, String> {
    let mut data: BTreeMap<String, String> =
        mains.iter().map(|(shard, host)| (shard_key(key, shard), host.clone())).collect();
    if let Some((_, host)) = mains.first() {
        data.insert(key.to_owned(), host.clone());
    }
    data
}

/// The shards of `mains` whose main differs from what `current` (the ConfigMap's data now)
/// says. A ConfigMap written before per-shard keys existed has only the bare key: for the
/// first shard that key stands in for the missing `<key>.<shard>`, so an upgrade restarts
/// nothing by itself.
pub fn changed_shards(
    current: &BTreeMap<String, String>,
    key: &str,
    mains: &[(String, String)],
) -> Vec<String> {
    mains
        .iter()
        .enumerate()
        .filter(|(i, (shard, host))| {
            let said =
                current.get(&shard_key(key, shard)).or_else(|| (*i == 0).then(|| current.get(key)).flatten());
            said != Some(host)
        })
        .map(|(_, (shard, _))| shard.clone())
        .collect()
}

/// Whether a consumer of `shard` (None: of every shard) restarts after `changed`.
pub fn restarts(shard: Option<&str>, changed: &[String]) -> bool {
    match shard {
        Some(s) => changed.iter().any(|c| c == s),
        None => !changed.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mains(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(s, h)| ((*s).to_owned(), (*h).to_owned())).collect()
    }

    #[test]
    fn every_shard_has_its_key_and_the_bare_key_is_the_first_shards() {
        let data = redirect_data("k", &mains(&[("a", "10.0.0.1"), ("b", "10.0.0.2")]));
        assert_eq!(data.get("k.a").map(String::as_str), Some("10.0.0.1"));
        assert_eq!(data.get("k.b").map(String::as_str), Some("10.0.0.2"));
        assert_eq!(data.get("k").map(String::as_str), Some("10.0.0.1"));
        assert_eq!(data.len(), 3);
        assert!(redirect_data("k", &[]).is_empty());
    }

    #[test]
    fn only_the_shards_whose_main_moved_are_changed() {
        let before = redirect_data("k", &mains(&[("a", "h1"), ("b", "h2")]));
        assert!(changed_shards(&before, "k", &mains(&[("a", "h1"), ("b", "h2")])).is_empty());
        assert_eq!(changed_shards(&before, "k", &mains(&[("a", "h1"), ("b", "h3")])), vec!["b"]);
        assert_eq!(
            changed_shards(&BTreeMap::new(), "k", &mains(&[("a", "h1"), ("b", "h2")])),
            vec!["a", "b"]
        );
    }

    #[test]
    fn a_configmap_from_before_per_shard_keys_counts_for_the_first_shard() {
        let legacy = BTreeMap::from([("k".to_owned(), "h1".to_owned())]);
        assert!(changed_shards(&legacy, "k", &mains(&[("main", "h1")])).is_empty());
        assert_eq!(changed_shards(&legacy, "k", &mains(&[("main", "h2")])), vec!["main"]);
        // The bare key says nothing about a second shard.
        assert_eq!(changed_shards(&legacy, "k", &mains(&[("a", "h1"), ("b", "h1")])), vec!["b"]);
    }

    #[test]
    fn consumers_restart_for_their_shard_only() {
        let changed = vec!["b".to_owned()];
        assert!(restarts(Some("b"), &changed));
        assert!(!restarts(Some("a"), &changed));
        assert!(restarts(None, &changed));
        assert!(!restarts(None, &[]));
    }
}
