#!/usr/bin/env python3
"""
What differs between two model catalogues (another NetBox 4.7 patch release's and 4.7.3's), per
model and field, and the JSON merge patch (RFC 7386) that turns 4.7.3's into the other one: the
sidecar embeds 4.7.3's catalogue in full and each other release as such a patch (empty when the
two are identical: the release then shares 4.7.3's catalogue).

    tools/catalogue/versions.py src/netbox/catalogue/netbox-4.7.3.json /tmp/netbox-4.7.0.json \
        [--patch src/netbox/catalogue/netbox-4.7.0.patch.json]

Prints one line per difference (`dcim.interface serializer: field x added after y`); exit status
0 when the catalogues are identical apart from `netbox_version`, 1 when they differ. Standard
library only: runs with any Python 3.
"""

import argparse
import json
import sys

# fields whose lists are compared by name (order and content), not as opaque values
FIELD_LISTS = ('serializer', 'brief', 'snapshot')


def show(value, limit=160):
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + '...'


def diff_fields(where, old, new, out):
    """Two lists of field specs (dicts with `name`): added, removed, changed, reordered."""
    old_by = {f.get('name'): f for f in old}
    new_by = {f.get('name'): f for f in new}
    for i, f in enumerate(new):
        name = f.get('name')
        if name not in old_by:
            after = new[i - 1].get('name') if i else None
            out.append(f'{where}: field {name} added' + (f' after {after}' if after else ' first')
                       + f': {show(f)}')
    for name in old_by:
        if name not in new_by:
            out.append(f'{where}: field {name} removed')
    for name, f in new_by.items():
        g = old_by.get(name)
        if g is None or g == f:
            continue
        for key in sorted(set(f) | set(g)):
            if f.get(key) != g.get(key):
                out.append(f'{where}: field {name} {key}: {show(g.get(key))} -> {show(f.get(key))}')
    common_old = [n for n in old_by if n in new_by]
    common_new = [n for n in new_by if n in old_by]
    if common_old != common_new:
        out.append(f'{where}: field order {common_old} -> {common_new}')


def diff_model(name, old, new, out):
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        where = f'{name} {key}'
        if key in FIELD_LISTS and isinstance(a, list) and isinstance(b, list):
            diff_fields(where, a, b, out)
        elif key == 'variants' and isinstance(a, dict) and isinstance(b, dict):
            for v in sorted(set(a) | set(b)):
                if v not in a:
                    out.append(f'{where}: variant {v} added')
                elif v not in b:
                    out.append(f'{where}: variant {v} removed')
                elif a[v] != b[v]:
                    diff_fields(f'{where}.{v}', a[v], b[v], out)
        elif key == 'columns' and isinstance(a, dict) and isinstance(b, dict):
            for c in sorted(set(a) | set(b)):
                if a.get(c) != b.get(c):
                    out.append(f'{where}: {c}: {show(a.get(c))} -> {show(b.get(c))}')
        else:
            out.append(f'{where}: {show(a)} -> {show(b)}')


def differences(old, new):
    out = []
    for key in sorted(set(old) | set(new)):
        if key in ('netbox_version', 'models', 'choices'):
            continue
        if old.get(key) != new.get(key):
            out.append(f'{key}: {show(old.get(key))} -> {show(new.get(key))}')
    om, nm = old.get('models', {}), new.get('models', {})
    for name in sorted(set(om) | set(nm)):
        if name not in om:
            out.append(f'{name}: model added')
        elif name not in nm:
            out.append(f'{name}: model removed')
        elif om[name] != nm[name]:
            diff_model(name, om[name], nm[name], out)
    oc, nc = old.get('choices', {}), new.get('choices', {})
    for name in sorted(set(oc) | set(nc)):
        if oc.get(name) == nc.get(name):
            continue
        if name not in oc or name not in nc:
            out.append(f'choices {name}: {"added" if name in nc else "removed"}')
            continue
        a, b = dict(map(tuple, oc[name])), dict(map(tuple, nc[name]))
        added = [v for v in b if v not in a]
        removed = [v for v in a if v not in b]
        relabelled = [f'{v}: {a[v]!r} -> {b[v]!r}' for v in b if v in a and a[v] != b[v]]
        parts = ([f'added {added}'] if added else []) + ([f'removed {removed}'] if removed else []) \
            + ([f'relabelled {relabelled}'] if relabelled else [])
        if not parts:
            parts = ['order changed']
        out.append(f'choices {name}: ' + '; '.join(parts))
    return out


def merge_patch(old, new):
    """The RFC 7386 patch from old to new: objects key by key, null for a removed key, anything
    else (arrays included) replaced whole."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return new
    patch = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def apply_patch(target, patch):
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_patch(result.get(key), value)
    return result


def without_null_keys(value):
    """A merge patch cannot set a key to null (null removes it): the sidecar reads a missing key
    as null, so the round trip is compared with null-valued keys of objects dropped."""
    if isinstance(value, dict):
        return {k: without_null_keys(v) for k, v in value.items() if v is not None}
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('base', help="4.7.3's catalogue (src/netbox/catalogue/netbox-4.7.3.json)")
    parser.add_argument('other', help="another release's generated catalogue")
    parser.add_argument('--patch', help='write the merge patch from base to other here')
    args = parser.parse_args()
    with open(args.base) as f:
        base = json.load(f)
    with open(args.other) as f:
        other = json.load(f)
    lines = differences(base, other)
    print(f"# {other.get('netbox_version')} against {base.get('netbox_version')}: "
          f'{len(lines)} difference(s)')
    for line in lines:
        print(line)
    if args.patch:
        # a release identical to the base apart from its version shares the base's catalogue
        patch = merge_patch(base, other) if lines else {}
        if without_null_keys(apply_patch(base, patch)) != without_null_keys(other) and lines:
            sys.exit('the merge patch does not reproduce the catalogue (a null inside an object?)')
        with open(args.patch, 'w') as f:
            json.dump(patch, f, indent=1, ensure_ascii=True)
            f.write('\n')
        print(f'wrote {args.patch} ({len(json.dumps(patch))} bytes)', file=sys.stderr)
    return 1 if lines else 0


if __name__ == '__main__':
    sys.exit(main())
