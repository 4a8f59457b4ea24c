//! Decisions of a standby cluster's failover to primary (a FailoverRequest item naming a
//! standby cluster, seed 000's standby tenant): whether it may start while its upstream
//! still answers, and where its `failover-to-primary` step stands. Pure: the controller
//! probes the upstream and reads the cluster's status, then does what these say.

/// What a probe of the upstream's members found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// A member of the upstream answers as a writable primary: `who` (name and address).
    Writable(String),
    /// No member of the upstream answers as a writable primary: what was found instead.
    NotWritable(String),
}

/// Whether a standby may be failed over to primary now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Go on; the words say which case it was, for the item's message.
    Go(String),
    /// Refused, nothing touched; the words say why and what to do instead.
    Refused(String),
}

/// A standby is never made writable while its upstream still is: that would leave two
/// writable clusters taking different writes. Not even when forced (a Failover request): a
/// forced failover is for an upstream that is lost, and one that answers as a primary is
/// not (a ProtectionGroup's forced failover likewise forces only pairs whose other side is
/// silent).
pub fn gate(forced: bool, upstream: &Upstream) -> Gate {
    match upstream {
        Upstream::NotWritable(seen) => Gate::Go(format!(
            "upstream is not taking writes ({seen}): failing over{}",
            if forced { " (type Failover)" } else { "" }
        )),
        Upstream::Writable(who) => Gate::Refused(format!(
            "upstream {who} still answers as a writable primary: failing its standby over{} would leave two writable clusters; refused, nothing touched. Stop the upstream's writes first (or wait until it is lost), or move the site with a ProtectionGroup",
            if forced { ", even forced (type Failover)," } else { " (type Switchover)" }
        )),
    }
}

/// What the cluster's status says about the `failover-to-primary` step of one item.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PromotionFacts {
    /// The member to make primary.
    pub to: String,
    /// The epoch this step recorded, if it recorded one (kept in the subtask's context).
    pub recorded_epoch: Option<i64>,
    /// The request holds the shard's operation lock.
    pub lock_ours: bool,
    pub current_primary: Option<String>,
    pub target_primary: Option<String>,
    pub epoch: i64,
    /// The last promotion the monitor recorded, if it started after the request took the
    /// lock: (new primary, epoch).
    pub promoted_since_lock: Option<(String, i64)>,
    /// Why the monitor abandoned the last promotion, if it did (LastPromotion=False).
    pub abandoned: Option<String>,
}

/// Where the step stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromotionNext {
    /// Record epoch + 1 and the target (nothing recorded yet).
    Record,
    /// Recorded at this epoch (maybe by a process that died before saying so): wait for the
    /// cluster's monitor.
    Wait(i64),
    /// The monitor promoted it at this epoch.
    Done(i64),
    Failed(String),
}

/// The `failover-to-primary` step, resumed from whatever was recorded: a target is written
/// once, and a promotion the monitor finished is recognised by its record, never by the
/// primary's name alone (the leader was the recorded primary before it was promoted).
pub fn promotion_next(f: &PromotionFacts) -> PromotionNext {
    let to = Some(f.to.as_str());
    let promoted_at = |e: i64| f.promoted_since_lock.as_ref().is_some_and(|(m, at)| m == &f.to && *at == e);
    if !f.lock_ours {
        return PromotionNext::Failed(
            "the request no longer holds the cluster's operation lock (it expired or was broken); not promoting"
                .into(),
        );
    }
    if f.target_primary.as_deref() == to {
        return PromotionNext::Wait(f.recorded_epoch.unwrap_or(f.epoch));
    }
    match f.recorded_epoch {
        // Nothing recorded as far as the request knows: finished already if the monitor
        // recorded a promotion of `to` since the lock was taken (a process died in between).
        None if f.target_primary.is_none() && f.current_primary.as_deref() == to && promoted_at(f.epoch) => {
            PromotionNext::Done(f.epoch)
        }
        None if f.target_primary.is_none() => PromotionNext::Record,
        Some(e) if f.target_primary.is_none() && f.current_primary.as_deref() == to && promoted_at(e) => {
            PromotionNext::Done(e)
        }
        _ => PromotionNext::Failed(match (&f.target_primary, &f.abandoned) {
            (Some(other), _) => format!("another promotion (of {other}) is recorded; not promoting {}", f.to),
            (None, Some(why)) => why.clone(),
            (None, None) => format!("the promotion of {} was given up by the cluster's monitor", f.to),
        }),
    }
}

/// One shard of the upstream cluster, as its status says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpstreamShard {
    pub name: String,
    /// Its primary's endpoint; None while it has none or a promotion is recorded but not
    /// carried out.
    pub primary: Option<String>,
}

