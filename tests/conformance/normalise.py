"""THE normalisation: everything the suite forgives when it compares a NetBox webhook with
netbox-outbox's, in one place.

Anything not listed here must be identical: method, URL, every other header (names, values and
order), the body's bytes (for a default body: its JSON encoding, key order, types and values at
every depth), and the signature's validity.

| rule | what | why |
| --- | --- | --- |
| `timestamp` | top-level `timestamp`: both must have NetBox's format (UTC isoformat, `+00:00`, 6-digit microseconds or none) and lie within 10 minutes of each other; the values are not compared | it is the moment each side enqueued or built the request |
| `transport-headers` | `Host`, `Connection`, `Content-Length` and netbox-outbox's `X-Netbox-Outbox-Delivery` are dropped | framing the HTTP clients add (the body's length is covered by the body); the delivery id is netbox-outbox's own (documented) |
| `client-headers` | `User-Agent`, `Accept` and `Accept-Encoding`, only where the two sides' values differ (or one side lacks the header); equal ones are compared | the HTTP client's own: NetBox's urllib3 sends `User-Agent: python-urllib3/<version>`, `Accept-Encoding: identity` and no `Accept`; netbox-outbox's reqwest sends its configured `user_agent` and `Accept: */*`. A receiver can tell them apart by these; the README lists it |
| `signature` | `X-Hook-Signature` is replaced by whether it verifies (HMAC-SHA512 of that side's own body with the webhook's secret) | the bodies differ in their timestamps, so the signatures do |
| `request-fallback` | without the plugin only: `request.path`, `request.path_info`, `request.method` and `request.GET` are forgiven when netbox-outbox's values are exactly the documented fallback (`POST` to the list path for `created`, `PATCH`/`DELETE` on the object's path otherwise, `GET` `{}`) | the database does not know the request's path, method or query; the plugin tells it |
| `request-path-counts` | `data.<key>` present in NetBox's body and absent from ours, where the catalogue says the key is a queryset annotation omitted when missing (`annotation`, `when_missing: omit`); and, for `updated` and `deleted`, NetBox's value of an annotation whose value is a default when missing (`annotation`, `when_missing: default`, e.g. region `site_count`, device role `device_count`) where ours is that default. Not `RelatedObjectCountField`s (`count`: `device_count` of a site...): netbox-outbox counts those from the database for REST updates and deletes, and they are compared | NetBox fills them only when the REST viewset's annotated queryset produced the instance (PATCH, PUT, DELETE); the viewsets' own annotations (cumulative over a tree) are not computed by netbox-outbox yet |
| `fallback-counts` | without the plugin only, for `updated` and `deleted`: a `count` key (`device_count`...) in our `data` and not in NetBox's | the database does not know whether a change came through the REST API; netbox-outbox follows its documented fallback, a REST PATCH or DELETE, whose viewset annotates them; NetBox's change came from nbshell or a script |
| `cascade-on-delete` | for `deleted`: a `count` key (`prefix_count`, `tagged_items`) where ours is lower than NetBox's, and a list of port mappings (`rear_ports`, `front_ports`) that is empty in ours and not in NetBox's | NetBox serializes a deleted object before its delete cascades (SET_NULL onto prefixes, the deleted tag's tagged items, the port's mappings); the sidecar reads the committed state, and the capture holds the cascaded rows only for watched models (never the port mappings, which have no event rules) |
| `unordered-object-types` | the order of a list of object types (`object_types` of an event rule, custom field, custom link, export template, saved filter), when both sides list the same types; only for lists NetBox reads through a many-to-many relation without an ordering (catalogue kind `content_types`, no `order_by`) | NetBox reads them with a query without `ORDER BY`, so their order is whatever plan PostgreSQL picked for that query (seen: neither the types' ids nor their names); netbox-outbox sorts them by name |
| `client-json-order` | for `created`: the key order inside JSON values of `snapshots.postchange` (`custom_fields` and JSON fields such as `local_context_data`), when both sides have the same keys | NetBox's snapshot of a new object keeps the order the client sent; PostgreSQL's jsonb keeps its own order, and the client's is stored nowhere |
| `unlogged-request` | without the plugin only: `request.id` and `request.user` of a change NetBox did not write to its change log (a save that changes nothing), when ours are the documented stand-ins: the transaction's id (`6e626f75-7462-...`) and the database role | NetBox writes no change log row for such a save, so nothing in the database holds its request id or user; the plugin provides them |
| `in-memory-counters` | `*_count` integers inside nested objects of `data` (for example `data.device_type.device_count`) | NetBox renders a nested object from the copy it loaded during the request, and updates counter caches in the database only (`QuerySet.update(F() + 1)`), so the value depends on when in the request NetBox loaded that copy (seen: 4, 2 and 3 for three devices of one bulk create); the database holds the committed count |
| `header-name-case` | a header name NetBox sends in a spelling other than Title-Case (`x-dup` from additional headers such as `X-Dup: first` then `x-dup: second`), when ours is that name in Title-Case (`X-Dup`); values, order and every Title-Case name are still compared | NetBox's `requests` sends a name as the webhook spells it; netbox-outbox's HTTP client (reqwest on hyper) stores names lower-case and can only send them lower-case or in Title-Case, and sends Title-Case, which is what NetBox sends for names written that way (`Content-Type`, `X-Hook-Signature`). netbox-outbox freezes the exact spelling in `netbox_outbox.delivery.headers`; HTTP header names are case-insensitive (RFC 9110 5.1) |
| `mirror-url` | for the plugin's `netbox_outbox.webhook` rule compared with NetBox's `webhook` rule: the webhook's own URL path (`/hook/outbox` vs `/hook/main`) | two webhooks, so that NetBox's and ours can be told apart |

Each rule is counted in the report every time it applies, so the table above can be checked
against what really differed.

`EVERY_REQUEST` are the rules that apply to any two requests whatever they carry (when each was
made, and the HTTP framing): a pair that needed no other rule is *identical*. A pair that needed
any other rule is *identical after a documented difference*, counted apart, with each rule named
(report.py); neither is ever added to the other, nor to what is unpaired by design.
"""

