-- Experiment, not a migration: the change ids from a sequence cached 64 ids per session. NOT
-- acceptable as is: a session draws ids from its own block, so a later change of an object can
-- get a lower id than an earlier one from another session, and per-object order by id is lost.
-- Measured only to know what the uncached sequence costs.
alter sequence netbox_outbox.change_id_seq cache 64;
