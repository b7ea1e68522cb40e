//! Integration tests: one binary, each test with its own database on the real PostgreSQL.

mod support;

/// Bad input: each case a test, each with a clear error and nothing lost; one file per kind of
/// input (tests/it/bad_input/*.rs), the test named below as `file::test`.
///
/// | case | where the error shows | test |
/// | --- | --- | --- |
/// | body_template does not parse | delivery `rejected`, `last_error` (field, line, what to do) | `templates::body_template_that_does_not_parse` |
/// | body_template fails at render time | delivery `rejected`, `last_error` quotes the expression | `templates::body_template_that_fails_at_render_time` |
/// | undefined variable path in a template | delivery `rejected`, `last_error` names the path | `templates::undefined_variable_path_in_a_template` |
/// | payload_url renders an invalid URL | delivery `rejected`, `last_error` | `templates::payload_url_rendering_an_invalid_url` |
/// | payload_url with an unsupported scheme | delivery `rejected`, `last_error` | `templates::payload_url_with_an_unsupported_scheme` |
/// | unreachable host | each `attempt.error`, then `dead` | `sending::unreachable_host` |
/// | DNS failure | each `attempt.error`, then `dead` | `sending::dns_failure` |
/// | ca_file_path that does not exist | each `attempt.error`, then `dead`; `check` | `sending::ca_file_that_does_not_exist` |
/// | ca_file_path that is not a certificate | each `attempt.error`, then `dead`; `check` | `sending::ca_file_that_is_not_a_certificate` |
/// | TLS name mismatch | each `attempt.error`, then `dead` | `sending::tls_name_mismatch` |
/// | conditions not a JSON object (list, string) | delivery `rejected`, `last_error`; `check` | `conditions::conditions_that_are_a_list`, `conditions::conditions_that_are_a_string` |
/// | each invalid condition form of reference docs 4.3 | delivery `rejected`, `last_error`; `check` | `conditions::condition_*` (14 more tests) |
/// | unknown operator | delivery `rejected`, `last_error`; `check` | `conditions::condition_with_an_unknown_operator` |
/// | header line without a colon | sent without it, as NetBox does; `check` PROBLEM naming the line | `headers::header_line_without_a_colon` |
/// | header with control characters | delivery `rejected`, `last_error` (header_safe); `check` | `headers::header_with_control_characters` |
/// | a 10 MB text field | delivered whole | `headers::ten_megabyte_text_field` |
/// | webhook deleted while deliveries are pending | pending ones sent; later ones `rejected` saying what to do | `mid_flight::webhook_deleted_while_deliveries_are_pending` |
/// | rule disabled mid-flight | queued ones sent; no new ones | `mid_flight::rule_disabled_mid_flight` |
/// | watched table dropped and recreated | nothing stops; deletes rendered from before-images | `mid_flight::watched_table_dropped_and_recreated` |
/// | row vanished without a trace (TRUNCATE) | no payload of nulls; log line | `mid_flight::row_vanished_without_a_trace` |
/// | database unreachable at start | exit 4, stderr hint | `database::database_unreachable_at_start` |
/// | database lost mid-run | log lines; reconnects forever, delivers after | `database::database_lost_mid_run` |
/// | a batch that fails every time | log line with the cause; the backoff grows to its cap | `after_the_fix::a_batch_that_keeps_failing_backs_off_further` |
/// | wrong password (a refused role) | exit 4, stderr names the role | `database::wrong_password_or_role` |
/// | config file with an unknown key | exit 3, stderr names the key and the valid ones | `config_files::config_with_an_unknown_key` |
/// | bad duration | exit 3, stderr names the key and the format | `config_files::config_with_a_bad_duration` |
/// | zero poll interval | exit 3 | `config_files::config_with_a_zero_poll_interval` |
/// | conflicting options | exit 3 | `config_files::config_with_conflicting_options` |
/// | bad event rule rows (NULL event_types, unknown action type, odd action_data) | one log line each; others load | `event_rules::bad_event_rule_rows_are_skipped` |
/// | a rejection's URL holding a token | the log line names the field only; the row keeps the detail | `event_rules::rejection_logs_hold_no_url_tokens` |
/// | colour codes in logs off a terminal | none | `event_rules::bad_event_rule_rows_are_skipped` |
/// | every misconfiguration `check` can find | `check` PROBLEM lines, exit 5; config errors exit 3 | `check::check_catches_each_misconfiguration` |
/// | re-sending a rejected delivery after the fix | `replay --rerender` | `after_the_fix::rejected_delivery_is_sent_after_the_fix`, `after_the_fix::rejected_for_a_deleted_webhook_is_sent_after_the_rule_is_repointed` |
mod bad_input;
/// Bounded batches: a backlog read a few changes at a time, each event as of its commit.
mod batches;
/// The SQL capture: triggers, watch management, self-healing, least privilege.
mod capture;
/// The sidecar end to end: captured changes delivered to a real receiver.
mod deliver;
/// Which changes become webhooks, merged, matched and rendered how.
mod events;
/// Hostile receivers (NUL bytes, invalid UTF-8, huge bodies, odd status lines and headers),
/// a host clock behind the database's, redirects, and SIGTERM with a request held: each shows
/// its local outcome in the delivery log while an unrelated webhook is delivered.
mod hostile_receivers;
/// Installing: every command before `migrate`, on a database without NetBox or as a role without
/// rights, says what to run; a refused `migrate` leaves nothing; the documented systemd layout
/// read by an unprivileged uid.
mod installing;
/// Failure is local: runaway templates, schema drift, revoked grants and failing conditions
/// cost one delivery or one model's events, never the batch; drift heals without a restart.
mod local_failure;
/// Applying the migrations, by the binary and by a DBA with psql.
mod migrate;
/// Which NetBox release the database holds (its migrations): named by `check`, an unknown one
/// refused by `check` and `run` unless `[netbox] version` overrides it.
mod netbox_release;
/// What the NetBox plugin's pages read and do: views without secrets, NetBox's role's grants.
mod netbox_ui;
/// Operating it: commands, SQL cookbook, metrics, least privilege, uninstall.
mod operate;
/// PostgreSQL like psql: TLS by sslmode against a TLS-only cluster, PG* variables, ~/.pgpass,
/// and no secret in the logs at any level.
mod postgres_client;
/// The assembler's statements, prepared once per connection.
mod prepared;
/// The heads of the per-object queues: claims that cost what they return, deep queues, what
/// blocks and what releases a queue, replays.
mod queue_heads;
/// What NetBox computes from related rows: config contexts, cable peers and paths.
mod related;
/// Several sidecars, crashes, shutdowns and per-object order.
mod resilience;
/// Delivery semantics a receiver relies on (issue 13): replay identity, status classes, blocked
/// heads, pauses, Standard Webhooks, rate limits.
mod semantics;
/// Silent gaps made visible: stalls in /metrics, /readyz and the documented alerts, TRUNCATE,
/// one configuration per database, numbers beyond u64 and f64.
mod stalls;
