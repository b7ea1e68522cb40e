//! Shared test support: a fresh database per test, a webhook receiver, and polling waits.

pub mod db;
pub mod wait;
