"""The Deliveries list's filter form (NetBox's ``FilterForm``, rendered by NetBox's filter tab),
and how its values filter the deliveries."""

from django import forms
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from core.models import ObjectType
from extras.models import EventRule, Webhook
from utilities.forms import FilterForm
from utilities.forms.fields import ContentTypeMultipleChoiceField, DynamicModelMultipleChoiceField
from utilities.forms.rendering import FieldSet
from utilities.forms.widgets import DateTimePicker

from .models import STATES

__all__ = ('DeliveryFilterForm',)


class DeliveryFilterForm(FilterForm):
    fieldsets = (
        FieldSet('q', name=_('Search')),
        FieldSet('webhook_id', 'event_rule_id', 'object_type_id', 'state', name=_('Delivery')),
        FieldSet('since', 'until', 'user', name=_('Change')),
    )
    webhook_id = DynamicModelMultipleChoiceField(queryset=Webhook.objects.all(), required=False,
                                                 label=_('Webhook'))
    event_rule_id = DynamicModelMultipleChoiceField(queryset=EventRule.objects.all(), required=False,
                                                    label=_('Event rule'))
    object_type_id = ContentTypeMultipleChoiceField(queryset=ObjectType.objects.with_feature('event_rules'),
                                                    required=False, label=_('Object type'))
    state = forms.MultipleChoiceField(choices=[(k, v[0]) for k, v in STATES.items()] + [('blocked', _('Blocked'))],
                                      required=False, label=_('State'))
    since = forms.DateTimeField(required=False, label=_('Changed since'), widget=DateTimePicker())
    until = forms.DateTimeField(required=False, label=_('Changed before'), widget=DateTimePicker())
    user = forms.CharField(required=False, label=_('User'))

    def filter(self, queryset):
        """The deliveries matching the form's valid values (an invalid field filters nothing)."""
        data = self.cleaned_data if self.is_bound and self.is_valid() else {
            k: v for k, v in getattr(self, 'cleaned_data', {}).items() if k not in self.errors}
        if q := data.get('q'):
            queryset = queryset.filter(Q(webhook_name__icontains=q) | Q(event_rule_name__icontains=q) |
                                       Q(object_type__icontains=q) | Q(last_error__icontains=q) |
                                       Q(user_name__icontains=q))
        if webhooks := data.get('webhook_id'):
            queryset = queryset.filter(webhook_id__in=[w.pk for w in webhooks])
        if rules := data.get('event_rule_id'):
            queryset = queryset.filter(event_rule_id__in=[r.pk for r in rules])
        if types := data.get('object_type_id'):
            queryset = queryset.filter(content_type_id__in=[t.pk for t in types])
        if states := data.get('state'):
            match = Q(state__in=[s for s in states if s != 'blocked'])
            if 'blocked' in states:
                match |= Q(blocked=True)
            queryset = queryset.filter(match)
        if since := data.get('since'):
            queryset = queryset.filter(committed_at__gte=since)
        if until := data.get('until'):
            queryset = queryset.filter(committed_at__lt=until)
        if user := data.get('user'):
            queryset = queryset.filter(user_name=user)
        return queryset
