//! The words the operator writes into `status.conditions` and Events, defined in one place:
//! condition types ([`ConditionType`]), reasons of conditions and of Events ([`Reason`]) and
//! Event actions ([`Action`]).
//!
//! Each word is spelled exactly as its variant is named (UpperCamelCase, as the Kubernetes API
//! conventions ask of reasons). Users, alerts and the integration tests match on these
//! strings: renaming a variant changes the API.

/// Defines a vocabulary enum: the variants, `ALL`, `as_str` (the
/// variant's name), `Display`, and an order by spelling (so that maps and sorts keyed by a
/// word order as they would by its string).
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every word, in declaration order.
            pub const ALL: &[Self] = &[$( Self::$variant, )+];

            /// The word as written to the API: the variant's name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => stringify!($variant), )+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        /// By spelling, not declaration order.
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.as_str().cmp(other.as_str())
            }
        }
    };
}

vocabulary! {
    /// The `type` of a condition in the status of an Understudy resource.
    pub enum ConditionType {
        /// HaCluster: every shard has a healthy primary that takes writes; ProtectionGroup:
        /// every pair replicates from the production site (or why not, or how the last
        /// planned failover went).
        Ready,
        /// HaCluster: a declared member is unhealthy or a shard is blocked from failing over.
        Degraded,
        /// HaCluster: a promotion is in progress (a shard has a target primary recorded).
        FailingOver,
        /// HaCluster: `spec.paused` is set; the monitor observes and never acts.
        Paused,
        /// HaCluster: the Services and the redirect ConfigMap route clients to the current
        /// roles (False says what the last routing write could not do).
        Routed,
        /// HaCluster: False when the monitor abandoned a recorded promotion; the reason and
        /// message say why (read by ShardFailover and FailoverRequest to report it).
        LastPromotion,
        /// Any Understudy resource: False when the operator cannot read the object (it passed
        /// the API server's schema but not the operator's types).
        SpecValid,
        /// ShardFailover and FailoverRequest: the operation ended; True when it succeeded.
        Complete,
        /// ProtectionGroup: False while a requested planned failover is refused (removed when
        /// none is wanted or one starts).
        FailoverAllowed,
        /// ShardFailover: True while another operation holds the lock of a shard to fail over.
        DatabaseBusy,
        /// HaCluster with `spec.instances`: True while members are created, added, removed,
        /// restarted, resized or upgraded (the reason says which); False with `UpToDate` when
        /// every member runs the spec, or with the reason a change stopped.
        Progressing,
        /// HaCluster with `spec.instances`: True while changed parameters that the engine
        /// reads only at start wait for the members' restart (the message names them).
        RestartRequired,
    }
}

