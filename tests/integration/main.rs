//! Integration tests against a real kube-apiserver + etcd (built from the Go module proxy,
//! see tools/controlplane) started once for this test binary.

mod agent;
mod api;
mod crash;
mod demo;
mod deploy;
mod engine_mysql;
mod engine_redis;
mod failover_request;
mod fencing;
mod hacluster_agent;
mod hacluster_mysql;
mod hacluster_pods;
mod hacluster_redis;
mod hostile;
mod instances;
mod lifecycle;
mod operator;
mod outage;
mod plugin;
mod protection_group;
mod protection_group_agent;
mod sentinel;
mod shard_failover;
mod site_loss;
mod standby;
mod standby_failover;
mod supervision;
mod support;
mod unreadable;
mod validation;
