//! Shared test support: a fresh database per test, NetBox's rules, the sidecar, and polling
//! waits.

pub mod binary;
mod checks;
pub mod cli;
pub mod db;
pub mod rules;
pub mod sidecar;
pub mod standard_webhooks;
pub mod tls;
pub mod wait;
