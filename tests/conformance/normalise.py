"""THE normalisation: everything the suite forgives when it compares a NetBox webhook with
netbox-outbox's, in one place.

Anything not listed here must be identical: method, URL, every other header (names, values and
order), the body's bytes (for a default body: its JSON encoding, key order, types and values at
every depth), and the signature's validity.

| rule | what | why |
| --- | --- | --- |
| `timestamp` | top-level `timestamp`: both must have NetBox's format (UTC isoformat, `+00:00`, 6-digit microseconds or none) and lie within 10 minutes of each other; the values are not compared | it is the moment each side enqueued or built the request |
| `transport-headers` | `Host`, `User-Agent`, `Accept`, `Accept-Encoding`, `Connection`, `Content-Length` and netbox-outbox's `X-Netbox-Outbox-Delivery` are dropped | the HTTP clients add them (NetBox's urllib3 vs reqwest); the body's length is covered by the body |
| `signature` | `X-Hook-Signature` is replaced by whether it verifies (HMAC-SHA512 of that side's own body with the webhook's secret) | the bodies differ in their timestamps, so the signatures do |
| `request-fallback` | without the plugin only: `request.path`, `request.path_info`, `request.method` and `request.GET` are forgiven when netbox-outbox's values are exactly the documented fallback (`POST` to the list path for `created`, `PATCH`/`DELETE` on the object's path otherwise, `GET` `{}`) | the database does not know the request's path, method or query; the plugin tells it |
| `request-path-counts` | `data.<key>` present in NetBox's body and absent from ours, where the catalogue says the key is a `RelatedObjectCountField` (`count`) or a queryset annotation that is omitted when missing (`annotation`, `when_missing: omit`) | NetBox includes them only when the REST viewset's annotated queryset produced the instance (PATCH, PUT, DELETE); they are counted before the change and depend on how the change was made |
| `mirror-url` | for the plugin's `netbox_outbox.webhook` rule compared with NetBox's `webhook` rule: the webhook's own URL path (`/hook/outbox` vs `/hook/main`) | two webhooks, so that NetBox's and ours can be told apart |

Each rule is counted in the report every time it applies, so the table above can be checked
against what really differed.
"""

import hashlib
import hmac
import re
from datetime import datetime

TRANSPORT_HEADERS = frozenset(h.lower() for h in (
    'Host', 'User-Agent', 'Accept', 'Accept-Encoding', 'Connection', 'Content-Length',
    'X-Netbox-Outbox-Delivery',
))
TIMESTAMP_RE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00$')
TIMESTAMP_TOLERANCE_S = 600

RULES = {
    'timestamp': 'top-level timestamp: format checked, value not compared',
    'transport-headers': 'headers added by the HTTP clients dropped',
    'signature': 'X-Hook-Signature compared by verifying each side against its own body',
    'request-fallback': 'without the plugin: request.path/path_info/method/GET are the documented fallback',
    'request-path-counts': 'data.*_count and annotations NetBox adds only for REST PATCH/PUT/DELETE',
    'mirror-url': 'netbox_outbox.webhook rule compared with the equivalent webhook rule: URL path',
}


class Context:
    """What the normalisation needs to know about a configuration."""

    def __init__(self, plugin, secrets, path_dependent_fields, mirror_paths=None):
        self.plugin = plugin
        # webhook name -> secret ('' when none)
        self.secrets = secrets
        # object type -> set of data keys that only REST updates and deletes include
        self.path_dependent_fields = path_dependent_fields
        # our path prefix -> NetBox's path prefix, for mirrored webhooks
        self.mirror_paths = mirror_paths or {}


def view(received, webhook):
    """What is compared of one received request."""
    headers = [[n, v] for n, v in received.headers]
    parsed = received.json()
    if isinstance(parsed, dict) and 'event' in parsed and 'timestamp' in parsed:
        return {'method': received.method, 'url': received.target, 'headers': headers, 'webhook': webhook,
                'raw': received.body, 'json': parsed}
    return {'method': received.method, 'url': received.target, 'headers': headers, 'webhook': webhook,
            'raw': received.body, 'json': None}


