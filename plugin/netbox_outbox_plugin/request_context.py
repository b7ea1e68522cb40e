"""Hands NetBox's request context to netbox-outbox's capture triggers.

The capture triggers store ``current_setting('netbox_outbox.request', true)`` with every change
they record, and the sidecar uses it, when present, as the webhook's ``request`` block and as
proof that NetBox made the change. The database alone cannot know a request's path, method or
query string; this module tells it.

How:

* Right before every write NetBox makes while a request (or a background API job or script) is
  being processed -- ``pre_save``, ``pre_delete``, and the ``pre_add``/``pre_remove``/``pre_clear``
  actions of ``m2m_changed`` -- the value is set on the write's own database connection with
  ``set_config('netbox_outbox.request', <json>, false)``. The JSON is exactly what NetBox's
  ``send_webhook`` puts in the payload: ``get_safe_request_context(request)`` through
  ``json.dumps`` (keys id, path, path_info, method, GET, user; GET keeps the last value of each
  key). It is computed at write time because DRF authenticates API tokens inside the view, so
  ``request.user`` is only right by then.
* The setting is session-level (``false``), not transaction-local, because a write made outside
  ``transaction.atomic()`` runs in its own autocommit transaction, after ours would have ended.
  Inside a transaction that rolls back, PostgreSQL undoes the ``set_config`` with it.
* So that a persistent connection (``CONN_MAX_AGE``) never carries one request's context into the
  next, a request processor (``register_request_processor``; NetBox applies these to every HTTP
  request, to background API jobs and to scripts) clears the setting on every open connection when
  processing starts and when it ends.

Known limit: NetBox's own ``event_tracking`` processor is registered first, so it exits last; a
write made while it flushes events (a script or notification event rule) sets the value again,
and the next request's entry clears it. Only writes on that connection in between and outside
any request (none in NetBox's web and worker processes) would carry the stale context.

A failure here must never fail NetBox's write: database errors are logged and swallowed.
"""

import json
import logging
from contextlib import contextmanager

from django.db import DEFAULT_DB_ALIAS, Error as DatabaseError, connections
from django.db.models.signals import m2m_changed, pre_delete, pre_save

from netbox.context import current_request
from netbox.utils import register_request_processor
from utilities.request import get_safe_request_context

__all__ = ('SETTING', 'connect', 'request_context_json', 'request_context_cleared')

SETTING = 'netbox_outbox.request'

logger = logging.getLogger('netbox_outbox_plugin')

_M2M_ACTIONS = frozenset(('pre_add', 'pre_remove', 'pre_clear'))


def request_context_json(request):
    """The request block NetBox's webhooks carry, as JSON text."""
    return json.dumps(get_safe_request_context(request))


def _set(using, value):
    try:
        with connections[using or DEFAULT_DB_ALIAS].cursor() as cursor:
            cursor.execute('select set_config(%s, %s, false)', [SETTING, value])
    except DatabaseError:
        logger.exception('netbox-outbox: could not hand the request context to the capture')


def _before_write(sender, using=None, **kwargs):
    request = current_request.get()
    if request is not None:
        _set(using, request_context_json(request))


def _before_m2m_change(sender, action=None, using=None, **kwargs):
    if action in _M2M_ACTIONS:
        _before_write(sender, using=using)


def _clear_open_connections():
    for connection in connections.all(initialized_only=True):
        # A connection not yet opened is a new session, which has no value to clear.
        if connection.connection is None:
            continue
        _set(connection.alias, '')


@contextmanager
def request_context_cleared(request):
    """Request processor: no request context survives into, or out of, a request or job."""
    _clear_open_connections()
    try:
        yield
    finally:
        _clear_open_connections()


def connect():
    """Connects the signal handlers and registers the request processor (once, from ready())."""
    pre_save.connect(_before_write, dispatch_uid='netbox_outbox_pre_save')
    pre_delete.connect(_before_write, dispatch_uid='netbox_outbox_pre_delete')
    m2m_changed.connect(_before_m2m_change, dispatch_uid='netbox_outbox_m2m_changed')
    register_request_processor(request_context_cleared)
