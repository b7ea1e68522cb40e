"""The fidelity report: out/fidelity.json (everything) and out/fidelity.md (the summary table,
then every difference, the by-design cases, and per object type the outcome of every key path).
docs/fidelity.md is a copy of the summary (`run --update-docs`)."""

import datetime
import json
from collections import defaultdict

import normalise

STATUSES = ('matched', 'differed', 'missing', 'extra', 'normalised')


def _type_totals(analysis, object_type):
    totals = defaultdict(int)
    paths = analysis.paths.get(object_type, {})
    for path, statuses in paths.items():
        for status, n in statuses.items():
            totals[status] += n
    return totals, len([p for p in paths if not p.startswith('(normalised')])


def _fmt(v, limit=140):
    text = json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v
    text = text.replace('|', '\\|').replace('\n', '\\n')
    return text if len(text) <= limit else text[:limit] + '…'


def summary_table(analyses):
    lines = ['| configuration | capture mode | NetBox webhooks | netbox-outbox webhooks | paired | identical | differing '
             '| unpaired | by design (documented) |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for a in analyses:
        c = a.counts
        lines.append(f"| {a.name} | {a.configuration.capture_mode} | {c.get('received_netbox', 0)} | "
                     f"{c.get('received_outbox', 0)} | {c.get('paired', 0)} | {c.get('identical', 0)} | "
                     f"{c.get('differing', 0)} | {len(a.unpaired)} | {len(a.by_design)} |")
    lines += ['', '| object type | ' + ' | '.join(f'{a.name}: paired / identical' for a in analyses)
              + ' | key paths | matched | differed | missing | extra | normalised |',
              '| --- | ' + ' | '.join('---' for _ in analyses) + ' | --- | --- | --- | --- | --- | --- |']
    types = sorted({t for a in analyses for t in a.paths})
    for t in types:
        cells = []
        totals = defaultdict(int)
        key_paths = set()
        for a in analyses:
            cells.append(f"{a.types[t].get('paired', 0)} / {a.types[t].get('identical', 0)}" if t in a.types else '-')
            tt, _ = _type_totals(a, t)
            for k, v in tt.items():
                totals[k] += v
            key_paths |= {p for p in a.paths.get(t, {}) if not p.startswith('(normalised')}
        lines.append(f"| {t} | {' | '.join(cells)} | {len(key_paths)} | "
                     + ' | '.join(str(totals.get(s, 0)) for s in STATUSES) + ' |')
    return '\n'.join(lines)


def normalisation_table(analyses):
    lines = ['| rule | what | ' + ' | '.join(a.name for a in analyses) + ' |',
             '| --- | --- | ' + ' | '.join('---' for _ in analyses) + ' |']
    for rule, what in normalise.RULES.items():
        lines.append(f'| `{rule}` | {what} | ' + ' | '.join(str(a.normalisations.get(rule, 0)) for a in analyses)
                     + ' |')
    return '\n'.join(lines)


def differences_section(analyses):
    lines = []
    for a in analyses:
        if not a.differences and not a.unpaired and not a.failures:
            continue
        lines += [f'### {a.name}', '']
        if a.failures:
            lines += [f'- {f}' for f in a.failures] + ['']
        if a.differences:
            lines += ['| object type | key path | status | count | NetBox | netbox-outbox | example |',
                      '| --- | --- | --- | --- | --- | --- | --- |']
            for d in sorted(a.differences, key=lambda d: (d['object_type'], d['path'])):
                ex = d['examples'][0]
                lines.append(f"| {d['object_type']} | `{d['path']}` | {d['status']} | {d['count']} | "
                             f"{_fmt(ex['netbox'])} | {_fmt(ex['ours'])} | "
                             f"{ex['webhook']} {ex['event']} #{ex['object_id']} ({ex['step']}) |")
            lines.append('')
    return '\n'.join(lines) if lines else 'None.\n'


def by_design_section(analyses):
    lines = []
    for a in analyses:
        for d in a.by_design:
            event, object_type, object_id, _ = d['key']
            lines.append(f"- {a.name}: {d['side']} only, {d['webhook']} {event} {object_type} #{object_id}: {d['why']}")
    return '\n'.join(lines) if lines else 'None.'


def key_path_section(analyses):
    lines = []
    types = sorted({t for a in analyses for t in a.paths})
    for t in types:
        lines += ['<details>', f'<summary>{t}</summary>', '',
                  '| key path | ' + ' | '.join(f'{a.name} ' + '/'.join(s[:4] for s in STATUSES) for a in analyses) + ' |',
                  '| --- | ' + ' | '.join('---' for _ in analyses) + ' |']
        paths = sorted({p for a in analyses for p in a.paths.get(t, {})})
        for p in paths:
            cells = []
            for a in analyses:
                s = a.paths.get(t, {}).get(p)
                cells.append('/'.join(str(s.get(k, 0)) for k in STATUSES) if s else '-')
            lines.append(f"| `{p}` | {' | '.join(cells)} |")
        lines += ['', '</details>', '']
    return '\n'.join(lines)


def summary_document(analyses, timings):
    now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    return '\n'.join([
        '# Fidelity: netbox-outbox against NetBox 4.7.3\'s own webhooks',
        '',
        f'Generated by `tests/conformance/run` on {now} ({timings.get("total", 0) / 60:.1f} minutes). '
        'Every webhook NetBox delivered is paired with the one netbox-outbox delivered for the same rule, '
        'object, event and request, and compared key path by key path after the normalisation in '
        '`tests/conformance/normalise.py`. "paired / identical" counts webhooks; the path columns count '
        'compared key paths (headers, URL, method, body encoding and every JSON key at every depth). '
        'The full report, with every key path per object type, is written to `tests/conformance/out/fidelity.md`.',
        '',
        summary_table(analyses),
        '',
        '## Normalisations applied',
        '',
        normalisation_table(analyses),
        '',
        '## Differences',
        '',
        differences_section(analyses),
        '',
        '## Unpaired by design',
        '',
        by_design_section(analyses),
        '',
    ])


README_START = '<!-- fidelity table: written by tests/conformance/run --update-docs -->'
README_END = '<!-- end of fidelity table -->'


def _cold_or_warm(timings):
    """How much of the run's duration was one-time set-up (cached for the next run)."""
    built = next((v for k, v in timings.items() if k.endswith('(built)')), None)
    if built is None:
        return ''
    return (f", of which {timings.get('build', 0) / 60:.1f} the release build and {built / 60:.1f} "
            "NetBox's first migrate (both cached for later runs)")


def update_readme(path, analyses, timings):
    """Replaces the README's fidelity table (between its two markers) with this run's."""
    text = path.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise ValueError(f'{path}: the fidelity table markers are missing; put {README_START!r} '
                         f'and {README_END!r} where the table goes')
    now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d')
    block = '\n'.join([
        README_START,
        f'Last run {now}, {timings.get("total", 0) / 60:.1f} minutes{_cold_or_warm(timings)}, NetBox 4.7.3. Each row is an '
        'object type; "paired / identical" counts webhooks, the other columns count JSON key paths '
        'and headers compared.',
        '',
        summary_table(analyses),
        '',
    ])
    path.write_text(text[:start] + block + text[end:])


def write(out, analyses, timings):
    summary = summary_document(analyses, timings)
    full = summary + '\n## Every key path, per object type\n\nCounts are ' + '/'.join(STATUSES) + '.\n\n' \
        + key_path_section(analyses)
    (out / 'fidelity.md').write_text(full)
    (out / 'fidelity.json').write_text(json.dumps({
        'netbox_version': '4.7.3',
        'generated': datetime.datetime.now(datetime.timezone.utc).isoformat(),
        'timings_s': timings,
        'normalisation_rules': normalise.RULES,
        'configurations': {a.name: {'plugin': a.configuration.plugin,
                                    'capture_mode': a.configuration.capture_mode,
                                    'rest_calls': getattr(a, 'rest_calls', None),
                                    'duration_s': getattr(a, 'duration_s', None),
                                    **a.to_json()} for a in analyses},
    }, indent=1, default=str))
    return {'summary': summary_table(analyses)}
