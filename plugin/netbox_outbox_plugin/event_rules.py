"""The ``netbox_outbox.webhook`` event rule action.

NetBox loads ``event_rule_actions`` from this module (the default resource path of
``PluginConfig.event_rule_actions``) and registers each class with ``register_event_rule_action``.
An operator then chooses, per event rule in NetBox's own UI or API, who delivers a webhook:
NetBox's RQ worker (action type ``webhook``) or the netbox-outbox sidecar (this action type).
"""

from django.utils.translation import gettext_lazy as _

from extras.models import Webhook
from netbox.event_rules import EventRuleAction

__all__ = ('OutboxWebhookAction', 'event_rule_actions')


class OutboxWebhookAction(EventRuleAction):
    slug = 'netbox_outbox.webhook'
    label = _('Webhook (netbox-outbox)')
    description = _('Delivered by the netbox-outbox sidecar')
    object_model = Webhook
    object_required = True

    def enqueue(self, *, event_rule, event_context, action_object, action_data):
        # Nothing to do inside NetBox: the sidecar reads the change from the database, matches
        # this rule itself, and delivers the webhook after the transaction commits.
        return

    def resolve_import_object(self, value):
        # CSV/bulk import of event rules names the webhook, as for NetBox's own webhook action.
        return Webhook.objects.get(name=value)


event_rule_actions = [OutboxWebhookAction]
