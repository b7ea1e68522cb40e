#!/usr/bin/env python3
"""
Check the model catalogue against a live NetBox on a SCRATCH database that has some objects in it (see seed.py).

For every catalogue model and every object of it in the database (up to --limit each) this script:

  * renders the REST `data` from the database row alone, using only the catalogue, and compares it field by field
    (JSON-encoded the way the webhook body is) with the real serializer output;
  * renders the snapshot the same way and compares it with the real serialize_object() output;
  * evaluates the display spec and compares it with str(obj).

Rows are read with row_to_json(), which is what netbox-outbox's capture triggers store, so the conversions here
are the ones the Rust side has to make. Fields of kind "method" (computed in Python) are not rendered; their
presence and position are still checked.

    NETBOX_ROOT=/tmp/nbo-cat-instance /root/.cache/nbo/venv-4.7.3/bin/python tools/catalogue/check.py \
        src/netbox/catalogue/netbox-4.7.3.json
"""

import argparse
import datetime
import ipaddress
import json
import os
import sys
import zoneinfo
from collections import OrderedDict, defaultdict
from decimal import Decimal
from pathlib import Path

os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'netbox.settings')
import django  # noqa: E402

django.setup()

from django.apps import apps  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.utils import translation  # noqa: E402
from rest_framework.utils.encoders import JSONEncoder as DRFJSONEncoder  # noqa: E402

from utilities.api import get_serializer_for_model  # noqa: E402
from utilities.serialization import serialize_object  # noqa: E402

CAT = None
PROBLEMS = defaultdict(list)
STATS = defaultdict(int)
SKIPPED = defaultdict(int)


def problem(model, msg):
    PROBLEMS[model].append(msg)


# ---------------------------------------------------------------------------
# Row access
# ---------------------------------------------------------------------------

_ROW_CACHE = {}


def fetch_row(label, pk):
    key = (label, pk)
    if key not in _ROW_CACHE:
        m = CAT['models'][label] if label in CAT['models'] else None
        table = m['table'] if m else apps.get_model(label)._meta.db_table
        pkcol = m['pk_column'] if m else 'id'
        with connection.cursor() as c:
            c.execute(f'SELECT row_to_json(t)::text FROM "{table}" t WHERE "{pkcol}" = %s', [pk])
            r = c.fetchone()
        _ROW_CACHE[key] = json.loads(r[0], parse_float=Decimal, object_pairs_hook=OrderedDict) if r else None
    return _ROW_CACHE[key]


def query_ids(sql, params):
    with connection.cursor() as c:
        c.execute(sql, params)
        return [r[0] for r in c.fetchall()]


def order_sql(order_by, alias):
    parts = []
    for o in order_by or []:
        if not o.get('column'):
            return None
        nulls = ''
        if o.get('nulls') == 'first':
            nulls = ' NULLS FIRST'
        elif o.get('nulls') == 'last':
            nulls = ' NULLS LAST'
        collate = ' COLLATE "C"' if o.get('collate') == 'C' else ''
        expr = f'{alias}."{o["column"]}"'
        if o.get('join'):
            j = o['join']
            expr = f'(SELECT j."{j["column"]}" FROM "{j["table"]}" j WHERE j."{j["pk_column"]}" = {expr})'
        parts.append(f'{expr}{collate}{" DESC" if o["desc"] else ""}{nulls}')
    return ', '.join(parts)


_CT = {}


def ct_label(ct_id):
    if ct_id not in _CT:
        with connection.cursor() as c:
            c.execute('SELECT app_label, model FROM django_content_type WHERE id = %s', [ct_id])
            r = c.fetchone()
        _CT[ct_id] = f'{r[0]}.{r[1]}' if r else None
    return _CT[ct_id]


def ct_id_of(label):
    a, m = label.split('.')
    with connection.cursor() as c:
        c.execute('SELECT id FROM django_content_type WHERE app_label = %s AND model = %s', [a, m])
        return c.fetchone()[0]


# ---------------------------------------------------------------------------
# Value conversions (row_to_json value -> NetBox output)
# ---------------------------------------------------------------------------

