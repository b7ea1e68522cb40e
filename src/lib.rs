//! netbox-outbox: NetBox's webhooks from a transactional outbox.
//!
//! # A webhook's life, and where each step happens
//!
//! ```text
//!  capture ──► change ──► event ──► delivery ──► attempt
//!   (SQL)      (read,     (rule     (frozen      (sent, its
//!              merged)    matched)  request)     outcome logged)
//! ```
//!
//! 1. **Capture** (SQL, `migrations/`): a trigger on each watched NetBox table writes the row
//!    before the change into `netbox_outbox.change`, in the writer's own transaction, and wakes
//!    the sidecar only while it sleeps ([`wakeup`]). Nothing in this crate runs there.
//! 2. **Changes** ([`change`]): what a batch reads, one object at a time: row images, NetBox's
//!    change log entries, merged into one change per object and transaction the way NetBox
//!    merges a request.
//! 3. **Events** ([`assemble`]): one sidecar at a time reads every transaction committed since
//!    the last batch, renders each change as NetBox would ([`netbox`]: the model catalogue and
//!    the renderer, with [`python`] for Python's value forms), and matches NetBox's event rules
//!    and webhooks ([`rules`], [`condition`]). A model that cannot be read is deferred, not the
//!    batch failed.
//! 4. **Deliveries** (`assemble::build`, with [`request`] and [`template`]): each matching rule
//!    becomes a delivery whose HTTP request (URL, headers, body, signature) is rendered and
//!    frozen in the same transaction as the batch's read position. `replay --rerender` and
//!    `test-webhook` use the same builder. A Standard Webhooks secret is not frozen: each attempt
//!    is signed when sent ([`standard_webhooks`]).
//! 5. **Attempts** ([`deliver`]): every sidecar claims due deliveries (`FOR UPDATE SKIP LOCKED`,
//!    leases), sends them outside any transaction, and records each outcome; retries, dead
//!    letters and pauses follow the schedule.
//!
//! Around them: [`sidecar`] runs the tasks until shutdown, each task owning one connection that
//! [`reconnect`] keeps alive, [`db`] makes every connection as a libpq client would (TLS by
//! `sslmode`, `PG*` variables, `~/.pgpass`), [`migrations`] applies
//! or prints the SQL, [`config`] parses and checks the configuration, [`health`] and [`metrics`]
//! serve `/healthz`, `/readyz` and `/metrics`, [`cli`] and [`commands`] are the operator
//! commands (the `receive` command's request bin, [`commands::receive::Receiver`], is also the
//! receiver of the tests, benchmarks and demo).
//!
//! # What is public
//!
//! The binary needs [`cli`]; the integration tests, benchmarks and demo need [`config`], [`db`],
//! [`migrations`], [`sidecar`], [`wakeup`], [`deliver`]'s queue and the request bin of
//! [`commands::receive`]. Everything else is `pub(crate)`, so the compiler reports what nothing
//! uses.
//!
//! Delivery is at least once: a webhook may arrive twice (after a crash, or when a receiver
//! answers after its timeout), never zero times. Each request carries a stable delivery id so
//! receivers can drop duplicates.

// The layout above maps the crate-private modules too (`cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub(crate) mod assemble;
pub(crate) mod change;
pub mod cli;
pub mod commands;
pub(crate) mod condition;
pub mod config;
pub mod db;
pub mod deliver;
pub(crate) mod health;
pub(crate) mod metrics;
pub mod migrations;
pub(crate) mod netbox;
pub(crate) mod python;
pub(crate) mod reconnect;
pub(crate) mod request;
pub(crate) mod rules;
pub mod sidecar;
pub(crate) mod standard_webhooks;
pub(crate) mod template;
pub mod wakeup;

/// How many threads `items` pieces of CPU-bound work (changes to render, requests to build)
/// are split among: one per core this process may run on, each with at least
/// [`ITEMS_PER_THREAD`] (fewer are not worth a thread).
pub(crate) fn threads_for(items: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    (items / ITEMS_PER_THREAD).clamp(1, cores)
}

/// The fewest items [`threads_for`] gives a thread of their own.
pub(crate) const ITEMS_PER_THREAD: usize = 64;

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
