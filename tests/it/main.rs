//! Integration tests: one binary, each test with its own database on the real PostgreSQL.

mod support;

/// The SQL capture: triggers, watch management, self-healing, least privilege.
mod capture;
/// The sidecar end to end: captured changes delivered to a real receiver.
mod deliver;
/// Which changes become webhooks, merged, matched and rendered how.
mod events;
/// Applying the migrations, by the binary and by a DBA with psql.
mod migrate;
/// Operating it: commands, SQL cookbook, metrics, least privilege, uninstall.
mod operate;
/// What NetBox computes from related rows: config contexts, cable peers and paths.
mod related;
/// Several sidecars, crashes, shutdowns and per-object order.
mod resilience;
