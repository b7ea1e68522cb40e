"""Everything the suite runs against: PostgreSQL, Redis, the migrated NetBox template database,
netbox-outbox's release build, and the processes of one configuration (gunicorn, NetBox's RQ
worker, the sidecar).

Caching (what makes a warm run fast):
* the virtualenv with NetBox and the plugin (made by `run`);
* a NetBox-migrated template database, TEMPLATE_DB, built once (NetBox's first `migrate` takes
  about 11 minutes on 2 cores) and cloned with `create database ... template ...` per configuration;
* cargo's incremental release build.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg

# The NetBox patch release under test: `run --netbox V` exports it (default 4.7.3). Each release
# has its own virtualenv (run) and template database (below).
NETBOX_VERSION = os.environ.get('NBO_CONFORMANCE_NETBOX', '4.7.3')
TEMPLATE_DB = os.environ.get('NBO_CONFORMANCE_TEMPLATE_DB', 'nbo_conformance_tpl_' + NETBOX_VERSION.replace('.', '_'))
PG_HOST = os.environ.get('NBO_CONFORMANCE_PGHOST', '127.0.0.1')
PG_PORT = int(os.environ.get('NBO_CONFORMANCE_PGPORT', '5432'))
PG_USER = os.environ.get('NBO_CONFORMANCE_PGUSER', 'postgres')
REDIS_PORT = int(os.environ.get('NBO_CONFORMANCE_REDIS_PORT', '6379'))
# Redis databases for NetBox's task queue and cache; NetBox's defaults are 0 and 1, the anchors used
# 10 and 11, the catalogue checks 14 and 15.
# NBO_CONFORMANCE_REDIS_TASKS_DB / _CACHING_DB override them for a run outside the shared lock.
REDIS_TASKS_DB = int(os.environ.get('NBO_CONFORMANCE_REDIS_TASKS_DB', '12'))
REDIS_CACHING_DB = int(os.environ.get('NBO_CONFORMANCE_REDIS_CACHING_DB', '13'))
# Written into both databases when the suite takes them: a later run flushes only databases that
# are empty or hold this key, never someone else's data.
REDIS_OWNER_KEY = 'netbox-outbox:conformance-suite'

API_USER = 'conformance'
# A v1 token (`Authorization: Token <40 hex>`): fixed, so nothing needs to be read back.
API_TOKEN = '0123456789abcdef0123456789abcdef01234567'

STARTED = time.monotonic()


def log(message):
    elapsed = time.monotonic() - STARTED
    print(f'[conformance {elapsed:7.1f}s] {message}', file=sys.stderr, flush=True)


class SetupError(Exception):
    pass


def run(cmd, *, log_path=None, env=None, cwd=None, timeout=None):
    """Runs a command; its output goes to log_path (or is captured) and a failure raises."""
    out = open(log_path, 'a') if log_path else subprocess.PIPE
    try:
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                              timeout=timeout, text=True)
    finally:
        if log_path:
            out.close()
    if done.returncode != 0:
        tail = done.stdout if not log_path else Path(log_path).read_text()[-4000:]
        raise SetupError(f'{" ".join(map(str, cmd))} exited with {done.returncode}:\n{tail}')
    return done.stdout


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# PostgreSQL and Redis
# ------------------------------------------------------------------------------------------------

def pg_connect(dbname='postgres', autocommit=True):
    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname=dbname, autocommit=autocommit)


def database_url(dbname):
    return f'postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{dbname}'


def ensure_postgres():
    try:
        pg_connect().close()
        return
    except psycopg.OperationalError:
        pass
    log('starting PostgreSQL')
    versions = sorted(os.listdir('/etc/postgresql'), key=lambda v: float(v)) if os.path.isdir('/etc/postgresql') else []
    if not versions:
        raise SetupError('PostgreSQL is not running on 127.0.0.1:5432 and no local cluster was found')
    # Exit status 2 means "already running" (it may still be starting up): wait for it below.
    subprocess.run(['pg_ctlcluster', '--skip-systemctl-redirect', versions[-1], 'main', 'start'],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(120):
        try:
            pg_connect().close()
            return
        except psycopg.OperationalError:
            time.sleep(0.5)
    raise SetupError('PostgreSQL did not come up')


def redis_client(db):
    import redis
    return redis.Redis(host='127.0.0.1', port=REDIS_PORT, db=db)


def ensure_redis():
    import redis
    try:
        redis_client(0).ping()
        return
    except redis.exceptions.ConnectionError:
        pass
    if not shutil.which('redis-server'):
        raise SetupError('Redis is not running on 127.0.0.1:6379 and redis-server is not installed '
                         '(apt-get install redis-server)')
    log('starting Redis')
    run(['redis-server', '--daemonize', 'yes', '--bind', '127.0.0.1', '--port', str(REDIS_PORT),
         '--save', '', '--appendonly', 'no'])
    for _ in range(60):
        try:
            redis_client(0).ping()
            return
        except redis.exceptions.ConnectionError:
            time.sleep(0.5)
    raise SetupError('Redis did not come up')


def claim_redis_databases():
    """Empties Redis databases 12 and 13 for a configuration, if they are ours to empty: empty,
    or marked by an earlier run of this suite. Another application's keys stop the suite instead."""
    for db in (REDIS_TASKS_DB, REDIS_CACHING_DB):
        client = redis_client(db)
        keys = client.dbsize()
        if keys and not client.exists(REDIS_OWNER_KEY):
            raise SetupError(
                f'Redis database {db} on 127.0.0.1:{REDIS_PORT} holds {keys} keys this suite did not '
                f'write; it empties databases {REDIS_TASKS_DB} and {REDIS_CACHING_DB} before each '
                'configuration, so it stops rather than delete them. Run it against another Redis '
                f'(NBO_CONFORMANCE_REDIS_PORT), or empty them if they are disposable: '
                f'redis-cli -n {db} flushdb')
        client.flushdb()
        client.set(REDIS_OWNER_KEY, 'tests/conformance: safe to flush')


