-- Experiment, not a migration: only the transaction id's default changed, txid_current() (a
-- bigint: the same 64-bit value) instead of pg_current_xact_id()::text::bigint.
alter table netbox_outbox.change alter column txid set default txid_current();