def inet_str(v):
    """str(netaddr.IPNetwork) for a value read from row_to_json (which drops /32 and /128 on inet)."""
    # Postgres' own inet/cidr text form matches netaddr's str() (checked, including IPv4-mapped IPv6); only the
    # /32 or /128 that the host form drops has to be put back.
    if '/' not in v:
        v = v + ('/128' if ':' in v else '/32')
    return v


def mac_str(v):
    return v.upper()


def parse_ts(v):
    return datetime.datetime.fromisoformat(v)


def drf_datetime(v):
    d = parse_ts(v).astimezone(zoneinfo.ZoneInfo(settings.TIME_ZONE))
    s = d.isoformat()
    if s.endswith('+00:00'):
        s = s[:-6] + 'Z'
    return s


def django_json_datetime(v):
    d = parse_ts(v).astimezone(datetime.timezone.utc) if settings.USE_TZ else parse_ts(v)
    r = d.isoformat()
    if d.microsecond:
        r = r[:23] + r[26:]
    if r.endswith('+00:00'):
        r = r.removesuffix('+00:00') + 'Z'
    return r


def rest_value(v, spec, fmt_key='format'):
    fmt = spec.get(fmt_key)
    if v is None or (fmt == 'timezone' and v == ''):
        return None
    if fmt in ('str', 'uuid', 'timezone'):
        return v
    if fmt == 'int':
        return int(v)
    if fmt == 'float':
        return float(v)
    if fmt == 'bool':
        return bool(v)
    if fmt == 'decimal':
        return float(Decimal(v))
    if fmt == 'datetime':
        return drf_datetime(v)
    if fmt in ('date', 'time'):
        return v
    if fmt == 'json':
        return v
    if fmt == 'inet':
        return inet_str(v)
    if fmt == 'cidr':
        return inet_str(v)
    if fmt == 'mac':
        return mac_str(v)
    if fmt == 'file_url':
        return (spec.get('media_url') or settings.MEDIA_URL) + v if v else None
    if fmt == 'array':
        item = {'format': spec.get('item_format')}
        for k, val in spec.items():
            if k.startswith('item_') and k != 'item_format':
                item[k[5:]] = val
        if spec.get('item_format') == 'int_range':
            return [int_range_bounds(x) for x in v]
        if item['format'] == 'array':
            item['item_format'] = spec.get('item_item_format')
        return [rest_value(x, item) for x in v]
    raise ValueError(f'unsupported REST format {fmt}')


def int_range_bounds(v):
    # Postgres canonical int4range text: "[1,10)"
    lo, hi = v[1:-1].split(',')
    lo = int(lo) + (0 if v[0] == '[' else 1)
    hi = int(hi) - (1 if v[-1] == ')' else 0)
    return [lo, hi]


def snapshot_value(v, spec):
    fmt = spec.get('format')
    if v is None or (fmt == 'timezone' and v == ''):
        return None
    if fmt in ('str', 'uuid', 'timezone', 'file'):
        return v
    if fmt in ('int',):
        return int(v)
    if fmt == 'float':
        return float(v)
    if fmt == 'bool':
        return bool(v)
    if fmt == 'decimal':
        return str(Decimal(v))
    if fmt == 'datetime':
        return django_json_datetime(v)
    if fmt == 'date':
        return v
    if fmt == 'time':
        t = datetime.time.fromisoformat(v)
        r = t.isoformat()
        if t.microsecond:
            r = r[:12]
        return r
    if fmt == 'json':
        return v
    if fmt in ('inet', 'cidr'):
        return inet_str(v)
    if fmt == 'mac':
        return mac_str(v)
    if fmt == 'binary':
        import base64
        return base64.b64encode(bytes.fromhex(v[2:])).decode('ascii')
    if fmt == 'array_list':
        return [snapshot_value(x, {'format': spec.get('item_format')}) for x in v]
    if fmt == 'array_json':
        if not v or v[0] is None:
            return [snapshot_value(x, {'format': spec.get('item_format')}) for x in v]
        items = []
        for x in v:
            if x is None:
                items.append(None)
            elif spec.get('item_format') == 'range':
                items.append(range_json(x))
            elif spec.get('item_format') == 'array':
                items.append(json.dumps([None if y is None else str(y) for y in x], ensure_ascii=False))
            else:
                items.append(py_str(x, {'format': spec.get('item_format')}))
        return json.dumps(items, ensure_ascii=False)
    raise ValueError(f'unsupported snapshot format {fmt}')


