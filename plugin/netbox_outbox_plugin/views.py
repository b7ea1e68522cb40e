"""The plugin's pages: the "Webhook deliveries" tab of every object whose model has event rules,
the Deliveries list, a delivery's page, and the actions (replay, pause, resume) as POSTs that
NetBox's CSRF middleware protects.

Viewing needs ``netbox_outbox_plugin.view_delivery`` (NetBox's object permissions, constraints
included); acting needs what ``actions.can_act`` says. Everything is read from migration V13's
views, which mask credentials; nothing here writes an outbox table.
"""

import json

from django.contrib import messages
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db import DatabaseError, connection
from django.http import HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext_lazy as _
from django.views.generic import View

from extras.models import EventRule, Webhook
from netbox.context import current_request
from utilities.views import ConditionalLoginRequiredMixin, ViewTab, get_default_template

from . import actions
from .forms import DeliveryFilterForm
from .health import live_sidecars
from .models import Delivery
from .tables import AttemptTable, DeliveryTable, ObjectDeliveryTable

__all__ = ('DeliveryListView', 'DeliveryReplayView', 'DeliverySkipView', 'DeliveryView', 'ObjectDeliveriesView',
           'WebhookPauseView', 'WebhookResumeView')

VIEW_PERMISSION = 'netbox_outbox_plugin.view_delivery'


def _require_view(request):
    if not request.user.has_perm(VIEW_PERMISSION):
        raise PermissionDenied(_('Viewing webhook deliveries needs the permission {p}.').format(p=VIEW_PERMISSION))


def _require_act(request):
    if not actions.can_act(request.user):
        raise PermissionDenied(_('Acting on webhook deliveries needs the permission {p} or extras.change_webhook.')
                               .format(p=actions.ACT_PERMISSION))


def _deliveries(request):
    return Delivery.objects.restrict(request.user, 'view')


def _common(request):
    """Context every page shows: whether a sidecar is running, whether the user may act."""
    return {'live_sidecars': live_sidecars(), 'can_act': actions.can_act(request.user)}


def _safe_return(request, fallback):
    target = request.POST.get('return_url') or request.GET.get('return_url')
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return fallback


def _visible_count(obj):
    """The tab's badge: the object's deliveries the current user may see (constraints apply)."""
    request = current_request.get()
    if request is None:
        return None
    return Delivery.objects.restrict(request.user, 'view').filter(
        content_type=ContentType.objects.get_for_model(obj), object_id=obj.pk).count()


class ObjectDeliveriesView(ConditionalLoginRequiredMixin, View):
    """The "Webhook deliveries" tab: the object's events and their deliveries, newest first."""

    base_template = None
    tab = ViewTab(
        label=_('Webhook deliveries'),
        badge=lambda obj: _visible_count(obj),
        permission=VIEW_PERMISSION,
        weight=10500,
    )

    def get(self, request, model, **kwargs):
        _require_view(request)
        if hasattr(model.objects, 'restrict'):
            obj = get_object_or_404(model.objects.restrict(request.user, 'view'), **kwargs)
        else:
            obj = get_object_or_404(model, **kwargs)
        deliveries = _deliveries(request).filter(
            content_type=ContentType.objects.get_for_model(model), object_id=obj.pk)
        table = ObjectDeliveryTable(data=deliveries, orderable=False)
        table.configure(request)
        return render(request, 'netbox_outbox_plugin/object_deliveries.html', {
            'object': obj,
            'table': table,
            'base_template': self.base_template or get_default_template(model),
            'tab': self.tab,
            **_common(request),
        })


class DeliveryListView(ConditionalLoginRequiredMixin, View):
    """Every delivery the user may see, filtered, with dead and blocked counts on top."""

    def get(self, request):
        _require_view(request)
        visible = _deliveries(request)
        filter_form = DeliveryFilterForm(request.GET)
        deliveries = filter_form.filter(visible)
        table = DeliveryTable(data=deliveries)
        table.configure(request)
        return render(request, 'netbox_outbox_plugin/delivery_list.html', {
            'table': table,
            'filter_form': filter_form,
            'dead': visible.filter(state='dead').count(),
            'blocked': visible.filter(blocked=True).count(),
            'query': request.GET.urlencode(),
            **_common(request),
        })


class DeliveryReplayView(ConditionalLoginRequiredMixin, View):
    """Replay the filtered selection: GET shows how many would be sent, POST sends them."""

    def _selection(self, request, params):
        filter_form = DeliveryFilterForm(params)
        return filter_form, filter_form.filter(_deliveries(request)).filter(state__in=actions.REPLAYABLE)

    def get(self, request):
        _require_view(request)
        _require_act(request)
        filter_form, selection = self._selection(request, request.GET)
        ids = list(selection.values_list('pk', flat=True))
        return render(request, 'netbox_outbox_plugin/replay_confirm.html', {
            'count': actions.replay_count(ids),
            'hidden': [(k, v) for k in request.GET for v in request.GET.getlist(k) if v],
            'return_url': reverse('plugins:netbox_outbox_plugin:delivery_list') + '?' + request.GET.urlencode(),
            **_common(request),
        })

    def post(self, request):
        _require_view(request)
        _require_act(request)
        selection = self._selection(request, request.POST)[1]
        ids = list(selection.values_list('pk', flat=True))
        replayed = actions.replay(ids)
        messages.success(request, _('Replayed {n} deliveries: each is a new pending delivery.').format(n=replayed))
        query = request.POST.copy()
        for key in ('csrfmiddlewaretoken', 'return_url'):
            query.pop(key, None)
        return redirect(reverse('plugins:netbox_outbox_plugin:delivery_list') + '?' + query.urlencode())