vocabulary! {
    /// The `reason` of a condition or of an Event (one word may serve as both).
    pub enum Reason {
        // HaCluster Ready / Degraded.
        /// HaCluster Ready=False: the credentials Secret (or its key) is missing; members are
        /// not touched. ProtectionGroup Ready=False: a pair cluster's Secret cannot be read.
        SecretNotFound,
        /// HaCluster Ready=False: members refuse the credentials in the cluster's Secret.
        Unauthorized,
        /// HaCluster Ready=False: members answer without stating a role (an HA agent's
        /// server error, or a status other than MAIN/BACKUP); they are neither trusted in
        /// their last role nor promoted, and a primary answering so is not failed over from.
        AmbiguousAnswer,
        /// HaCluster Ready=False: `failover.agentLease` breaks the timing rule of
        /// [`crate::core::lease`] (too long to end before another member may be promoted, or
        /// too short to outlast two heartbeats); members are not touched.
        InvalidAgentLease,
        /// HaCluster Ready=False: a self-fencing primary has too few replicas
        /// (min-replicas-to-write) and refuses writes.
        PrimaryRefusesWrites,
        /// HaCluster Ready=True: every shard has a healthy primary.
        PrimaryHealthy,
        /// HaCluster Ready=False: waiting for a healthy primary.
        NoPrimary,
        /// HaCluster Degraded=True: fewer members are healthy than declared.
        MembersUnhealthy,
        /// HaCluster Degraded=False: every declared member is healthy.
        AllMembersHealthy,
        /// HaCluster Degraded=True: a member has transactions its primary never had (errant
        /// GTIDs, listed); it is kept out, read-only and unattached, until it is rebuilt.
        ErrantTransactions,
        // HaCluster Ready / Degraded: why a shard is not failed over (shard plan blocked).
        /// HaCluster Ready/Degraded: a standby cluster's upstream primary is not known.
        UpstreamUnknown,
        /// HaCluster Ready: a ProtectionGroup protects this cluster as its DR side and has not
        /// published the relation yet (a DR cluster created or re-created under a group):
        /// nothing is elected.
        AwaitingProtectionGroup,
        /// HaCluster Ready/Degraded: the primary is lost and failover mode is manual (a
        /// FailoverRequest is needed).
        ManualFailover,
        /// HaCluster Ready/Degraded: the lost primary could not be fenced (onTimeout: Abort).
        /// HaCluster LastPromotion=False: a promotion was abandoned for that reason.
        FenceTimedOut,
        /// HaCluster Ready/Degraded: the primary is lost; waiting `failoverDelay`.
        FailoverDelay,
        /// HaCluster Ready/Degraded: the primary is lost and no replica may be promoted.
        /// ShardFailover Complete=False: error code `no_eligible_replica`.
        NoEligibleReplica,
        /// HaCluster Ready/Degraded: waiting for every member to answer once before the first
        /// primary is chosen.
        Bootstrapping,
        /// HaCluster Ready/Degraded: no member can be the first primary.
        NoEligibleMember,
        /// HaCluster Ready/Degraded: another operation holds the shard's lock. ShardFailover
        /// DatabaseBusy=True: waiting for another operation's lock. ProtectionGroup
        /// Ready=False (and Warning, action PlannedFailover): a pair cluster's lock is held.
        DatabaseBusy,
        // HaCluster FailingOver.
        /// HaCluster FailingOver=True: a promotion is in progress.
        Promoting,
        /// HaCluster FailingOver=False: no promotion in progress.
        Idle,
        // HaCluster Paused.
        /// HaCluster Paused=True: `spec.paused` is set.
        Paused,
        /// HaCluster Paused=False: the monitor acts on failures.
        Active,
        // HaCluster Routed.
        /// HaCluster Routed=True: the Services route to the current roles.
        Routed,
        /// HaCluster Routed=True: `spec.routing.enabled` is false.
        RoutingDisabled,
        /// HaCluster Routed=False: a member's clientAddress is ignored (no
        /// `--allow-client-address`).
        ClientAddressNotAllowed,
        /// HaCluster Routed=False: `spec.redirect.restart` is ignored (no
        /// `--allow-workload-restarts`).
        WorkloadRestartsNotAllowed,
        /// HaCluster Routed=False: the agent redirect ConfigMap could not be written.
        RedirectFailed,
        /// HaCluster Routed=False: another served cluster claims the same discovery master
        /// name (`spec.routing.masterName`); the discovery endpoint serves it for neither.
        MasterNameConflict,
        /// HaCluster Routed=False: endpoints Kubernetes cannot route to (loopback,
        /// link-local) were left out of the Services.
        Unroutable,
        /// HaCluster Routed=False: routing objects with our names belong to someone else;
        /// Progressing=False: a member's pod or volume name is taken by an object that is not
        /// the cluster's.
        NameConflict,
        /// HaCluster Progressing=False: the cluster is being deleted and its volumes could not
        /// be made to follow `pvcRetention.whenDeleted` (seed: DELETION-ERROR); retried, and the
        /// deletion waits.
        DeletionError,
        /// HaCluster Routed=False: the pod members' ACL NetworkPolicy conflicts with an
        /// existing object.
        PolicyConflict,
        // HaCluster LastPromotion (the saga's abandon reasons).
        /// HaCluster LastPromotion=False: a switchover was abandoned because the candidate did
        /// not catch up in time (an operation with onTimeout: Force may then force it).
        DrainTimedOut,
        /// HaCluster LastPromotion=False: the old primary answers but could not be demoted.
        /// ProtectionGroup Ready=False (Warning, action PlannedFailover): a production
        /// primary could not be demoted.
        DemoteFailed,
        /// HaCluster LastPromotion=False: promoting the candidate failed after the old primary
        /// was drained (it was given its role back). ProtectionGroup Ready=False (Warning,
        /// action PlannedFailover): a DR primary could not be promoted.
        PromoteFailed,
        // HaCluster Events.
        /// HaCluster Normal Event (action Detach): a member removed from the membership was
        /// detached.
        MemberDetached,
        /// HaCluster Normal Event (action Demote): a member acting as primary that is not the
        /// shard's primary was demoted.
        Demoted,
        /// HaCluster Warning Event (action Reattach): a re-attached old primary had writes its
        /// successor never received.
        WritesLost,
        /// HaCluster Normal Event (action Promote): a replica replaced a lost or switched-over
        /// primary. ProtectionGroup Ready=True (Normal, action PlannedFailover): a planned
        /// failover finished.
        FailedOver,
        /// HaCluster Normal Event (action Promote): a shard's first primary was chosen
        /// (bootstrap or adoption).
        PrimaryElected,
        /// HaCluster Warning Event (action Promote): a recorded promotion was abandoned (see
        /// LastPromotion).
        PromotionAbandoned,
        /// HaCluster Warning Event (action Promote): the promotion failed; the target stays
        /// recorded and is retried.
        PromotionFailed,
        /// HaCluster Warning Event (action Failover): an automatic failover started.
        /// ProtectionGroup Ready=False (Normal, action PlannedFailover): a planned failover is
        /// in progress.
        FailingOver,
        // Any resource.
        /// SpecValid=False (Warning, action Validate): the operator cannot read the object.
        InvalidObject,
        // ShardFailover and FailoverRequest Complete (and their Events).
        /// ShardFailover and FailoverRequest Complete=True (Normal, action ShardFailover or
        /// FailoverRequest): the operation succeeded.
        Succeeded,
        /// FailoverRequest Complete=False (Warning, action FailoverRequest): an item failed.
        Failed,
        /// FailoverRequest Complete=False (Warning, action FailoverRequest): failed items
        /// were rolled back.
        RolledBack,
        /// FailoverRequest Complete=False (Warning, action FailoverRequest): status.task is
        /// not one this operator wrote; abandoned.
        InvalidStatus,
        /// FailoverRequest Complete=False (Warning, action FailoverRequest): not finished
        /// before its deadline; abandoned. ProtectionGroup Ready=False (Warning, action
        /// PlannedFailover): the deadline passed while the operator was away.
        DeadlineExceeded,
        /// ShardFailover Complete=True: a dry run; nothing was changed.
        DryRun,
        /// HaCluster Event (Normal, action FailoverRequest): a FailoverRequest ended the
        /// cluster's standby relation (status.standbyReleased) to fail it over to primary.
        StandbyReleased,
        /// HaCluster Event (Normal, action FailoverRequest): a FailoverRequest rolled its
        /// failover to primary back; the cluster follows its upstream again.
        StandbyRestored,
        // ShardFailover Complete=False (Warning, action ShardFailover): the error code
        // (`status.errorCode`, snake_case) in UpperCamelCase.
        /// ShardFailover Complete=False: error code `shard_uids_required` (no uid given).
        ShardUidsRequired,
        /// ShardFailover Complete=False: error code `shard_not_exist` (a uid names no member).
        ShardNotExist,
        /// ShardFailover Complete=False: error code `shard_is_slave` (a uid names a replica).
        ShardIsSlave,
        /// ShardFailover Complete=False: error code `failover_shards_different_bdb` (uids of
        /// more than one HaCluster).
        FailoverShardsDifferentBdb,
        /// ShardFailover Complete=False: error code `shard_uid_ambiguous` (a uid names members
        /// of several HaClusters).
        ShardUidAmbiguous,
        /// ShardFailover Complete=False: error code `db_busy` (another operation held a lock
        /// until the deadline).
        DbBusy,
        /// ShardFailover Complete=False: error code `failover_failed` (a step failed or timed
        /// out).
        FailoverFailed,
        // ProtectionGroup Ready / FailoverAllowed.
        /// ProtectionGroup Ready=False (and Warning, action PlannedFailover): a site's API
        /// server or a pair's HaCluster cannot be read.
        SiteUnreachable,
        /// ProtectionGroup Ready=False: a pair's HaCluster does not exist.
        ClusterNotFound,
        /// ProtectionGroup Ready=False: a pair's HaCluster is not a Redis or Mysql cluster, or
        /// the two clusters of a pair run different engines.
        UnsupportedEngine,
        /// ProtectionGroup Ready=False: a pair's HaCluster is not exactly one static shard.
        UnsupportedCluster,
        /// ProtectionGroup Ready=False and FailoverAllowed=False: the group has no
        /// replication pairs.
        NoReplicationPairs,
        /// ProtectionGroup FailoverAllowed=False: a planned failover is allowed only in phase
        /// Protected or ErrorReversing.
        NotProtected,
        /// ProtectionGroup Ready=True (and Normal Event, action Replicate): every pair
        /// replicates from the production site.
        Protected,
        /// ProtectionGroup Ready=False: some pairs do not replicate.
        NotReplicating,
        /// ProtectionGroup Ready=False (Warning, action PlannedFailover): the planned failover's
        /// progress could not be recorded.
        StatusWriteFailed,
        /// ProtectionGroup Ready=False (Warning, action PlannedFailover): a pair cannot move
        /// now; nothing was changed.
        PairNotReady,
        /// ProtectionGroup Ready=False (Warning, action PlannedFailover): writes could not be
        /// paused at the production site; nothing was changed.
        StopWritesFailed,
        /// ProtectionGroup Ready=False (Warning Event, action ForcedFailover): production was
        /// moved by force; the lost site is not protected until it returns and is fenced.
        ForcedFailover,
        /// ProtectionGroup (Normal Event, action Fence): a site lost in a forced failover
        /// returned and its cluster was made to follow the new production site.
        SiteFenced,
        /// ProtectionGroup (Normal Event, action DryRun): a dry run was answered in
        /// `status.dryRun`. ShardFailover/FailoverRequest Complete=True: a dry run.
        DryRunAnswered,
        /// ProtectionGroup Ready=False (Normal Event, action Detach): protection is stopped
        /// (spec.protection Stopped, or the group is being deleted) and the pairs are detached.
        ProtectionStopped,
        /// HaCluster Ready=False: detached from its ProtectionGroup with policy ReadOnly; it
        /// replicates from nothing and nothing in it is made writable.
        DetachedReadOnly,
        /// HaCluster Ready=False (Warning Event, action Fence): a member of the other site of
        /// its ProtectionGroup acts as a primary (a forced failover made it production while
        /// this site was cut off): this cluster follows it and nothing here is writable.
        SiteSuperseded,
        // HaCluster Progressing (spec.instances), and the lifecycle's Events.
        /// Progressing=True: the members of a new cluster are being created (seed: BUILD).
        Creating,
        /// Progressing=True: a replica is being added (members was raised).
        AddingReplica,
        /// Progressing=True: a replica is being removed (members was lowered).
        RemovingReplica,
        /// Progressing=True: members restart one at a time, replicas first (seed: REBOOT).
        Restarting,
        /// Progressing=True: members move to a new image one at a time (seed: UPGRADING).
        Upgrading,
        /// Progressing=True: members get new resources (the flavor), in place one at a time
        /// where their node can, otherwise restarted one at a time.
        Resizing,
        /// Progressing=True: members restart one at a time with new engine parameters.
        Reconfiguring,
        /// Progressing=True: a member is rebuilt from the primary (the annotation
        /// `understudy.dev/rebuild`): its pod and volume are replaced and it resynchronises.
        Rebuilding,
        /// Progressing=False: a rebuild request cannot be carried out (the primary, not a
        /// member, or transactions it would discard that the request did not name); nothing
        /// was touched.
        RebuildRefused,
        /// Progressing=False: every member runs the current spec.
        UpToDate,
        /// Progressing=False: a member does not come up; the change waits (the primary is not
        /// touched) until it does or the spec is corrected.
        MemberNotReady,
        /// Progressing=False: the switchover that moves the primary off a member to restart
        /// failed; it is retried.
        SwitchoverFailed,
        /// Progressing=False: the cluster's name is too long to name its pods.
        NameTooLong,
        /// Progressing=False: a larger volume was asked of the only member, whose volume
        /// cannot be expanded in place; rebuilding it would lose its data.
        VolumeNotExpandable,
        /// Progressing=False: a member refused a parameter's value; new members keep starting
        /// with the parameters in force (members that took an earlier value live keep it).
        InvalidParameter,
        /// RestartRequired=True: the parameters the message names apply at the next restart.
        ParametersNeedRestart,
        /// RestartRequired=False: every member runs with spec.instances.parameters.
        ParametersApplied,
        /// ProtectionGroup Ready=False (Warning, action PlannedFailover): the DR site did not
        /// catch up; writes resumed at the production site.
        SyncTimeout,
    }
}

