"""A small client for NetBox's REST API that records every call: the scenario's step name, the
request, the status, and NetBox's request id (`X-Request-ID`), which is what pairs a webhook with
the step that caused it."""

import json
import time

import requests


class ApiError(Exception):
    pass


class Api:
    def __init__(self, base_url, token, steps_path):
        self.base_url = base_url.rstrip('/')
        self.session = requests.Session()
        self.session.headers.update({
            'Authorization': f'Token {token}',
            'Accept': 'application/json',
        })
        self.steps = []
        self._log = open(steps_path, 'a')

    def close(self):
        self._log.close()
        self.session.close()

    def step_of(self, request_id):
        """The step whose request had this id, or None."""
        for s in self.steps:
            if s['request_id'] == request_id:
                return s
        return None

    def call(self, step, method, path, body=None, expect=(200, 201, 202, 204), files=None):
        started = time.monotonic()
        if files is None:
            response = self.session.request(method, self.base_url + path, json=body, timeout=300)
        else:
            # a multipart form (an image attachment's file); the record keeps the form fields
            response = self.session.request(method, self.base_url + path, data=body, files=files, timeout=300)
        record = {
            'step': step,
            'method': method,
            'path': path,
            'status': response.status_code,
            'request_id': response.headers.get('X-Request-ID'),
            'ms': round((time.monotonic() - started) * 1000, 1),
            'body': body,
        }
        if response.status_code not in expect:
            record['response'] = response.text[:4000]
        self.steps.append(record)
        self._log.write(json.dumps(record) + '\n')
        self._log.flush()
        if response.status_code not in expect:
            raise ApiError(f'{step}: {method} {path} answered {response.status_code}: {response.text[:2000]}')
        if not response.content:
            return None
        return response.json()

    def get(self, path):
        response = self.session.get(self.base_url + path, timeout=60)
        response.raise_for_status()
        return response.json()

    def post(self, step, path, body, **kw):
        return self.call(step, 'POST', path, body, **kw)

    def upload(self, step, path, form, files, method='POST', **kw):
        return self.call(step, method, path, form, files=files, **kw)

    def patch(self, step, path, body, **kw):
        return self.call(step, 'PATCH', path, body, **kw)

    def put(self, step, path, body, **kw):
        return self.call(step, 'PUT', path, body, **kw)

    def delete(self, step, path, body=None, **kw):
        return self.call(step, 'DELETE', path, body, **kw)

    def wait_ready(self, process_checks, timeout=180):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            for check in process_checks:
                check()
            try:
                response = self.session.get(self.base_url + '/api/status/', timeout=10)
                if response.status_code == 200:
                    return response.json()
                last = f'{response.status_code} {response.text[:200]}'
            except requests.RequestException as e:
                last = str(e)
            time.sleep(0.5)
        raise ApiError(f'NetBox did not answer /api/status/ within {timeout}s: {last}')