class DeliveryView(ConditionalLoginRequiredMixin, View):
    """One delivery: its request (credentials masked), every attempt, and links."""

    def get(self, request, pk):
        _require_view(request)
        delivery = get_object_or_404(_deliveries(request), pk=pk)
        with connection.cursor() as cursor:
            cursor.execute('select method, url, headers, body from netbox_outbox.ui_request where delivery_id = %s',
                           [delivery.pk])
            row = cursor.fetchone()
        request_data = None
        if row:
            method, url, headers, body = row
            raw = bytes(body).decode('utf-8', errors='replace')
            try:
                pretty = json.dumps(json.loads(raw), indent=2, ensure_ascii=False)
            except ValueError:
                pretty = None
            request_data = {'method': method, 'url': url,
                            'headers': json.loads(headers) if isinstance(headers, str) else headers,
                            'raw': raw, 'pretty': pretty}
        attempts = AttemptTable(data=delivery.attempt_set.all(), orderable=False)
        attempts.configure(request)
        model = delivery.content_type.model_class()
        obj = None
        if model is not None:
            manager = model.objects.restrict(request.user, 'view') if hasattr(model.objects, 'restrict') \
                else model.objects.all()
            obj = manager.filter(pk=delivery.object_id).first()
        replays = _deliveries(request).filter(replay_of=delivery.pk).order_by('id')
        return render(request, 'netbox_outbox_plugin/delivery.html', {
            'object': delivery,
            'request_data': request_data,
            'attempts': attempts,
            'changed_object': obj,
            'event_rule': EventRule.objects.restrict(request.user, 'view').filter(pk=delivery.event_rule_id).first(),
            'webhook': Webhook.objects.restrict(request.user, 'view').filter(pk=delivery.webhook_id).first(),
            'replays': replays,
            'original': _deliveries(request).filter(pk=delivery.replay_of).first() if delivery.replay_of else None,
            **_common(request),
        })

    def post(self, request, pk):
        """Replay this delivery."""
        _require_view(request)
        _require_act(request)
        delivery = get_object_or_404(_deliveries(request), pk=pk)
        if not delivery.replayable:
            return HttpResponseBadRequest(f'delivery {delivery.pk} is {delivery.state}: only dead and delivered '
                                          'deliveries can be replayed')
        actions.replay([delivery.pk])
        copy = Delivery.objects.filter(replay_of=delivery.pk).order_by('-id').first()
        messages.success(request, _('Replayed: delivery {n} is on its way.').format(n=copy.pk if copy else '?'))
        return redirect(copy.get_absolute_url() if copy else delivery.get_absolute_url())


class DeliverySkipView(ConditionalLoginRequiredMixin, View):
    """Skip a failing pending delivery, releasing the deliveries of its object queued behind it."""

    def post(self, request, pk):
        _require_view(request)
        _require_act(request)
        delivery = get_object_or_404(_deliveries(request), pk=pk)
        if delivery.state not in ('pending', 'retrying', 'paused'):
            return HttpResponseBadRequest(f'delivery {delivery.pk} is {delivery.state}: only pending deliveries '
                                          'can be skipped')
        try:
            actions.skip(delivery.pk, request.user)
            messages.success(request, _('Skipped: the next delivery of this object goes out.'))
        except DatabaseError as error:
            messages.error(request, _('netbox-outbox could not skip it: {e}').format(e=error))
        return redirect(delivery.get_absolute_url())


class _WebhookAction(ConditionalLoginRequiredMixin, View):
    def post(self, request, pk):
        webhook = get_object_or_404(Webhook.objects.restrict(request.user, 'view'), pk=pk)
        if not actions.can_act_on_webhook(request.user, webhook.pk):
            raise PermissionDenied(_('Pausing or resuming a webhook needs {p} or extras.change_webhook on it.')
                                   .format(p=actions.ACT_PERMISSION))
        try:
            self.act(request, webhook)
        except DatabaseError as error:
            messages.error(request, _('netbox-outbox could not do it: {e}').format(e=error))
        return redirect(_safe_return(request, webhook.get_absolute_url()))


class WebhookPauseView(_WebhookAction):
    def act(self, request, webhook):
        actions.pause(webhook.pk, request.user)
        messages.success(request, _('Webhook {w} paused: nothing is sent to it until it is resumed.')
                         .format(w=webhook.name))


class WebhookResumeView(_WebhookAction):
    def act(self, request, webhook):
        actions.resume(webhook.pk)
        messages.success(request, _('Webhook {w} resumed: its due deliveries go out at once.').format(w=webhook.name))