def range_json(v):
    if v == 'empty':
        return json.dumps({'empty': True})
    lo, hi = v[1:-1].split(',')
    return json.dumps({'bounds': v[0] + v[-1], 'lower': lo or None, 'upper': hi or None})


def py_str(v, colspec):
    """str() of the Django value of a column, from its row_to_json value."""
    fmt = (colspec or {}).get('format')
    if v is None:
        return 'None'
    if fmt in ('inet', 'cidr'):
        return inet_str(v)
    if fmt == 'mac':
        return mac_str(v)
    if fmt == 'decimal':
        return str(Decimal(v))
    if fmt == 'bool':
        return 'True' if v else 'False'
    if fmt == 'datetime':
        return str(parse_ts(v).astimezone(datetime.timezone.utc))
    return str(v)


# ---------------------------------------------------------------------------
# Display evaluation
# ---------------------------------------------------------------------------

def split_template(t):
    out = []
    i = 0
    while i < len(t):
        j = t.find('{', i)
        if j < 0:
            out.append(('lit', t[i:]))
            break
        if j > i:
            out.append(('lit', t[i:j]))
        k = t.index('}', j)
        out.append(('expr', t[j + 1:k]))
        i = k + 1
    return out


class DisplayCtx:
    def __init__(self, label, row, spec):
        self.label = label
        self.row = row
        self.spec = spec
        self.refs = {}

    def ref(self, path):
        if path in self.refs:
            return self.refs[path]
        rdef = self.spec['refs'][path]
        if '.' in path:
            parent_path = path.rsplit('.', 1)[0]
            plabel, prow = self.ref(parent_path)
        else:
            plabel, prow = self.label, self.row
        result = (None, None)
        if prow is not None:
            if rdef['kind'] == 'fk':
                v = prow.get(rdef['column'])
                if v is not None:
                    result = (rdef['model'], fetch_row(rdef['model'], v))
            elif rdef['kind'] == 'gfk':
                c, i = prow.get(rdef['ct_column']), prow.get(rdef['id_column'])
                if c is not None and i is not None:
                    lab = ct_label(c)
                    result = (lab, fetch_row(lab, i))
            elif rdef['kind'] == 'first_related':
                tgt = CAT['models'][rdef['model']]
                order = order_sql(rdef['order_by'], 't') or 't.id'
                ids = query_ids(
                    f'SELECT t."{tgt["pk_column"]}" FROM "{tgt["table"]}" t WHERE t."{rdef["ct_column"]}" = %s '
                    f'AND t."{rdef["id_column"]}" = %s ORDER BY {order} LIMIT 1',
                    [ct_id_of(rdef['ct_model']), prow[CAT['models'][plabel]['pk_column']]])
                if ids:
                    result = (rdef['model'], fetch_row(rdef['model'], ids[0]))
        self.refs[path] = result
        return result

    def colspec(self, label, col):
        if label in CAT['models']:
            return CAT['models'][label]['columns'].get(col)
        return None

    def base(self, b):
        """Return (value, colspec, is_string)."""
        if b.startswith('='):
            lab, row = self.ref(b[1:])
            if row is None:
                return None, None, False
            return display(lab, row), None, True
        if b.startswith('$'):
            return render_template(self, self.spec['vars'][b[1:]]), None, True
        if '.' in b:
            path, col = b.rsplit('.', 1)
            lab, row = self.ref(path)
            if row is None:
                raise ValueError(f'ref {path} is null')
            return row.get(col), self.colspec(lab, col), False
        return self.row.get(b), self.colspec(self.label, b), False

    def expr(self, e):
        parts = e.split('|')
        v, cs, is_str = self.base(parts[0])
        for flt in parts[1:]:
            name, _, arg = flt.partition(':')
            v, cs, is_str = apply_filter(self, name, arg, v, cs, is_str), None, True
        return v, cs, is_str

    def text(self, e):
        v, cs, is_str = self.expr(e)
        if is_str:
            return 'None' if v is None else v
        return py_str(v, cs)

    def truthy(self, e):
        v, cs, is_str = self.expr(e)
        if e.startswith('='):
            return v is not None
        if isinstance(v, Decimal):
            return v != 0
        return bool(v)