vocabulary! {
    /// The `action` of an Event: what the operator did, or tried, about the object.
    pub enum Action {
        /// HaCluster: promote a member (failover, switchover, bootstrap).
        Promote,
        /// HaCluster: demote a member acting as primary that should not be.
        Demote,
        /// HaCluster: an automatic failover starts.
        Failover,
        /// HaCluster: re-attach a returned old primary as a replica.
        Reattach,
        /// HaCluster: detach a member removed from the membership. ProtectionGroup: detach
        /// the pairs (protection stopped or the group deleted).
        Detach,
        /// Any resource: read (validate) the object.
        Validate,
        /// ShardFailover: the operation as a whole.
        ShardFailover,
        /// FailoverRequest: the request as a whole.
        FailoverRequest,
        /// ProtectionGroup: a planned failover between the sites.
        PlannedFailover,
        /// ProtectionGroup: replicate from the production site to the DR site.
        Replicate,
        /// ProtectionGroup: a forced failover (production site lost).
        ForcedFailover,
        /// ProtectionGroup, HaCluster: make a lost site's cluster follow the new production
        /// site when it returns.
        Fence,
        /// ProtectionGroup: answer a dry run.
        DryRun,
        /// HaCluster (spec.instances): create a member's pod or volume.
        CreateMember,
        /// HaCluster (spec.instances): delete a member's pod (to restart or remove it).
        DeleteMember,
        /// HaCluster (spec.instances): move the primary off a member before restarting it.
        Switchover,
        /// HaCluster (spec.instances): a lifecycle change starts, ends or stops.
        Lifecycle,
        /// HaCluster (spec.instances): give a member's pod new resources in place.
        Resize,
        /// HaCluster (spec.instances): rebuild a member from the primary.
        Rebuild,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// `^[A-Z][A-Za-z0-9]*$`.
    fn upper_camel(s: &str) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphanumeric())
    }

    fn check(words: &[&'static str]) {
        assert!(!words.is_empty());
        for w in words {
            assert!(upper_camel(w), "{w:?} is not UpperCamelCase ASCII");
        }
        let unique: HashSet<_> = words.iter().collect();
        assert_eq!(unique.len(), words.len(), "duplicates in {words:?}");
    }

    #[test]
    fn words_are_upper_camel_case_and_unique() {
        check(&ConditionType::ALL.iter().map(|w| w.as_str()).collect::<Vec<_>>());
        check(&Reason::ALL.iter().map(|w| w.as_str()).collect::<Vec<_>>());
        check(&Action::ALL.iter().map(|w| w.as_str()).collect::<Vec<_>>());
    }

    #[test]
    fn words_are_spelled_as_their_variants_and_ordered_by_spelling() {
        assert_eq!(Reason::NoEligibleReplica.as_str(), "NoEligibleReplica");
        assert_eq!(ConditionType::LastPromotion.to_string(), "LastPromotion");
        assert_eq!(Action::PlannedFailover.as_str(), "PlannedFailover");
        let mut sorted = Reason::ALL.to_vec();
        sorted.sort();
        let mut by_str: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        by_str.sort();
        assert_eq!(sorted.iter().map(|r| r.as_str()).collect::<Vec<_>>(), by_str);
    }
}
