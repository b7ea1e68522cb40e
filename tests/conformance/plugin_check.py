"""Checks the plugin's request context inside NetBox itself (run with `netbox nbshell` by the suite,
in the `plugin` configuration, before the scenario).

Inside NetBox's request processors (the way NetBox runs every HTTP request, background API job and
script), a save must leave `netbox_outbox.request` on the connection holding exactly NetBox's
request block; after the processors exit, the setting must be empty again, so that the next write
on that persistent connection carries nothing. The model used (tenancy.ContactGroup) has no event
rule in the scenario, so no webhook results.
"""

import json
import uuid

from django.db import connection
from django.http import QueryDict

from netbox.registry import registry
from tenancy.models import ContactGroup
from users.models import User
from utilities.request import NetBoxFakeRequest, apply_request_processors

from netbox_outbox_plugin.request_context import request_context_cleared


def setting():
    with connection.cursor() as cursor:
        cursor.execute("select current_setting('netbox_outbox.request', true)")
        return cursor.fetchone()[0]


assert request_context_cleared in registry['request_processors'], registry['request_processors']
request = NetBoxFakeRequest({
    'id': uuid.uuid4(), 'path': '/netbox/api/check/', 'path_info': '/api/check/', 'method': 'POST',
    'GET': QueryDict('a=1&a=2&b=x'), 'user': User.objects.get(username='conformance'),
    'META': {}, 'COOKIES': {}, 'POST': QueryDict(), 'FILES': {},
})
with apply_request_processors(request):
    ContactGroup(name='plugin check', slug='plugin-check').save()
    inside = setting()
after = setting()
expected = {'id': str(request.id), 'path': '/netbox/api/check/', 'path_info': '/api/check/', 'method': 'POST',
            'GET': {'a': '2', 'b': 'x'}, 'user': 'conformance'}
assert inside is not None and json.loads(inside) == expected and list(json.loads(inside)) == list(expected), inside
assert after == '', f'the request context survived the request: {after!r}'
print('plugin check: ok')
