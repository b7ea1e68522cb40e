-- Experiment control, not a migration: nothing changed. The capture as migrated, in its own
-- copy of the database like every other SQL variant, so that a variant's ratio to it is not
-- confounded by which database or position in the round it ran in.
select 1;