/// Which address each shard of a standby cluster follows, or why it has none now. One shard
/// on both sides: that one, whatever their names; otherwise shard by shard, by name (each
/// shard holds its own part of the data, so a shard never follows another's primary).
pub fn pair_shards(
    mine: &[String],
    upstream: &str,
    theirs: &[UpstreamShard],
) -> Vec<(String, Result<String, String>)> {
    let one_to_one = mine.len() == 1 && theirs.len() == 1;
    mine.iter()
        .map(|shard| {
            let found = if one_to_one { theirs.first() } else { theirs.iter().find(|t| &t.name == shard) };
            let to = match found {
                None if theirs.is_empty() => Err(format!("{upstream} has no shards in its status yet")),
                None => Err(format!(
                    "{upstream} has no shard named {shard} (it has {}); the shards of a standby follow the upstream's shard by shard, by name",
                    theirs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                )),
                Some(t) => t.primary.clone().ok_or_else(|| {
                    format!("shard {} of {upstream} has no primary now (none yet, or one being promoted)", t.name)
                }),
            };
            (shard.clone(), to)
        })
        .collect()
}

/// The same for a standby whose upstream is one address per shard (`shardEndpoints`): each
/// shard follows the address of its name (one on each side: that one, whatever its name).
pub fn pair_shard_endpoints(
    mine: &[String],
    theirs: &[(String, String)],
) -> Vec<(String, Result<String, String>)> {
    let one_to_one = mine.len() == 1 && theirs.len() == 1;
    mine.iter()
        .map(|shard| {
            let found = if one_to_one { theirs.first() } else { theirs.iter().find(|(s, _)| s == shard) };
            let to = found.map(|(_, e)| e.clone()).ok_or_else(|| {
                format!(
                    "spec.standby.shardEndpoints has no shard named {shard} (it has {}); each shard follows the address of its name",
                    theirs.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", ")
                )
            });
            (shard.clone(), to)
        })
        .collect()
}

