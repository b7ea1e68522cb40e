-- V15: the sidecar's role reads NetBox's django_migrations.
--
-- The sidecar picks the model catalogue of the NetBox release the database holds, which it reads
-- from the newest migration of each of NetBox's apps (src/netbox/version.rs); `netbox-outbox
-- check` and the sidecar's start refuse a release it has no catalogue for. The table holds only
-- app and migration names and when they were applied. No new objects here, so nothing to
-- revoke; sync() and refresh_grants() apply the row.
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason) values
    ('table', 'public.django_migrations', '{select}', 'which NetBox release this is (src/netbox/version.rs)')
on conflict do nothing;
