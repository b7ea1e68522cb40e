"""Webhook health and sidecar liveness, read from the ``ui_webhook_health``,
``ui_webhook_hourly`` and ``ui_sidecar`` views, and the 24-hour chart drawn as inline SVG (no
JavaScript, no static files: it renders wherever NetBox renders)."""

import datetime
from dataclasses import dataclass, field

from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from django.utils.html import format_html, format_html_join

__all__ = ('WebhookHealth', 'live_sidecars', 'webhook_health')


@dataclass
class WebhookHealth:
    webhook_id: int
    pending: int = 0
    retrying: int = 0
    dead: int = 0
    rejected: int = 0
    oldest_pending: datetime.datetime | None = None
    blocked_heads: int = 0
    paused: bool = False
    # None while paused: until resumed
    paused_until: datetime.datetime | None = None
    paused_by_operator: bool = False
    pause_reason: str | None = None
    consecutive_failures: int = 0
    last_success_at: datetime.datetime | None = None
    last_failure_at: datetime.datetime | None = None
    # (hour, succeeded, failed) for each of the last 24 hours, oldest first
    hours: list = field(default_factory=list)

    @property
    def paused_forever(self):
        return self.paused and self.paused_until is None

    @property
    def attempts_24h(self):
        return sum(s + f for _, s, f in self.hours)

    @property
    def succeeded_24h(self):
        return sum(s for _, s, _ in self.hours)

    @property
    def per_hour(self):
        return round(self.attempts_24h / 24, 1)

    @property
    def success_ratio(self):
        """Percent of the last 24 hours' attempts that got a 2xx, or None without attempts."""
        return round(100 * self.succeeded_24h / self.attempts_24h, 1) if self.attempts_24h else None

    def chart(self, width=480, height=64):
        """Attempts per hour as stacked bars (green: 2xx, red: failed), oldest hour on the left."""
        peak = max((s + f for _, s, f in self.hours), default=0) or 1
        bar = width / 24
        rects = []
        for i, (hour, succeeded, failed) in enumerate(self.hours):
            x = i * bar + 1
            ok_h = height * succeeded / peak
            fail_h = height * failed / peak
            label = f'{hour:%H}:00 UTC: {succeeded} delivered, {failed} failed'
            for y, h, colour in ((height - ok_h, ok_h, '#2fb344'), (height - ok_h - fail_h, fail_h, '#d63939')):
                if h > 0:
                    # format_html escapes its arguments into strings: numbers are formatted first
                    rects.append((f'{x:.1f}', f'{y:.1f}', f'{bar - 2:.1f}', f'{h:.1f}', colour, label))
        bars = format_html_join(
            '', '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>', rects)
        return format_html(
            '<svg class="netbox-outbox-chart" role="img" aria-label="attempts per hour, last 24 hours" '
            'viewBox="0 0 {w} {h2}" width="100%" height="{h2}" preserveAspectRatio="none">'
            '<line x1="0" y1="{h}" x2="{w}" y2="{h}" stroke="currentColor" stroke-opacity="0.3"/>{bars}</svg>',
            w=width, h=height, h2=height + 1, bars=bars)


def _rows(sql, params=()):
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def webhook_health(webhook_id):
    rows = _rows('select * from netbox_outbox.ui_webhook_health where webhook_id = %s', [webhook_id])
    health = WebhookHealth(**rows[0]) if rows else WebhookHealth(webhook_id=webhook_id)
    counts = {r['hour']: (r['succeeded'], r['failed']) for r in _rows(
        'select hour, succeeded, failed from netbox_outbox.ui_webhook_hourly where webhook_id = %s', [webhook_id])}
    now = timezone.now().astimezone(datetime.UTC).replace(minute=0, second=0, microsecond=0)
    health.hours = [(h, *counts.get(h, (0, 0)))
                    for h in (now - datetime.timedelta(hours=23 - i) for i in range(24))]
    return health


def live_sidecars():
    """How many sidecars have a fresh heartbeat (None when the views are missing: not migrated)."""
    try:
        # a savepoint, so that a failure leaves an enclosing transaction usable
        with transaction.atomic():
            return _rows('select count(*) filter (where live) as n from netbox_outbox.ui_sidecar')[0]['n']
    except DatabaseError:
        return None
