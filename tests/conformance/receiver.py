"""A webhook receiver that records every request as it arrived on the wire.

It keeps the request line's method and target, every header in the order and spelling it was
sent, and the exact body bytes, and answers 200. One receiver serves every webhook of a run; the
path tells the webhooks apart (`/hook/<webhook name>/...`), and the `X-Netbox-Outbox-Delivery`
header tells netbox-outbox's requests from NetBox's.
"""

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OUR_HEADER = 'x-netbox-outbox-delivery'


class Received:
    """One recorded request."""

    __slots__ = ('seq', 'at', 'mono', 'method', 'target', 'headers', 'body')

    def __init__(self, seq, at, mono, method, target, headers, body):
        self.seq = seq
        self.at = at  # wall clock, once the body was read
        self.mono = mono  # time.monotonic() at the same moment, for latencies
        self.method = method
        self.target = target
        self.headers = headers  # [(name, value), ...] as sent
        self.body = body  # bytes

    @property
    def side(self):
        """'outbox' for netbox-outbox's requests, 'netbox' for NetBox's."""
        if any(name.lower() == OUR_HEADER for name, _ in self.headers):
            return 'outbox'
        return 'netbox'

    @property
    def webhook(self):
        """The webhook name: the path segment after /hook/."""
        parts = self.target.split('?', 1)[0].split('/')
        return parts[2] if len(parts) > 2 and parts[1] == 'hook' else ''

    def header(self, name):
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def to_record(self):
        return {
            'seq': self.seq,
            'mono': self.mono,
            'at': self.at,
            'side': self.side,
            'method': self.method,
            'target': self.target,
            'headers': self.headers,
            'body_b64': base64.b64encode(self.body).decode(),
        }


class Receiver:
    def __init__(self, log_path=None):
        self.requests = []
        self._lock = threading.Lock()
        self._log = open(log_path, 'a') if log_path else None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'

            def _record(self):
                length = int(self.headers.get('Content-Length') or 0)
                body = self.rfile.read(length) if length else b''
                receiver._add(time.time(), time.monotonic(), self.command, self.path,
                              list(self.headers.items()), body)
                self.send_response(200)
                self.send_header('Content-Type', 'text/plain')
                self.send_header('Content-Length', '2')
                self.end_headers()
                self.wfile.write(b'ok')

            do_POST = do_PUT = do_PATCH = do_DELETE = do_GET = _record

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name='receiver', daemon=True)

    def _add(self, at, mono, method, target, headers, body):
        with self._lock:
            r = Received(len(self.requests), at, mono, method, target, headers, body)
            self.requests.append(r)
            if self._log:
                self._log.write(json.dumps(r.to_record()) + '\n')
                self._log.flush()

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        if self._log:
            self._log.close()

    def count(self):
        with self._lock:
            return len(self.requests)

    def snapshot(self):
        with self._lock:
            return list(self.requests)

    def url(self, path):
        return f'http://127.0.0.1:{self.port}{path}'
