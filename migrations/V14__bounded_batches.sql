-- V14: an index on captured changes by object, for batches of bounded size.
--
-- A batch now reads a prefix of the unread transactions (about `assembly.batch_changes`
-- changes) instead of everything committed since the previous batch. The row after an object's
-- last change in the batch is then not always the row as it stands: a later transaction, left
-- for the next batch, may have changed the object again. The capture keeps the row *before* each
-- change, so the state after the batch is the `before` of the object's next change, and this
-- index finds that change (and checks that no change left for later committed before one in the
-- batch) in a few steps per object, however large the backlog.
--
-- A b-tree on (content type, object, id) has no hot last page: objects are spread over the key
-- space, so concurrent writers insert in different places. Its cost to a writer is measured in
-- docs/benchmarks.md (section 4).
--
-- Building it takes a SHARE lock on each partition of the outbox, so writes to watched tables
-- wait while it builds (about a second per million captured rows kept): apply this migration
-- when NetBox is quiet, or after netbox_outbox.prune().

create index change_object on netbox_outbox.change (content_type_id, object_id, id);