import hashlib
import hmac
import re
from datetime import datetime

TRANSPORT_HEADERS = frozenset(h.lower() for h in (
    'Host', 'Connection', 'Content-Length', 'X-Netbox-Outbox-Delivery',
))
CLIENT_HEADERS = frozenset(h.lower() for h in ('User-Agent', 'Accept', 'Accept-Encoding'))
TIMESTAMP_RE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00$')
TIMESTAMP_TOLERANCE_S = 600
OMITTED = object()
# netbox-outbox's stand-in request id for a change it cannot attribute: a UUID made from
# b'nboutbox' and the transaction id
TRANSACTION_ID_PREFIX = '6e626f75-7462-'

RULES = {
    'timestamp': 'top-level timestamp: format checked, value not compared',
    'transport-headers': 'Host, Connection, Content-Length and our delivery id dropped',
    'client-headers': 'User-Agent / Accept / Accept-Encoding: each HTTP client sends its own',
    'signature': 'X-Hook-Signature compared by verifying each side against its own body',
    'request-fallback': 'without the plugin: request.path/path_info/method/GET are the documented fallback',
    'request-path-counts': 'viewset annotations (region site_count...) NetBox adds only for REST PATCH/PUT/DELETE',
    'fallback-counts': 'without the plugin: related-object counts of the fallback REST request, NetBox\'s change made otherwise',
    'cascade-on-delete': 'deleted: a count lower than NetBox\'s, or port mappings empty, after the delete\'s own cascade',
    'unordered-object-types': 'order of an object type list NetBox reads without ORDER BY (same types)',
    'client-json-order': 'created: key order inside JSON values of the postchange snapshot (client order)',
    'unlogged-request': 'without the plugin: request id and user of a save NetBox did not log',
    'in-memory-counters': '*_count integers inside nested objects of data (NetBox in-memory copies)',
    'mirror-url': 'netbox_outbox.webhook rule compared with the equivalent webhook rule: URL path',
    'header-name-case': 'a header name NetBox sends other than in Title-Case: ours is sent in Title-Case',
}


# Why a database cannot know what each documented difference forgives (the report's last column).
WHY = {
    'client-headers': 'each side\'s HTTP client sends its own; nothing about the change',
    'request-fallback': 'the request\'s path, method and query are not in the database; the plugin sends them',
    'request-path-counts': 'NetBox fills them only when its REST view loaded the object through an annotated '
                           'queryset (PATCH/PUT/DELETE); netbox-outbox computes the related-object counts but '
                           'not yet the viewsets\' own (tree-cumulative) annotations',
    'fallback-counts': 'without the plugin the database does not say whether a change came through the REST API; '
                       'netbox-outbox follows its documented fallback (a REST PATCH or DELETE), which has them',
    'cascade-on-delete': 'NetBox serializes a deleted object before the delete cascades; the sidecar reads after the '
                         'commit, and the rows the cascade removed or unlinked are in the capture only when their '
                         'model is watched (port mappings never are: no event rules)',
    'unordered-object-types': 'NetBox lists them from a query without ORDER BY: the order is the plan PostgreSQL '
                              'chose for NetBox\'s query, which no row records',
    'client-json-order': 'jsonb stores its own key order; the order the client sent is stored nowhere',
    'unlogged-request': 'NetBox logs no change for a save that changes nothing, so its request id and user '
                        'are in no row; the plugin sends them',
    'in-memory-counters': 'NetBox renders a nested object from the copy it loaded during the request, '
                          'before or after its own counter updates; the database holds only the committed count',
    'header-name-case': 'the HTTP client sends a header name lower-case or in Title-Case only',
}

