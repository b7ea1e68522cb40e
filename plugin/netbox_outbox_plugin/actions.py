"""What the plugin may do, and who may do it.

Every action is one call of an owner-rights SQL function of migration V13 (``ui_replay``,
``ui_skip``, ``ui_pause_webhook``, ``ui_resume_webhook``), which wrap the same ``replay()``,
``skip()``, ``pause_webhook()`` and ``resume_webhook()`` the CLI and psql use. The plugin never writes an
outbox table. The sidecar picks the result up when it runs (a replay is a new pending delivery;
a pause is a row the dispatcher reads).

Acting needs ``netbox_outbox_plugin.change_delivery`` or NetBox's ``extras.change_webhook`` (for
pause and resume: on that webhook); viewing needs ``netbox_outbox_plugin.view_delivery``.
"""

from django.db import connection

from extras.models import Webhook

__all__ = ('ACT_PERMISSION', 'can_act', 'can_act_on_webhook', 'pause', 'replay', 'replay_count', 'resume', 'skip')

ACT_PERMISSION = 'netbox_outbox_plugin.change_delivery'
# replay() copies deliveries in these states; a pending one is still being sent, a rejected one
# has no request to copy (netbox-outbox replay --rerender renders it again), a replayed one was
# copied already.
REPLAYABLE = ['dead', 'delivered', 'skipped']


def can_act(user):
    return user.has_perm(ACT_PERMISSION) or user.has_perm('extras.change_webhook')


def can_act_on_webhook(user, webhook_id):
    if user.has_perm(ACT_PERMISSION):
        return True
    return Webhook.objects.restrict(user, 'change').filter(pk=webhook_id).exists()


def _scalar(sql, params):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()[0]


def replay_count(deliveries):
    """How many of these deliveries (ids) a replay would send (replay()'s dry run)."""
    return _scalar('select netbox_outbox.ui_replay(%s::bigint[], dry_run => true)', [list(deliveries)])


def replay(deliveries):
    """Replays these deliveries (ids) in one transaction; returns how many were replayed."""
    return _scalar('select netbox_outbox.ui_replay(%s::bigint[])', [list(deliveries)])


def skip(delivery_id, user):
    return _scalar('select netbox_outbox.ui_skip(%s, %s)', [delivery_id, f'skipped in NetBox by {user.username}'])


def pause(webhook_id, user):
    return _scalar('select netbox_outbox.ui_pause_webhook(%s, %s)',
                   [webhook_id, f'paused in NetBox by {user.username}'])


def resume(webhook_id):
    return _scalar('select netbox_outbox.ui_resume_webhook(%s)', [webhook_id])