def apply_filter(ctx, name, arg, v, cs, is_str):
    if name == 'label':
        choices = dict((k, lbl) for k, lbl in CAT['choices'][arg])
        return str(choices.get(v, v))
    s = v if is_str else py_str(v, cs)
    if name == 'replace':
        old, _, new = arg.partition(':')
        return s.replace(old, new)
    if name == 'capitalize':
        return s.capitalize()
    if name == 'strip':
        return s.strip()
    if name == 'basename':
        return Path(s).name
    if name == 'removeprefix':
        prefix = ctx.text(arg) if arg.startswith('$') else arg
        return s.removeprefix(prefix)
    if name == 'localdate':
        return parse_ts(v).astimezone(zoneinfo.ZoneInfo(settings.TIME_ZONE)).date().isoformat()
    if name == 'localtime_hm':
        return parse_ts(v).astimezone(zoneinfo.ZoneInfo(settings.TIME_ZONE)).time().isoformat(timespec='minutes')
    if name == 'asn_with_asdot':
        n = int(v)
        return f'{n} ({n // 65536}.{n % 65536})' if n >= 65536 else str(n)
    if name == 'ip_range_name':
        start = ipaddress.ip_interface(inet_str(v))
        end = ipaddress.ip_interface(inet_str(ctx.row.get(arg)))
        plen = start.network.prefixlen
        if start.ip == end.ip:
            return f'{start.ip.compressed}-{end.ip.compressed}/{plen}'
        sep = ':' if start.version == 6 else '.'
        a = start.ip.compressed.split(sep)
        b = end.ip.compressed.split(sep)
        base = [x for x, y in zip(a, b) if x == y]
        return f'{sep.join(base)}{sep}{sep.join(a[len(base):])}-{sep.join(b[len(base):])}/{plen}'
    if name == 'python_module_name':
        p = Path(s)
        return p.parent.name if p.stem == '__init__' else p.stem
    raise ValueError(f'unknown filter {name}')


def render_template(ctx, t):
    out = []
    for kind, val in split_template(t):
        out.append(val if kind == 'lit' else ctx.text(val))
    return ''.join(out)


def eval_display(label, row, spec):
    ctx = DisplayCtx(label, row, spec)
    if spec['kind'] == 'template':
        return render_template(ctx, spec['template'])
    if spec['kind'] == 'cases':
        for case in spec['cases']:
            if all(ctx.truthy(w) for w in case.get('when') or []):
                return render_template(ctx, case['template'])
        raise ValueError('no case matched')
    raise NotImplementedError(spec['kind'])


def display(label, row):
    spec = CAT['models'][label]['display']
    if spec['kind'] == 'python':
        m = apps.get_model(label)
        return str(m.objects.get(pk=row[CAT['models'][label]['pk_column']]))
    return eval_display(label, row, spec)


# ---------------------------------------------------------------------------
# REST rendering
# ---------------------------------------------------------------------------

class Skip(Exception):
    pass


def nested_specs(label, spec):
    target = CAT['models'][label]
    if 'variant' in spec:
        return target['variants'][spec['variant']]
    if 'fields' in spec:
        by_name = {f['name']: f for f in target['serializer']}
        return [by_name[n] for n in spec['fields']]
    return target['brief']


def render_object(label, pk, specs):
    row = fetch_row(label, pk)
    if row is None:
        return None
    out = OrderedDict()
    for s in specs:
        try:
            val = render_field(label, row, s)
        except Skip:
            out[s['name']] = Skip
            continue
        if val is OMIT:
            continue
        out[s['name']] = val
    return out


OMIT = object()


def render_many(label, ids, spec):
    specs = nested_specs(label, spec)
    return [render_object(label, i, specs) for i in ids]