EVERY_REQUEST = frozenset({'timestamp', 'transport-headers', 'signature', 'mirror-url'})


class Context:
    """What the normalisation needs to know about a configuration."""

    def __init__(self, plugin, secrets, path_dependent_fields, json_snapshot_fields, db_user, mirror_paths=None,
                 count_fields=None, unwatched_lists=None, unordered_lists=None):
        self.plugin = plugin
        # webhook name -> secret ('' when none)
        self.secrets = secrets
        # object type -> {data key: OMITTED, or the default value} for the keys whose presence or
        # value depends on the REST request (catalogue kinds `count` and `annotation`)
        self.path_dependent_fields = path_dependent_fields
        # object type -> snapshot keys holding JSON (custom_fields, JSON fields)
        self.json_snapshot_fields = json_snapshot_fields
        # the database role netbox-outbox names as the user of changes it cannot attribute
        self.db_user = db_user
        # our path prefix -> NetBox's path prefix, for mirrored webhooks
        self.mirror_paths = mirror_paths or {}
        # object type -> its `count` data keys (RelatedObjectCountFields)
        self.count_fields = count_fields or {}
        # object type -> data keys listing rows of a model the capture does not record
        self.unwatched_lists = unwatched_lists or {}
        # object type -> data keys listing object types read without an ordering
        self.unordered_lists = unordered_lists or {}


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

    # client-headers: only those whose values differ
    client = {side_name: {n.lower(): v for n, v in side['headers'] if n.lower() in CLIENT_HEADERS}
              for side_name, side in (('netbox', netbox), ('ours', ours))}
    differing_client = {h for h in CLIENT_HEADERS if client['netbox'].get(h) != client['ours'].get(h)}
    if differing_client:
        applied.append('client-headers')

    # transport-headers and signature
    secret = ctx.secrets.get(netbox['webhook'], '')
    for side in (netbox, ours):
        kept = []
        for name, value in side['headers']:
            lname = name.lower()
            if lname in TRANSPORT_HEADERS or lname in differing_client:
                continue
            if lname == 'x-hook-signature':
                expected = hmac.new(secret.encode('utf8'), side['raw'], hashlib.sha512).hexdigest()
                value = '<valid signature>' if hmac.compare_digest(value, expected) else f'<INVALID: {value}>'
            kept.append([name, value])
        side['headers'] = kept
    applied.append('transport-headers')

    # header-name-case
    nb_names = {n.lower(): n for n, _ in netbox['headers']}
    for pair in ours['headers']:
        theirs = nb_names.get(pair[0].lower())
        if theirs is not None and theirs != pair[0] and pair[0] == title_case(theirs) \
                and theirs != title_case(theirs):
            pair[0] = theirs
            applied.append('header-name-case')
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
    fields = ctx.path_dependent_fields.get(nb.get('object_type'), {})
    nb_data, our_data = nb.get('data'), us.get('data')
    if isinstance(nb_data, dict) and isinstance(our_data, dict):
        forgiven = False
        for k in [k for k in nb_data if k in fields]:
            default = fields[k]
            if default is OMITTED and k not in our_data:
                del nb_data[k]
                forgiven = True
            elif (default is not OMITTED and nb.get('event') in ('updated', 'deleted') and k in our_data
                  and our_data[k] == default and nb_data[k] != default):
                nb_data[k] = default
                forgiven = True
        if forgiven:
            applied.append('request-path-counts')

    # fallback-counts: without the plugin, ours has the counts of the documented fallback request
    # (a REST PATCH or DELETE) where NetBox's change was made otherwise (nbshell, a script)
    if (not ctx.plugin and nb.get('event') in ('updated', 'deleted') and isinstance(nb_data, dict)
            and isinstance(our_data, dict)):
        extra = [k for k in ctx.count_fields.get(nb.get('object_type'), ())
                 if k in our_data and k not in nb_data and type(our_data[k]) is int]
        for k in extra:
            del our_data[k]
        if extra:
            applied.append('fallback-counts')

    # cascade-on-delete: NetBox serialized a deleted object before the delete cascaded; ours is
    # read after it. Only a `count` lower than NetBox's (a cascade removes or unlinks rows
    # pointing at the object, never adds), and a list of unwatched rows (port mappings) empty in
    # ours where NetBox's was not.
    if nb.get('event') == 'deleted' and isinstance(nb_data, dict) and isinstance(our_data, dict):
        object_type = nb.get('object_type')
        forgiven = False
        for k in ctx.count_fields.get(object_type, ()):
            a, b = nb_data.get(k), our_data.get(k)
            if type(a) is int and type(b) is int and b < a:
                nb_data[k] = b
                forgiven = True
        for k in ctx.unwatched_lists.get(object_type, ()):
            if our_data.get(k) == [] and isinstance(nb_data.get(k), list) and nb_data[k]:
                nb_data[k] = []
                forgiven = True
        if forgiven:
            applied.append('cascade-on-delete')

    # unordered-object-types: the same object types, in the order of NetBox's unordered query
    if isinstance(nb_data, dict) and isinstance(our_data, dict):
        for k in ctx.unordered_lists.get(nb.get('object_type'), ()):
            a, b = nb_data.get(k), our_data.get(k)
            if (isinstance(a, list) and isinstance(b, list) and a != b
                    and all(isinstance(x, str) for x in a + b) and sorted(a) == sorted(b)):
                nb_data[k] = list(b)
                applied.append('unordered-object-types')

    # in-memory-counters
    if isinstance(nb_data, dict) and isinstance(our_data, dict):
        if _forgive_nested_counters(nb_data, our_data, depth=0):
            applied.append('in-memory-counters')

    # client-json-order
    if nb.get('event') == 'created':
        post_nb = (nb.get('snapshots') or {}).get('postchange')
        post_us = (us.get('snapshots') or {}).get('postchange')
        if isinstance(post_nb, dict) and isinstance(post_us, dict):
            for k in ctx.json_snapshot_fields.get(nb.get('object_type'), ()):
                if k in post_nb and k in post_us:
                    reordered = _reorder_like(post_nb[k], post_us[k])
                    if reordered is not None:
                        post_nb[k] = reordered
                        applied.append('client-json-order')
    return applied, problems


