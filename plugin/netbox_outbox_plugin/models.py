"""Read-only models over netbox-outbox's ``ui_*`` views (migration V13), for NetBox's tables and
permissions.

The views live in PostgreSQL schema ``netbox_outbox`` and never carry a secret: header values that
look like credentials and a URL's password are masked there, not here. Django never creates,
changes or migrates them (``managed = False``); the plugin writes nothing through them. Acting
goes through the SQL functions in ``actions.py``.

NetBox's object permissions apply as to any model: ``netbox_outbox_plugin.view_delivery`` lets a
user see deliveries (constraints such as ``{"webhook_id": 3}`` narrow it), and
``netbox_outbox_plugin.change_delivery`` lets a user act on them.
"""

from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from utilities.querysets import RestrictedQuerySet

__all__ = ('Attempt', 'Delivery', 'STATES')

# The reader's states (ui_delivery.state), with NetBox's badge colours.
STATES = {
    'pending': ('Pending', 'blue'),
    'retrying': ('Retrying', 'orange'),
    'paused': ('Paused', 'purple'),
    'delivered': ('Delivered', 'green'),
    'dead': ('Dead', 'red'),
    'rejected': ('Rejected', 'red'),
    'replayed': ('Replayed', 'cyan'),
    'skipped': ('Skipped', 'gray'),
}


def _view(name):
    # Django quotes db_table as one identifier; this spelling makes it "netbox_outbox"."<name>".
    return f'netbox_outbox"."{name}'


class Delivery(models.Model):
    """One webhook request for one event and rule (netbox_outbox.ui_delivery)."""

    id = models.BigIntegerField(primary_key=True)
    event_id = models.BigIntegerField()
    event = models.CharField(max_length=16)
    committed_at = models.DateTimeField()
    user_name = models.CharField(max_length=150)
    request_id = models.UUIDField()
    origin = models.CharField(max_length=16)
    content_type = models.ForeignKey(ContentType, on_delete=models.DO_NOTHING, db_constraint=False,
                                     related_name='+')
    object_type = models.CharField(max_length=100)
    object_id = models.BigIntegerField()
    event_rule_id = models.BigIntegerField()
    event_rule_name = models.CharField(max_length=150)
    webhook_id = models.BigIntegerField()
    webhook_name = models.CharField(max_length=150)
    state = models.CharField(max_length=16)
    blocked = models.BooleanField()
    attempts = models.IntegerField()
    last_status = models.IntegerField(null=True)
    last_error = models.TextField(null=True)
    last_excerpt = models.TextField(null=True)
    next_attempt_at = models.DateTimeField()
    created_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True)
    replay_of = models.BigIntegerField(null=True)

    objects = RestrictedQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = _view('ui_delivery')
        ordering = ('-id',)
        verbose_name = _('webhook delivery')
        verbose_name_plural = _('webhook deliveries')

    def __str__(self):
        return f'Delivery {self.pk}'

    def get_absolute_url(self):
        return reverse('plugins:netbox_outbox_plugin:delivery', args=[self.pk])

    @property
    def state_label(self):
        return STATES.get(self.state, (self.state, 'gray'))[0]

    @property
    def state_color(self):
        return STATES.get(self.state, (self.state, 'gray'))[1]

    @property
    def replayable(self):
        # replay() copies a frozen request: a rejected delivery has none, a pending one is still
        # going, a replayed one was copied already
        return self.state in ('dead', 'delivered', 'skipped')

    @property
    def skippable(self):
        # a pending delivery that failed: the head its object's later deliveries wait behind
        return self.state in ('retrying', 'paused') and self.last_error is not None


class Attempt(models.Model):
    """One try to send a delivery (netbox_outbox.ui_attempt)."""

    id = models.BigIntegerField(primary_key=True)
    delivery = models.ForeignKey(Delivery, on_delete=models.DO_NOTHING, db_constraint=False,
                                 related_name='attempt_set')
    attempt = models.IntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.IntegerField()
    status = models.IntegerField(null=True)
    error = models.TextField(null=True)
    response_excerpt = models.TextField(null=True)
    sidecar = models.UUIDField()

    objects = RestrictedQuerySet.as_manager()

    class Meta:
        managed = False
        db_table = _view('ui_attempt')
        ordering = ('attempt', 'id')
        verbose_name = _('delivery attempt')
        verbose_name_plural = _('delivery attempts')

    def __str__(self):
        return f'Attempt {self.attempt} of delivery {self.delivery_id}'
