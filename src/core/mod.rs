//! Pure decisions: no client, no clock, no I/O. Controllers gather facts, call these
//! functions and apply what they return; this is where the unit and property tests live.

pub mod dag;
pub mod instances;
pub mod lease;
pub mod lock;
pub mod member;
pub mod redirect;
pub mod saga;
pub mod sentinel;
pub mod shard;
pub mod site;
pub mod standby;
pub mod vocabulary;
