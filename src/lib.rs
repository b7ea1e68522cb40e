//! netbox-outbox: NetBox's webhooks from a transactional outbox.
//!
//! # Layout
//!
//! The SQL half (in `migrations/`) captures every committed change to NetBox's tables into
//! `netbox_outbox.change`, in the writer's own transaction. This crate is the other half, the
//! sidecar:
//!
//! - [`migrations`]: the embedded SQL migrations, applied or printed for a DBA.
//! - [`db`]: connections to NetBox's database, as a libpq client makes them (TLS by `sslmode`,
//!   the `PG*` variables, `~/.pgpass`).
//!
//! Delivery is at least once: a webhook may arrive twice (after a crash, or when a receiver
//! answers after its timeout), never zero times. Each request carries a stable delivery id so
//! receivers can drop duplicates.

pub(crate) mod assemble;
pub(crate) mod change;
pub mod cli;
pub(crate) mod commands;
pub(crate) mod condition;
pub mod config;
pub mod db;
pub mod deliver;
pub(crate) mod health;
pub(crate) mod metrics;
pub mod migrations;
pub(crate) mod netbox;
pub(crate) mod python;
pub mod receiver;
pub(crate) mod reconnect;
pub(crate) mod request;
pub(crate) mod rules;
pub mod sidecar;
pub(crate) mod template;
pub mod wakeup;

/// An error and its causes on one line, for logs: `outer: cause: root cause`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
