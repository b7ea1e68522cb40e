-- What docs/install.md step 8 does in NetBox's UI, in SQL, for the scripts that follow the guide
-- (tests/install/walkthrough, tests/container/run): the webhook `netbox-outbox-verify` to the
-- request bin at :'url' (secret verify-secret), an event rule of type netbox_outbox.webhook on
-- site creations, and the site `walkthrough-1`. Columns are named in full, so it loads into a
-- real NetBox 4.7 schema as into the integration tests' NetBox-shaped one.
--   psql "$NETBOX_DATABASE_URL" -v ON_ERROR_STOP=1 -v url=http://127.0.0.1:9000/ -f tests/install/verify-webhook.sql
\set QUIET on
-- The webhook, the rule and its object types in one transaction, as NetBox's UI saves them (one
-- request): a rule whose object types came in a later transaction of their own would be seen
-- without them until the sidecar's next rules.refresh_interval, since the link table
-- extras_eventrule_object_types is not captured (rules changed by plain SQL take effect then).
begin;
insert into extras_webhook (created, last_updated, custom_field_data, name, description, payload_url,
    http_method, http_content_type, additional_headers, body_template, secret, ssl_verification)
values (now(), now(), '{}', 'netbox-outbox-verify', '', :'url',
    'POST', 'application/json', '', '', 'verify-secret', true);

insert into extras_eventrule (created, last_updated, custom_field_data, name, description, enabled,
    event_types, action_type, action_object_type_id, action_object_id, action_data, conditions, comments)
select now(), now(), '{}', 'netbox-outbox-verify', '', true, '{object_created}', 'netbox_outbox.webhook',
    (select id from django_content_type where app_label = 'extras' and model = 'webhook'),
    (select id from extras_webhook where name = 'netbox-outbox-verify'), null, null, '';

-- NetBox 4.x names the object type column objecttype_id; older schemas contenttype_id.
select format('insert into extras_eventrule_object_types (eventrule_id, %I) values (%s, %s)',
              (select column_name from information_schema.columns
                where table_schema = 'public' and table_name = 'extras_eventrule_object_types'
                  and column_name in ('objecttype_id', 'contenttype_id')),
              (select id from extras_eventrule where name = 'netbox-outbox-verify'),
              (select id from django_content_type where app_label = 'dcim' and model = 'site'))
\gexec
commit;

insert into dcim_site (created, last_updated, custom_field_data, name, slug, status, facility, description,
    physical_address, shipping_address, comments)
values (now(), now(), '{}', 'walkthrough-1', 'walkthrough-1', 'active', '', '', '', '', '');