/// The same for a standby whose upstream is one address (`primaryEndpoint`): only a one-shard
/// cluster can follow it.
pub fn pair_endpoint(mine: &[String], endpoint: &str) -> Vec<(String, Result<String, String>)> {
    mine.iter()
        .map(|shard| {
            let to = if mine.len() == 1 {
                Ok(endpoint.to_owned())
            } else {
                Err(format!(
                    "spec.standby.primaryEndpoint is one address, and this cluster has {} shards: name the upstream HaCluster instead (spec.standby.cluster), whose shards are followed by name",
                    mine.len()
                ))
            };
            (shard.clone(), to)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_of_a_standby_follow_the_upstream_shard_of_the_same_name() {
        let up = |name: &str, primary: Option<&str>| UpstreamShard {
            name: name.into(),
            primary: primary.map(Into::into),
        };
        let mine = vec!["s0".to_owned(), "s1".to_owned()];
        let theirs = [up("s1", Some("b:1")), up("s0", Some("a:1"))];
        let pairs = pair_shards(&mine, "HaCluster ns/src", &theirs);
        assert_eq!(pairs, vec![("s0".into(), Ok("a:1".into())), ("s1".into(), Ok("b:1".into()))]);
        // A shard being promoted upstream, and one the upstream lacks: no address, and why.
        let theirs = [up("s0", None), up("x", Some("c:1"))];
        let pairs = pair_shards(&mine, "HaCluster ns/src", &theirs);
        assert!(
            pairs[0].1.as_ref().unwrap_err().contains("shard s0 of HaCluster ns/src has no primary"),
            "{pairs:?}"
        );
        assert!(pairs[1].1.as_ref().unwrap_err().contains("no shard named s1 (it has s0, x)"), "{pairs:?}");
        // One shard each: paired whatever the names.
        let pairs = pair_shards(&["main".to_owned()], "u", &[up("s0", Some("a:1"))]);
        assert_eq!(pairs, vec![("main".into(), Ok("a:1".into()))]);
        assert!(
            pair_shards(&mine, "u", &[]).iter().all(|(_, to)| to.as_ref().unwrap_err().contains("no shards"))
        );
    }

    #[test]
    fn one_address_is_followed_by_a_one_shard_standby_only() {
        assert_eq!(pair_endpoint(&["s0".to_owned()], "a:1"), vec![("s0".into(), Ok("a:1".into()))]);
        let two = pair_endpoint(&["s0".to_owned(), "s1".to_owned()], "a:1");
        assert!(two.iter().all(|(_, to)| to.as_ref().unwrap_err().contains("has 2 shards")), "{two:?}");
    }

    #[test]
    fn a_planned_failover_never_makes_a_second_writable_cluster() {
        let alive = Upstream::Writable("s-a (127.0.0.1:7000)".into());
        let Gate::Refused(why) = gate(false, &alive) else { panic!("a planned failover went on") };
        assert!(why.contains("two writable clusters") && why.contains("s-a"), "{why}");
        let Gate::Refused(why) = gate(true, &alive) else {
            panic!("a forced failover made two writable clusters")
        };
        assert!(why.contains("even forced") && why.contains("two writable clusters"), "{why}");
        let dead = Upstream::NotWritable("s-a: connection refused".into());
        for forced in [false, true] {
            let Gate::Go(note) = gate(forced, &dead) else { panic!("refused with the upstream down") };
            assert!(note.contains("not taking writes") && note.contains("connection refused"), "{note}");
        }
    }

    fn facts() -> PromotionFacts {
        PromotionFacts {
            to: "d-a".into(),
            lock_ours: true,
            current_primary: Some("d-a".into()),
            epoch: 3,
            ..Default::default()
        }
    }

    #[test]
    fn the_leader_already_named_primary_is_not_taken_for_promoted() {
        // Before anything is recorded the leader is currentPrimary with no target: record.
        assert_eq!(promotion_next(&facts()), PromotionNext::Record);
        // A promotion of the leader recorded before the lock (its own election) is not ours.
        let f = PromotionFacts { promoted_since_lock: None, ..facts() };
        assert_eq!(promotion_next(&f), PromotionNext::Record);
    }

    #[test]
    fn a_recorded_target_is_waited_for_and_adopted_after_a_crash() {
        let recorded = PromotionFacts { target_primary: Some("d-a".into()), epoch: 4, ..facts() };
        assert_eq!(promotion_next(&recorded), PromotionNext::Wait(4), "a process died after recording");
        let known = PromotionFacts { recorded_epoch: Some(4), ..recorded };
        assert_eq!(promotion_next(&known), PromotionNext::Wait(4));
    }

    #[test]
    fn the_monitors_record_at_the_recorded_epoch_is_done() {
        let done = PromotionFacts {
            recorded_epoch: Some(4),
            epoch: 4,
            promoted_since_lock: Some(("d-a".into(), 4)),
            ..facts()
        };
        assert_eq!(promotion_next(&done), PromotionNext::Done(4));
        // Done before the request knew its epoch (it died after recording).
        assert_eq!(
            promotion_next(&PromotionFacts { recorded_epoch: None, ..done.clone() }),
            PromotionNext::Done(4)
        );
        // A record of another epoch is not this one.
        let other = PromotionFacts { promoted_since_lock: Some(("d-a".into(), 3)), ..done };
        assert!(matches!(promotion_next(&other), PromotionNext::Failed(_)));
    }

    #[test]
    fn an_abandoned_or_foreign_promotion_fails_the_step() {
        let abandoned = PromotionFacts {
            recorded_epoch: Some(4),
            epoch: 4,
            abandoned: Some("d-a refused".into()),
            ..facts()
        };
        assert_eq!(promotion_next(&abandoned), PromotionNext::Failed("d-a refused".into()));
        let foreign = PromotionFacts { target_primary: Some("d-b".into()), ..facts() };
        assert!(matches!(promotion_next(&foreign), PromotionNext::Failed(m) if m.contains("d-b")));
        let lost = PromotionFacts { lock_ours: false, target_primary: Some("d-a".into()), ..facts() };
        assert!(matches!(promotion_next(&lost), PromotionNext::Failed(m) if m.contains("lock")));
    }
}

/// Which of the other site's members acting as primaries a shard of a superseded cluster
/// follows: the first of its own counterpart's (`shard_of`: the other site's shard of each
/// endpoint it yields to), or — for a cluster told no shards — the first of any.
pub fn superseding_primary(
    shard: &str,
    primaries: &[String],
    shard_of: &std::collections::HashMap<String, String>,
) -> Option<String> {
    primaries.iter().find(|p| shard_of.is_empty() || shard_of.get(*p).is_some_and(|s| s == shard)).cloned()
}

#[cfg(test)]
mod superseding_tests {
    use super::*;

    #[test]
    fn shards_follow_the_address_of_their_name() {
        let theirs = vec![("s1".to_owned(), "b:1".to_owned()), ("s0".to_owned(), "a:1".to_owned())];
        let got = pair_shard_endpoints(&["s0".into(), "s1".into(), "s2".into()], &theirs);
        assert_eq!(got[0], ("s0".into(), Ok("a:1".into())));
        assert_eq!(got[1], ("s1".into(), Ok("b:1".into())));
        assert!(got[2].1.as_ref().is_err_and(|e| e.contains("no shard named s2")), "{got:?}");
        // One on each side: whatever the names.
        let got = pair_shard_endpoints(&["main".into()], &[("s0".into(), "a:1".into())]);
        assert_eq!(got[0].1, Ok("a:1".into()));
    }

    #[test]
    fn a_shard_follows_only_its_counterparts_primary() {
        let primaries = vec!["b:1".to_owned(), "a:1".to_owned()];
        let shard_of: std::collections::HashMap<String, String> =
            [("a:1", "s0"), ("a:2", "s0"), ("b:1", "s1"), ("b:2", "s1")]
                .into_iter()
                .map(|(e, s)| (e.to_owned(), s.to_owned()))
                .collect();
        assert_eq!(superseding_primary("s0", &primaries, &shard_of).as_deref(), Some("a:1"));
        assert_eq!(superseding_primary("s1", &primaries, &shard_of).as_deref(), Some("b:1"));
        // A shard whose counterpart has no primary follows nothing (it stays as it is).
        assert_eq!(superseding_primary("s2", &primaries, &shard_of), None);
        assert_eq!(superseding_primary("s0", &["b:1".to_owned()], &shard_of), None);
        // Told no shards (one-shard clusters, a FailoverRequest's record): any primary.
        let none = std::collections::HashMap::new();
        assert_eq!(superseding_primary("main", &primaries, &none).as_deref(), Some("b:1"));
    }
}
