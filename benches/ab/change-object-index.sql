-- Experiment, not a migration: the b-tree the bounded batches may need, to find one object's
-- changes (content type, object, id) without reading a whole batch. Measured for its cost on
-- the write path: every captured row adds an entry, on every partition.
create index change_object on netbox_outbox.change (content_type_id, object_id, id);
