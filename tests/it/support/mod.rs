//! Shared test support: a fresh database per test, the sidecar, and polling waits.

pub mod db;
pub mod sidecar;
pub mod tls;
pub mod wait;
