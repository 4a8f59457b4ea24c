//! Understudy: a Kubernetes operator that owns the roles of replicated
//! stateful services.
//!
//! - [`resources`]: the custom resource types (the API).
//! - [`core`]: pure decisions — no client, no clock, no I/O.
//! - [`engines`]: how the operator talks to members.
//! - [`controllers`]: gather facts, ask the core, apply what it returns.
//! - [`plugin`]: `kubectl understudy`, the command line for people operating clusters.

pub mod agent;
pub mod agent_conformance;
pub mod controllers;
#[cfg(feature = "testbed")]
pub mod controlplane;
pub mod core;
#[cfg(feature = "testbed")]
pub mod demo;
pub mod engines;
pub mod faults;
pub mod leader;
#[cfg(feature = "testbed")]
pub mod localmysql;
#[cfg(feature = "testbed")]
pub mod localredis;
pub mod metrics;
#[cfg(feature = "testbed")]
pub mod nodecluster;
pub mod operator;
pub mod plugin;
pub mod readiness;
pub mod resources;
pub mod sentinel;
#[cfg(feature = "testbed")]
pub mod testclients;