def _forgive_nested_counters(nb, us, depth):
    forgiven = False
    if isinstance(nb, dict) and isinstance(us, dict):
        for k in nb:
            if k not in us:
                continue
            a, b = nb[k], us[k]
            if (depth > 0 and k.endswith('_count') and type(a) is int and type(b) is int and a != b):
                nb[k] = b
                forgiven = True
            elif isinstance(a, (dict, list)):
                forgiven |= _forgive_nested_counters(a, b, depth + 1)
    elif isinstance(nb, list) and isinstance(us, list):
        for a, b in zip(nb, us):
            forgiven |= _forgive_nested_counters(a, b, depth)
    return forgiven


def normalise_unlogged(netbox, ours, ctx):
    """unlogged-request: for a pair made without the request id (see compare.py), replaces our
    stand-in request id and user with NetBox's when they are the documented stand-ins. Returns
    whether it applied."""
    if ctx.plugin:
        return False
    ids = _request_ids(netbox), _request_ids(ours)
    (nb_id, nb_user), (our_id, our_user) = ids
    if not (our_id and our_id.startswith(TRANSACTION_ID_PREFIX) and our_user == ctx.db_user and nb_id):
        return False
    if ours['json'] is not None:
        ours['json']['request']['id'] = nb_id
        ours['json']['request']['user'] = nb_user
    ours['raw'] = ours['raw'].replace(our_id.encode(), nb_id.encode()).replace(
        f'"{our_user}"'.encode(), f'"{nb_user}"'.encode())
    ours['headers'] = [[n, v.replace(our_id, nb_id) if n.lower() == 'x-request'
                        else (nb_user if n.lower() == 'x-user' and v == our_user else v)]
                       for n, v in ours['headers']]
    return True


def _request_ids(side):
    if side['json'] is not None:
        request = side['json'].get('request') or {}
        return request.get('id'), request.get('user')
    headers = {n.lower(): v for n, v in side['headers']}
    return headers.get('x-request'), headers.get('x-user')


def _reorder_like(value, model):
    """value with every dict's keys in model's order, if both have the same keys at every
    depth; None if they differ in anything but order, or nothing needed reordering."""
    def walk(v, m):
        if isinstance(v, dict) and isinstance(m, dict):
            if set(v) != set(m):
                raise ValueError
            return {k: walk(v[k], m[k]) for k in m}
        if isinstance(v, list) and isinstance(m, list) and len(v) == len(m):
            return [walk(a, b) for a, b in zip(v, m)]
        return v
    try:
        result = walk(value, model)
    except ValueError:
        return None
    return result if json_order(result) != json_order(value) else None


def title_case(name):
    """A header name as hyper writes it with title-case headers: each letter that starts the
    name or follows a hyphen upper-cased, the others lower-cased."""
    return '-'.join(part[:1].upper() + part[1:].lower() for part in name.split('-'))


def json_order(v):
    if isinstance(v, dict):
        return [(k, json_order(x)) for k, x in v.items()]
    if isinstance(v, list):
        return [json_order(x) for x in v]
    return v


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