def render_field(label, row, s):
    m = CAT['models'][label]
    pk = row[m['pk_column']]
    kind = s['kind']
    if kind == 'pk':
        return pk
    if kind == 'api_url':
        return f'{m["api_path"]}{pk}/'
    if kind == 'ui_url':
        return f'{m["ui_path"]}{pk}/'
    if kind == 'display':
        if 'display' in s:
            return eval_display(label, row, s['display'])
        return display(label, row)
    if kind == 'value':
        return rest_value(row.get(s['column']), s)
    if kind == 'choice':
        v = row.get(s['column'])
        if v is None or v == '':
            return None
        choices = dict((k, lbl) for k, lbl in CAT['choices'][s['choices']])
        return OrderedDict([('value', v), ('label', choices.get(v, ''))])
    if kind == 'fk':
        v = row.get(s['column'])
        if v is None:
            return None
        return render_object(s['model'], v, nested_specs(s['model'], s))
    if kind == 'content_type':
        v = row.get(s['column'])
        return None if v is None else ct_label(v)
    if kind == 'gfk':
        c, i = row.get(s['ct_column']), row.get(s['id_column'])
        if c is None or i is None:
            return None
        lab = ct_label(c)
        if lab not in CAT['models']:
            raise Skip()
        return render_object(lab, i, CAT['models'][lab]['brief'])
    if kind in ('m2m', 'content_types'):
        th = s['through']
        if kind == 'content_types':
            ids = query_ids(
                f'SELECT x."{th["target_column"]}" FROM "{th["table"]}" x JOIN django_content_type t '
                f'ON t.id = x."{th["target_column"]}" WHERE x."{th["source_column"]}" = %s '
                f'ORDER BY t.app_label, t.model', [pk])
            return [ct_label(i) for i in ids]
        tgt = CAT['models'][s['model']]
        order = order_sql(s.get('order_by'), 't')
        if order is None:
            raise Skip()
        ids = query_ids(
            f'SELECT t."{tgt["pk_column"]}" FROM "{th["table"]}" x JOIN "{tgt["table"]}" t '
            f'ON t."{tgt["pk_column"]}" = x."{th["target_column"]}" WHERE x."{th["source_column"]}" = %s '
            f'ORDER BY {order or "1"}', [pk])
        if s.get('as') == 'pk':
            return ids
        if s.get('as'):
            return [fetch_row(s['model'], i)[s['as']] for i in ids]
        return render_many(s['model'], ids, s)
    if kind == 'tags':
        th = s['through']
        tgt = CAT['models'][s['model']]
        order = order_sql(s['order_by'], 't')
        ids = query_ids(
            f'SELECT t.id FROM "{th["table"]}" x JOIN "{tgt["table"]}" t ON t.id = x."{th["tag_column"]}" '
            f'WHERE x."{th["content_type_column"]}" = %s AND x."{th["object_id_column"]}" = %s ORDER BY {order}',
            [ct_id_of(label), pk])
        return render_many(s['model'], ids, s)
    if kind == 'related':
        r = s['render']
        tgt_label = s['model']
        tgt_model = apps.get_model(tgt_label)
        table = tgt_model._meta.db_table
        pkcol = tgt_model._meta.pk.column
        order = order_sql(s.get('order_by'), 't')
        if order is None:
            raise Skip()
        if 'fk_column' in s:
            ids = query_ids(f'SELECT t."{pkcol}" FROM "{table}" t WHERE t."{s["fk_column"]}" = %s '
                            f'ORDER BY {order or "1"}', [pk])
        else:
            ids = query_ids(f'SELECT t."{pkcol}" FROM "{table}" t WHERE t."{s["ct_column"]}" = %s AND '
                            f't."{s["id_column"]}" = %s ORDER BY {order or "1"}', [ct_id_of(label), pk])
        if r['kind'] == 'nested_many':
            return render_many(tgt_label, ids, r)
        if r['kind'] == 'nested':
            if not ids:
                return None
            return render_many(tgt_label, ids[:1], r)[0]
        if r['kind'] == 'mapping_list':
            out = []
            for i in ids:
                trow = fetch_row(tgt_label, i)
                item = OrderedDict()
                for f in r['item_fields']:
                    item[f['name']] = rest_value(trow.get(f['column']), f)
                out.append(item)
            return out
        raise Skip()
    if kind == 'custom_fields':
        return render_custom_fields(label, row)
    if kind == 'method' and 'derive' in s:
        return render_derived(label, row, s)
    if kind in ('count',):
        return OMIT
    if kind == 'annotation':
        wm = s['when_missing']
        if wm == 'omit':
            return OMIT
        if wm == 'null':
            return None
        return s.get('default')
    raise Skip()