def database_exists(name):
    with pg_connect() as conn:
        return conn.execute('select 1 from pg_database where datname = %s', [name]).fetchone() is not None


def drop_database(name):
    with pg_connect() as conn:
        conn.execute(f'drop database if exists "{name}" with (force)')


def clone_template(name):
    drop_database(name)
    # A template cannot be cloned while anyone is connected to it (a pg_dump of it, such as
    # tests/install/walkthrough's, or a psql session): wait for them a little.
    for attempt in range(60):
        try:
            with pg_connect() as conn:
                conn.execute(f'create database "{name}" template "{TEMPLATE_DB}"')
            return
        except psycopg.errors.ObjectInUse:
            if attempt == 59:
                raise
            time.sleep(1)


# ------------------------------------------------------------------------------------------------
# NetBox
# ------------------------------------------------------------------------------------------------

class NetBox:
    """The NetBox installation in the suite's virtualenv."""

    def __init__(self, venv):
        self.venv = Path(venv)
        self.python = self.venv / 'bin' / 'python'
        self.command = self.venv / 'bin' / 'netbox'
        self.gunicorn = self.venv / 'bin' / 'gunicorn'

    @staticmethod
    def write_instance(root, dbname, plugins=()):
        """An instance directory: NETBOX_ROOT with conf/configuration.py."""
        conf = Path(root) / 'conf'
        conf.mkdir(parents=True, exist_ok=True)
        (conf / 'configuration.py').write_text(f"""# Written by tests/conformance: a throw-away NetBox instance.
ALLOWED_HOSTS = ['*']
DATABASES = {{'default': {{'NAME': {dbname!r}, 'USER': {PG_USER!r}, 'PASSWORD': '', 'HOST': {PG_HOST!r},
                          'PORT': {str(PG_PORT)!r}, 'CONN_MAX_AGE': 300}}}}
REDIS = {{
    'tasks': {{'HOST': '127.0.0.1', 'PORT': {REDIS_PORT}, 'USERNAME': '', 'PASSWORD': '', 'DATABASE': {REDIS_TASKS_DB}, 'SSL': False}},
    'caching': {{'HOST': '127.0.0.1', 'PORT': {REDIS_PORT}, 'USERNAME': '', 'PASSWORD': '', 'DATABASE': {REDIS_CACHING_DB}, 'SSL': False}},
}}
SECRET_KEY = 'conformance-suite-secret-key-not-secret-0123456789-abcdefghijklmnopqrstuvwxyz'
API_TOKEN_PEPPERS = {{1: 'conformance-suite-pepper-not-secret-0123456789-abcdefghijklmnopqrstuvwxyz'}}
PLUGINS = {list(plugins)!r}
""")
        return Path(root)

    def env(self, root):
        env = dict(os.environ)
        env['NETBOX_ROOT'] = str(root)
        env.pop('DJANGO_SETTINGS_MODULE', None)
        env['PYTHONUNBUFFERED'] = '1'
        return env

    def manage(self, root, *args, log_path=None, timeout=None):
        return run([str(self.command), *args], env=self.env(root), log_path=log_path, timeout=timeout)

    def shell(self, root, code, log_path=None):
        """Runs Python code in `netbox nbshell` (NetBox's models imported, no request context)."""
        return self.manage(root, 'nbshell', '--command', code, log_path=log_path, timeout=300)


