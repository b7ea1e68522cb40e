"""The health panel on NetBox's Webhook page, and a banner there when no sidecar runs."""

from netbox.plugins import PluginTemplateExtension

from . import actions
from .health import live_sidecars, webhook_health
from .models import Delivery

__all__ = ('template_extensions',)


class WebhookHealthPanel(PluginTemplateExtension):
    models = ['extras.webhook']

    def _visible(self):
        # a webhook's totals, for users who may see its deliveries (a constraint such as
        # {"webhook_id": 3} hides the panel on every other webhook's page)
        user = self.context['request'].user
        if not user.has_perm('netbox_outbox_plugin.view_delivery'):
            return False
        webhook = self.context['object']
        return user.is_superuser or Delivery.objects.restrict(user, 'view').filter(webhook_id=webhook.pk).exists() \
            or not Delivery.objects.filter(webhook_id=webhook.pk).exists()

    def alerts(self):
        if not self._visible() or live_sidecars() != 0:
            return ''
        return self.render('netbox_outbox_plugin/inc/no_sidecar.html')

    def full_width_page(self):
        if not self._visible():
            return ''
        webhook = self.context['object']
        request = self.context['request']
        return self.render('netbox_outbox_plugin/inc/webhook_health.html', extra_context={
            'health': webhook_health(webhook.pk),
            'can_act_on_webhook': actions.can_act_on_webhook(request.user, webhook.pk),
        })


template_extensions = [WebhookHealthPanel]