def render_shape(model_label, value_id, shape):
    """Render a related object id per a render shape (nested / nested_many)."""
    if value_id is None:
        return None
    return render_object(model_label, value_id, nested_specs(model_label, shape))


def render_derived(label, row, s):
    d = s['derive']
    m = CAT['models'][label]
    pk = row[m['pk_column']]
    k = d['kind']
    render = s.get('render') or {}
    if k == 'path_depth':
        p = row.get(d['column'])
        return 0 if not p else str(p).count('.')
    if k == 'prefer_ipv4':
        v4, v6 = row.get(d['ipv4_column']), row.get(d['ipv6_column'])
        prefer = getattr(settings, 'PREFER_IPV4', d['setting_default'])
        from netbox.config import get_config
        prefer = get_config().PREFER_IPV4
        chosen = v4 if (prefer and v4) else (v6 if v6 else v4)
        return render_shape(render['model'], chosen, render)
    if k == 'ip_family':
        v = row.get(d['column'])
        if not v:
            return None
        fam = 6 if ':' in v else 4
        if render.get('kind') != 'choice':
            return fam
        choices = dict((a, b) for a, b in CAT['choices'][render['choices']])
        return OrderedDict([('value', fam), ('label', choices.get(fam, ''))])
    if k == 'any_truthy':
        res = any(bool(row.get(c)) for c in d.get('columns', [])) or any(not row.get(c) for c in d.get('not_columns', []))
        if not res and 'exists' in d:
            res = bool(query_ids(f'SELECT 1 FROM "{d["exists"]["table"]}" WHERE "{d["exists"]["fk_column"]}" = %s',
                                 [pk]))
        return res
    if k == 'fk_column':
        v = row.get(d['fk_column'])
        if v is None:
            return None
        return rest_value(fetch_row(d['model'], v).get(d['column']), d)
    if k == 'generic_count':
        return query_ids(f'SELECT count(*) FROM "{d["table"]}" WHERE "{d["ct_column"]}" = %s AND "{d["id_column"]}" = %s',
                         [ct_id_of(label), pk])[0]
    if k == 'generic_first':
        tgt = CAT['models'][d['model']]
        order = order_sql(d['order_by'], 't') or f't."{tgt["pk_column"]}"'
        ids = query_ids(f'SELECT t."{tgt["pk_column"]}" FROM "{tgt["table"]}" t WHERE t."{d["ct_column"]}" = %s '
                        f'AND t."{d["id_column"]}" = %s ORDER BY {order} LIMIT 1', [ct_id_of(label), pk])
        return render_shape(d['model'], ids[0] if ids else None, render)
    if k == 'legacy_port_mappings':
        grouped = OrderedDict()
        for mapping in row.get(d['column']) or []:
            proto, _, port = mapping.partition('/')
            grouped.setdefault(proto, []).append(port)
        if len(grouped) == 1:
            proto, ports = next(iter(grouped.items()))
            ints = sorted(int(p) for p in ports if str(p).isdigit())
            res = (None, None) if len(ints) != len(ports) else (proto, ints)
        else:
            res = (None, []) if not grouped else (None, None)
        if d['part'] == 'ports':
            return res[1]
        if res[0] is None:
            return None
        choices = dict((a, b) for a, b in CAT['choices'][render['choices']])
        return OrderedDict([('value', res[0]), ('label', choices.get(res[0], ''))])
    if k == 'cable_end_terminations':
        order = order_sql(d['order_by'], 't')
        with connection.cursor() as c:
            c.execute(f'SELECT t."{d["ct_column"]}", t."{d["id_column"]}" FROM "{d["table"]}" t '
                      f'WHERE t."{d["fk_column"]}" = %s AND t."{d["end_column"]}" = %s ORDER BY {order}',
                      [pk, d['cable_end']])
            rows = c.fetchall()
        out = []
        for ctid, oid in rows:
            lab = ct_label(ctid)
            out.append(OrderedDict([('object_type', lab), ('object_id', oid),
                                    ('object', render_object(lab, oid, CAT['models'][lab]['brief']))]))
        return out
    if k == 'gfk_column_equals_pk':
        c, i = row.get(d['ct_column']), row.get(d['id_column'])
        if c is None or i is None:
            return False
        other = fetch_row(ct_label(c), i)
        if other is None or d['column'] not in other:
            return False
        return other[d['column']] == pk
    if k == 'column':
        return rest_value(row.get(d['column']), d)
    if k == 'array_length':
        return len(row.get(d['column']) or [])
    if k == 'cached_column':
        v = row.get(d['column'])
        if v is None:
            raise Skip()
        return v
    if k == 'parent_bay':
        with connection.cursor() as c:
            c.execute(f'SELECT id, "{d["device_column"]}" FROM "{d["table"]}" WHERE "{d["installed_column"]}" = %s',
                      [pk])
            r = c.fetchone()
        if not r:
            return None
        out = render_object(d['device_model'], r[1], CAT['models'][d['device_model']]['variants'][d['device_variant']])
        out['device_bay'] = render_object(d['bay_model'], r[0],
                                          CAT['models'][d['bay_model']]['variants'][d['bay_variant']])
        return out
    raise Skip()