def ensure_template(netbox, cache_dir):
    """The migrated NetBox template database; built (once) by migrating a scratch database."""
    if database_exists(TEMPLATE_DB):
        log(f'template database {TEMPLATE_DB} found')
        return False
    build = TEMPLATE_DB + '_build'
    log(f'building the template database {TEMPLATE_DB}: NetBox {NETBOX_VERSION} migrate '
        '(about 11 minutes on 2 cores, once per machine)')
    drop_database(build)
    with pg_connect() as conn:
        conn.execute(f'create database "{build}"')
    root = NetBox.write_instance(Path(cache_dir) / 'template-build', build)
    started = time.monotonic()
    netbox.manage(root, 'migrate', '--no-input', log_path=Path(cache_dir) / 'migrate.log', timeout=3600)
    with pg_connect() as conn:
        conn.execute(f'alter database "{build}" rename to "{TEMPLATE_DB}"')
    log(f'template database built in {time.monotonic() - started:.0f}s')
    return True


# ------------------------------------------------------------------------------------------------
# netbox-outbox
# ------------------------------------------------------------------------------------------------

def cargo_build(repo, log_path):
    log('cargo build --release')
    started = time.monotonic()
    run(['cargo', 'build', '--release', '--locked', '--bin', 'netbox-outbox'], cwd=repo, log_path=log_path)
    log(f'cargo build done in {time.monotonic() - started:.0f}s')
    target = Path(os.environ.get('CARGO_TARGET_DIR') or Path(repo) / 'target')
    if not target.is_absolute():
        target = Path(repo) / target
    return target / 'release' / 'netbox-outbox'


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------

class Process:
    """A process the suite started, in its own process group, with its output in a log file."""

    def __init__(self, name, cmd, log_path, env=None, cwd=None):
        self.name = name
        self.log_path = Path(log_path)
        self._log = open(self.log_path, 'a')
        self.popen = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                      start_new_session=True)
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def check(self):
        if not self.alive():
            raise SetupError(f'{self.name} exited with {self.popen.returncode}; '
                             f'log: {self.log_path}\n{self.log_path.read_text()[-3000:]}')

    def stop(self, timeout=20):
        if self.alive():
            # the group is the one this process leads (start_new_session): its pid
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(10)
        self._log.close()
