"""The fidelity report: out/fidelity.json (everything) and out/fidelity.md (the summary table,
then every difference, the by-design cases, and per object type the outcome of every key path).
docs/fidelity.md is a copy of the summary (`run --update-docs`)."""

import datetime
import json
from collections import defaultdict

import normalise
from every_model import NOT_CREATABLE

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


def _with_known(n, known):
    """A count of differing or unpaired webhooks, saying how many are known and open."""
    return f'{n} ({known} known, open)' if known else str(n)


def summary_table(analyses, event_models=()):
    """The configurations, then one row per object type: every model with the event_rules
    feature (event_models) and any other the scenario reached; a model the scenario did not
    reach says so."""
    lines = ['| configuration | capture mode | NetBox webhooks | netbox-outbox webhooks | paired | identical '
             '| identical after a documented difference | of which only the HTTP client\'s headers differ '
             '| differing | unpaired | unpaired by design |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for a in analyses:
        c = a.counts
        lines.append(f"| {a.name} | {a.configuration.capture_mode} | {c.get('received_netbox', 0)} | "
                     f"{c.get('received_outbox', 0)} | {c.get('paired', 0)} | {c.get('identical', 0)} | "
                     f"{c.get('documented', 0)} | {c.get('documented_client_only', 0)} | "
                     f"{_with_known(c.get('differing', 0), c.get('differing_known', 0))} | "
                     f"{_with_known(len(a.unpaired), c.get('unpaired_known', 0))} | "
                     f"{len(a.by_design)} |")
    lines += ['', '| object type | ' + ' | '.join(
        f'{a.name}: identical / documented / differing / by design' for a in analyses)
              + ' | documented differences | key paths | matched | differed | missing | extra |',
              '| --- | ' + ' | '.join('---' for _ in analyses) + ' | --- | --- | --- | --- | --- | --- |']
    reached = {t for a in analyses for t in a.paths} | {d['key'][1] for a in analyses for d in a.by_design}
    types = sorted(reached | set(event_models))
    for t in types:
        if t not in reached:
            # a model NetBox cannot create through REST says why; any other was not reached
            why = f'not created by the scenario: {NOT_CREATABLE[t]}' if t in NOT_CREATABLE \
                else 'not reached by the scenario'
            lines.append(f"| {t} | " + ' | '.join('-' for _ in analyses) + f' | {why} | - | - | - | - | - |')
            continue
        cells = []
        totals = defaultdict(int)
        key_paths = set()
        rules = defaultdict(int)
        for a in analyses:
            tt = a.types.get(t, {})
            by_design = sum(1 for d in a.by_design if d['key'][1] == t)
            cells.append(f"{tt.get('identical', 0)} / {tt.get('documented', 0)} / {tt.get('differing', 0)} / {by_design}")
            for k, v in tt.items():
                if k.startswith('documented:'):
                    rules[k.split(':', 1)[1]] += v
            tot, _ = _type_totals(a, t)
            for k, v in tot.items():
                totals[k] += v
            key_paths |= {p for p in a.paths.get(t, {}) if not p.startswith('(normalised')}
        named = ', '.join(f'`{r}` {n}' for r, n in sorted(rules.items())) or '-'
        lines.append(f"| {t} | {' | '.join(cells)} | {named} | {len(key_paths)} | "
                     + ' | '.join(str(totals.get(s, 0)) for s in STATUSES[:4]) + ' |')
    return '\n'.join(lines)


def normalisation_table(analyses):
    """Every rule: what it forgives, why a database cannot know it, and how often it applied
    (for documented differences: pairs identical only after it)."""
    lines = ['| rule | kind | what | why | ' + ' | '.join(f'{a.name}: applied / pairs it made identical'
                                                      for a in analyses) + ' |',
             '| --- | --- | --- | --- | ' + ' | '.join('---' for _ in analyses) + ' |']
    for rule, what in normalise.RULES.items():
        kind = 'every request' if rule in normalise.EVERY_REQUEST else 'documented difference'
        why = normalise.WHY.get(rule, 'the moment or framing of each request')
        cells = [f"{a.normalisations.get(rule, 0)} / {a.documented.get(rule, 0) if rule not in normalise.EVERY_REQUEST else '-'}"
                 for a in analyses]
        lines.append(f'| `{rule}` | {kind} | {what} | {why} | ' + ' | '.join(cells) + ' |')
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


def summary_document(analyses, timings, event_models=()):
    now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    return '\n'.join([
        '# Fidelity: netbox-outbox against NetBox 4.7.3\'s own webhooks',
        '',
        f'Generated by `tests/conformance/run` on {now} ({timings.get("total", 0) / 60:.1f} minutes). '
        'Every webhook NetBox delivered is paired with the one netbox-outbox delivered for the same rule, '
        'object, event and request, and compared key path by key path after the normalisation in '
        '`tests/conformance/normalise.py`. "paired / identical" counts webhooks; the path columns count '
        'compared key paths (headers, URL, method, body encoding and every JSON key at every depth). '
        'The full report, with every key path per object type, is written to `tests/conformance/out/fidelity.md`. '
        '*Identical*: nothing differs but what differs between any two requests (the timestamp, hence the '
        'signature, and HTTP framing). *Documented*: identical only after one of the documented differences '
        'below, each named with why a database cannot know it. *By design*: sent by one side only, for a '
        'documented reason. The three are counted apart and never added together.',
        '',
        summary_table(analyses, event_models),
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


def update_readme(path, analyses, timings, event_models=()):
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
        'object type (every model NetBox can send events for, and any other the scenario reached); the '
        'per-configuration cells count webhooks (identical / identical after a documented difference / '
        'differing / unpaired by design), the last columns count JSON key paths and headers compared. '
        'docs/fidelity.md names every documented difference and why a database cannot know it.',
        '',
        summary_table(analyses, event_models),
        '',
    ])
    path.write_text(text[:start] + block + text[end:])


def write(out, analyses, timings, event_models=()):
    summary = summary_document(analyses, timings, event_models)
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
    return {'summary': summary_table(analyses, event_models)}
