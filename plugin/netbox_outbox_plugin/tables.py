"""django-tables2 tables of deliveries and attempts, in NetBox's style (``BaseTable``)."""

import django_tables2 as tables
from django.utils.translation import gettext_lazy as _

from netbox.tables import BaseTable, columns

from .models import Attempt, Delivery

__all__ = ('AttemptTable', 'DeliveryTable', 'ObjectDeliveryTable')

STATE = """<span class="badge text-bg-{{ record.state_color }}">{{ record.state_label }}</span>\
{% if record.blocked %} <span class="badge text-bg-yellow" title="waits behind a failing delivery of the same object">blocked</span>{% endif %}"""

RULE = """{% if record.event_rule_id %}<a href="{% url 'extras:eventrule' pk=record.event_rule_id %}">{{ record.event_rule_name }}</a>{% else %}{{ record.event_rule_name }}{% endif %}"""

WEBHOOK = """<a href="{% url 'extras:webhook' pk=record.webhook_id %}">{{ record.webhook_name }}</a>"""

LAST_RESPONSE = """{% if record.last_status %}<span class="font-monospace">{{ record.last_status }}</span> {% endif %}\
{% if record.last_excerpt %}<span class="text-muted font-monospace small">{{ record.last_excerpt|truncatechars:60 }}</span>\
{% elif record.last_error %}<span class="text-muted small">{{ record.last_error|truncatechars:60 }}</span>{% endif %}"""


class DeliveryTable(BaseTable):
    id = tables.Column(linkify=True, verbose_name=_('Delivery'))
    committed_at = columns.DateTimeColumn(verbose_name=_('Changed'))
    event = tables.Column(verbose_name=_('Event'))
    object = tables.TemplateColumn(
        '<span class="font-monospace">{{ record.object_type }}</span> {{ record.object_id }}',
        verbose_name=_('Object'), order_by=('object_type', 'object_id'))
    user_name = tables.Column(verbose_name=_('User'))
    event_rule = tables.TemplateColumn(RULE, verbose_name=_('Event rule'), order_by=('event_rule_name',))
    webhook = tables.TemplateColumn(WEBHOOK, verbose_name=_('Webhook'), order_by=('webhook_name',))
    state = tables.TemplateColumn(STATE, verbose_name=_('State'))
    attempts = tables.Column(verbose_name=_('Attempts'))
    last_response = tables.TemplateColumn(LAST_RESPONSE, verbose_name=_('Last response'), orderable=False)
    next_attempt_at = columns.DateTimeColumn(verbose_name=_('Next attempt'))

    class Meta(BaseTable.Meta):
        model = Delivery
        fields = ('id', 'committed_at', 'event', 'object', 'user_name', 'event_rule', 'webhook', 'state',
                  'attempts', 'last_response', 'next_attempt_at')
        default_columns = fields
        empty_text = _('No webhook deliveries')

    def render_next_attempt_at(self, record, value, column):
        # only a pending delivery has a next attempt
        return column.render(value) if record.state in ('pending', 'retrying', 'paused') else '—'


class ObjectDeliveryTable(DeliveryTable):
    """The tab on an object's page: the object column is the page itself."""

    class Meta(DeliveryTable.Meta):
        fields = ('id', 'committed_at', 'event', 'user_name', 'event_rule', 'webhook', 'state', 'attempts',
                  'last_response', 'next_attempt_at')
        default_columns = fields
        exclude = ('object',)


class AttemptTable(BaseTable):
    attempt = tables.Column(verbose_name=_('Attempt'))
    started_at = columns.DateTimeColumn(verbose_name=_('Started'))
    duration_ms = tables.Column(verbose_name=_('Duration (ms)'))
    status = tables.Column(verbose_name=_('Status'))
    error = tables.Column(verbose_name=_('Error'))
    response_excerpt = tables.TemplateColumn(
        '{% if value %}<pre class="mb-0 small">{{ value }}</pre>{% endif %}', verbose_name=_('Response excerpt'))

    class Meta(BaseTable.Meta):
        model = Attempt
        fields = ('attempt', 'started_at', 'duration_ms', 'status', 'error', 'response_excerpt')
        default_columns = fields
        empty_text = _('No attempt yet')
