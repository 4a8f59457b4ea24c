//! The node tier: what users do in a cluster, in a real one-node Kubernetes (kubelet,
//! containerd, runc, CNI bridge, kube-proxy) started once for this test binary by
//! tools/node/node.sh. The operator runs as pods from the image built here (tools/image.sh)
//! and installed by Helm; members are pods; clients go through Services.
//!
//! Needs root. `UNDERSTUDY_NODE_TIER=skip` opts out (every test here then passes without
//! doing anything, and tools/test.sh says so in its summary).

mod client;
mod discovery;
mod freeze;
mod install;
mod instances;
mod mysql_pods;
mod operator_pods;
mod redis_pods;
mod support;
