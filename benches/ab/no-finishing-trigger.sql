-- experiment (not correct in general, only for one-delivery-per-object workloads): the moved
-- trigger's work removed: heads deleted per statement with no lookup of the next pending one
drop trigger queue_head_moved on netbox_outbox.delivery;
create function netbox_outbox.deliveries_gone() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
begin
    delete from netbox_outbox.queue_head h using moved_to n
    where n.state <> 'pending' and h.delivery_id = n.id and h.webhook_id = n.webhook_id
      and h.content_type_id = n.content_type_id and h.object_id = n.object_id;
    return null;
end $$;
create trigger queue_head_moved after update on netbox_outbox.delivery
    referencing new table as moved_to for each statement execute function netbox_outbox.deliveries_gone();