def render_custom_fields(label, row):
    data = row.get('custom_field_data') or {}
    with connection.cursor() as c:
        c.execute(
            'SELECT cf.name, cf.type FROM extras_customfield cf JOIN extras_customfield_object_types ot '
            'ON ot.customfield_id = cf.id WHERE ot.contenttype_id = %s ORDER BY cf.group_name, cf.weight, cf.name',
            [ct_id_of(label)])
        cfs = c.fetchall()
    out = OrderedDict()
    for name, typ in cfs:
        v = data.get(name)
        if typ not in ('text', 'longtext', 'url', 'integer', 'boolean', 'date', 'json') and v is not None:
            raise Skip()
        out[name] = v
    return out


# ---------------------------------------------------------------------------
# Snapshot rendering
# ---------------------------------------------------------------------------

def render_snapshot(label, row):
    m = CAT['models'][label]
    pk = row[m['pk_column']]
    out = OrderedDict()
    for s in m['snapshot']:
        if 'm2m' in s:
            th = s['m2m']
            tgt = CAT['models'].get(s['model'])
            ttable = tgt['table'] if tgt else apps.get_model(s['model'])._meta.db_table
            tpk = tgt['pk_column'] if tgt else 'id'
            order = order_sql(s.get('order_by'), 't')
            if order is None:
                out[s['name']] = Skip
                continue
            order = (order + ', ' if order else '') + f't."{tpk}"'
            out[s['name']] = query_ids(
                f'SELECT t."{tpk}" FROM "{th["table"]}" x JOIN "{ttable}" t ON t."{tpk}" = x."{th["target_column"]}" '
                f'WHERE x."{th["source_column"]}" = %s ORDER BY {order}', [pk])
        elif s.get('kind') == 'custom_fields':
            out['custom_fields'] = row.get(s['column'])
        elif s.get('kind') == 'tags':
            out['tags'] = sorted(query_ids(
                'SELECT t.name FROM extras_taggeditem x JOIN extras_tag t ON t.id = x.tag_id '
                'WHERE x.content_type_id = %s AND x.object_id = %s', [ct_id_of(label), pk]))
        elif s.get('kind') == 'cable_terminations':
            out[s['name']] = query_ids(
                f'SELECT "{s["value_column"]}" FROM "{s["table"]}" WHERE "{s["fk_column"]}" = %s AND '
                f'"{s["end_column"]}" = %s ORDER BY 1', [pk, s['cable_end']])
        else:
            out[s['name']] = snapshot_value(row.get(s['column']), s)
    return out


# ---------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------

def enc(v):
    return json.dumps(v, cls=DRFJSONEncoder)


def compare(label, what, real, mine, path=''):
    """Compare two rendered structures; Skip placeholders in `mine` match anything."""
    if mine is Skip:
        STATS['skipped_values'] += 1
        SKIPPED[f'{label} {what.split(" #")[0]} {path.rsplit(".", 1)[-1]}'] += 1
        return
    if isinstance(real, dict) and isinstance(mine, dict):
        rk, mk = list(real.keys()), list(mine.keys())
        if rk != mk:
            problem(label, f'{what}{path}: keys differ\n      real: {rk}\n      mine: {mk}')
            return
        for k in rk:
            compare(label, what, real[k], mine[k], f'{path}.{k}')
        return
    if isinstance(real, list) and isinstance(mine, list) and len(real) == len(mine):
        for i, (a, b) in enumerate(zip(real, mine)):
            compare(label, what, a, b, f'{path}[{i}]')
        return
    STATS['compared_values'] += 1
    if enc(real) != enc(mine):
        problem(label, f'{what}{path}: real {enc(real)[:300]} != mine {enc(mine)[:300]}')


