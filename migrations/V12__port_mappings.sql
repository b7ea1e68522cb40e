-- V12: the sidecar's role reads NetBox's port mapping tables.
--
-- The payload catalogue now holds dcim.portmapping and dcim.porttemplatemapping (NetBox's
-- private models behind FrontPort/RearPort `rear_ports`/`front_ports` and their templates'), so
-- the sidecar reads their rows like the other catalogue tables (V5's list; the test
-- the_sidecar_reads_exactly_the_catalogue keeps it equal to the catalogue). No new objects here,
-- so nothing to revoke; sync() and refresh_grants() apply the rows.
insert into netbox_outbox.sidecar_grant (object_kind, object_name, privileges, reason) values
    ('table', 'public.dcim_portmapping', '{select}', 'a model or many-to-many table of the payload catalogue'),
    ('table', 'public.dcim_porttemplatemapping', '{select}', 'a model or many-to-many table of the payload catalogue')
on conflict do nothing;
