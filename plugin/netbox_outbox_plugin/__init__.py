"""netbox-outbox's NetBox plugin.

For the netbox-outbox sidecar, which delivers webhooks from PostgreSQL triggers instead of
NetBox's RQ worker:

* it registers the event rule action type ``netbox_outbox.webhook`` ("Webhook (netbox-outbox)"),
  whose target is an ordinary NetBox Webhook and whose dispatch inside NetBox does nothing: rules
  of this type are delivered by the sidecar only (see ``event_rules.py``);
* it hands each write's request context (request id, path, method, query, user) to the capture
  triggers through the PostgreSQL session setting ``netbox_outbox.request``, so the sidecar's
  webhooks carry NetBox's exact ``request`` block (see ``request_context.py``);
* it shows the delivery log inside NetBox: a "Webhook deliveries" tab on every object whose model
  has event rules, a Deliveries list, a delivery's page, a health panel on each Webhook, and
  replay, pause and resume buttons (``views.py``, read through migration V13's views).

Enable it with ``PLUGINS = ['netbox_outbox_plugin']`` in NetBox's configuration.py.
"""

from netbox.plugins import PluginConfig

__version__ = '0.1.0'


class NetBoxOutboxConfig(PluginConfig):
    name = 'netbox_outbox_plugin'
    verbose_name = 'netbox-outbox'
    description = 'Webhooks delivered by the netbox-outbox sidecar'
    version = __version__
    author = 'netbox-outbox'
    base_url = 'netbox-outbox'
    # register_event_rule_action() and plugin event_rule_actions arrived in NetBox 4.7.
    min_version = '4.7.0'
    # The action type is registered by NetBox itself from the `event_rule_actions` list in
    # event_rules.py (the default resource path of PluginConfig.event_rule_actions).

    def ready(self):
        super().ready()
        from . import request_context

        request_context.connect()
        _register_tabs()


def _register_tabs():
    """The "Webhook deliveries" tab on every model NetBox sends events for (EventRulesMixin),
    NetBox's and other plugins' alike, the way NetBox registers its own changelog tab."""
    from django.apps import apps

    from netbox.models.features import EventRulesMixin
    from utilities.views import register_model_view

    from .views import ObjectDeliveriesView

    for model in apps.get_models():
        if issubclass(model, EventRulesMixin):
            register_model_view(model, 'webhook_deliveries', path='webhook-deliveries',
                                kwargs={'model': model})(ObjectDeliveriesView)


config = NetBoxOutboxConfig