def _parse_ts(value):
    return datetime.fromisoformat(value)


def normalise(netbox, ours, ctx):
    """Applies RULES to a pair of views (mutating them). Returns (applied rule names, problems):
    a problem is (path, netbox value, our value, note) for a normalised item that failed its check."""
    applied = []
    problems = []

    # mirror-url
    for our_prefix, netbox_prefix in ctx.mirror_paths.items():
        if ours['url'].startswith(our_prefix):
            ours['url'] = netbox_prefix + ours['url'][len(our_prefix):]
            applied.append('mirror-url')

    # transport-headers and signature
    secret = ctx.secrets.get(netbox['webhook'], '')
    for side in (netbox, ours):
        kept = []
        for name, value in side['headers']:
            lname = name.lower()
            if lname in TRANSPORT_HEADERS:
                continue
            if lname == 'x-hook-signature':
                expected = hmac.new(secret.encode('utf8'), side['raw'], hashlib.sha512).hexdigest()
                value = '<valid signature>' if hmac.compare_digest(value, expected) else f'<INVALID: {value}>'
            kept.append([name, value])
        side['headers'] = kept
    applied.append('transport-headers')
    if any(n.lower() == 'x-hook-signature' for n, _ in netbox['headers'] + ours['headers']):
        applied.append('signature')

    nb, us = netbox['json'], ours['json']
    if nb is None or us is None:
        return applied, problems

    # timestamp
    a, b = nb.get('timestamp'), us.get('timestamp')
    if isinstance(a, str) and isinstance(b, str):
        ok_format = bool(TIMESTAMP_RE.match(a)) and bool(TIMESTAMP_RE.match(b))
        close = ok_format and abs((_parse_ts(a) - _parse_ts(b)).total_seconds()) <= TIMESTAMP_TOLERANCE_S
        if ok_format and close:
            nb['timestamp'] = us['timestamp'] = '<timestamp>'
            applied.append('timestamp')
        else:
            problems.append(('timestamp', a, b, 'not NetBox\'s format, or more than 10 minutes apart'))
            nb['timestamp'] = us['timestamp'] = '<timestamp>'

    # request-fallback
    if not ctx.plugin and isinstance(nb.get('request'), dict) and isinstance(us.get('request'), dict):
        fallback = expected_fallback(us)
        got = {k: us['request'].get(k) for k in ('path', 'path_info', 'method', 'GET')}
        if fallback is not None and got == fallback:
            for k in fallback:
                nb['request'][k] = us['request'][k] = '<fallback>'
            applied.append('request-fallback')

    # request-path-counts
    fields = ctx.path_dependent_fields.get(nb.get('object_type'), ())
    nb_data, our_data = nb.get('data'), us.get('data')
    if isinstance(nb_data, dict) and isinstance(our_data, dict):
        dropped = [k for k in nb_data if k in fields and k not in our_data]
        for k in dropped:
            del nb_data[k]
        if dropped:
            applied.append('request-path-counts')
    return applied, problems


def expected_fallback(body):
    """The request block's path, path_info, method and GET netbox-outbox documents for a change
    it has no request context for."""
    data = body.get('data')
    if not isinstance(data, dict) or not isinstance(data.get('url'), str) or 'id' not in data:
        return None
    detail = data['url']
    suffix = f"{data['id']}/"
    if not detail.endswith(suffix):
        return None
    if body.get('event') == 'created':
        path, method = detail[:-len(suffix)], 'POST'
    elif body.get('event') == 'updated':
        path, method = detail, 'PATCH'
    else:
        path, method = detail, 'DELETE'
    return {'path': path, 'path_info': path, 'method': method, 'GET': {}}
