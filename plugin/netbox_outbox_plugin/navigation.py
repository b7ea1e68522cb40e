"""The plugin's entry in NetBox's navigation (Plugins menu)."""

from django.utils.translation import gettext_lazy as _

from netbox.plugins import PluginMenuItem

menu_items = (
    PluginMenuItem(
        link='plugins:netbox_outbox_plugin:delivery_list',
        link_text=_('Webhook deliveries'),
        permissions=['netbox_outbox_plugin.view_delivery'],
    ),
)