def check_object(label, obj):
    m = CAT['models'][label]
    row = fetch_row(label, obj.pk)
    # display
    try:
        mine = display(label, row)
        STATS['display_checked'] += 1
        if mine != str(obj):
            problem(label, f'display #{obj.pk}: real {str(obj)!r} != mine {mine!r}')
    except Exception as e:
        problem(label, f'display #{obj.pk}: error {e!r}')
    # REST data
    S = get_serializer_for_model(type(obj))
    real = json.loads(enc(S(obj, context={'request': None}).data), object_pairs_hook=OrderedDict)
    mine = OrderedDict()
    for s in m['serializer']:
        try:
            v = render_field(label, row, s)
        except Skip:
            v = Skip
        except Exception as e:
            problem(label, f'data #{obj.pk}.{s["name"]}: render error {e!r}')
            v = Skip
        if v is OMIT:
            continue
        mine[s['name']] = v
    mine = json.loads(enc_with_skip(mine), object_pairs_hook=OrderedDict)
    compare(label, f'data #{obj.pk}', real, unskip(mine))
    STATS['data_checked'] += 1
    # snapshot
    real_snap = obj.serialize_object() if hasattr(obj, 'serialize_object') else serialize_object(obj)
    try:
        mine_snap = render_snapshot(label, row)
        compare(label, f'snapshot #{obj.pk}', json.loads(json.dumps(real_snap)), mine_snap)
        STATS['snapshot_checked'] += 1
    except Exception as e:
        problem(label, f'snapshot #{obj.pk}: error {e!r}')


SKIP_TOKEN = '\u0000SKIP\u0000'


def enc_with_skip(v):
    def conv(x):
        if x is Skip:
            return SKIP_TOKEN
        if isinstance(x, dict):
            return OrderedDict((k, conv(val)) for k, val in x.items())
        if isinstance(x, list):
            return [conv(i) for i in x]
        return x
    return json.dumps(conv(v), cls=DRFJSONEncoder)


def unskip(x):
    if x == SKIP_TOKEN:
        return Skip
    if isinstance(x, dict):
        return OrderedDict((k, unskip(v)) for k, v in x.items())
    if isinstance(x, list):
        return [unskip(i) for i in x]
    return x


def main():
    global CAT
    ap = argparse.ArgumentParser()
    ap.add_argument('catalogue')
    ap.add_argument('--limit', type=int, default=20)
    ap.add_argument('--model', action='append')
    args = ap.parse_args()
    db = settings.DATABASES['default']['NAME']
    if 'template' in db:
        sys.exit(f'refusing to run against {db!r}; use a scratch copy')
    translation.activate('en')
    CAT = json.load(open(args.catalogue), object_pairs_hook=OrderedDict)
    empty = []
    for label in CAT['models']:
        if args.model and label not in args.model:
            continue
        model = apps.get_model(label)
        objs = list(model.objects.order_by('pk')[:args.limit])
        if not objs:
            empty.append(label)
            continue
        for obj in objs:
            check_object(label, obj)
        STATS['models_checked'] += 1
    for label, msgs in sorted(PROBLEMS.items()):
        print(f'== {label}')
        for msg in msgs:
            print(f'   {msg}')
    print(f'models without objects ({len(empty)}): {", ".join(empty)}')
    if SKIPPED:
        print('not verified (Python-computed or unsupported here), occurrences:')
        for k, v in sorted(SKIPPED.items()):
            print(f'   {k}: {v}')
    print(dict(STATS))
    print(f'{sum(len(v) for v in PROBLEMS.values())} problem(s) in {len(PROBLEMS)} model(s)')
    return 1 if PROBLEMS else 0


if __name__ == '__main__':
    sys.exit(main())
