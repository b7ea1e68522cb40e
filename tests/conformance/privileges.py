"""The sidecar's least-privilege role against the real NetBox 4.7.3 schema (issue 10).

Run it with `tests/conformance/run --privileges [--binary PATH]` (tests/run does, after the
conformance suite). On a clone of the migrated NetBox template database it sets things up the way
docs/install.md says, with a NetBox table owner that is not a superuser:

1. the owner applies netbox-outbox's migrations (`netbox-outbox migrate`);
2. a superuser creates the sidecar's role (sql/create-role.sql);
3. the owner grants it (sql/roles.sql), twice: the second run must change nothing;

then runs the sidecar as that role and checks that it delivers a webhook for a site NetBox's ORM
creates, that `netbox-outbox check` passes as that role, and that the role cannot read users_token, django_session or users_user.password, cannot
write netbox_outbox.change or the capture's settings, and cannot call watch() or unwatch().
Exit status: 0 when every check passes, 1 when one fails, 2 when the set-up failed. The last line
is `privileges: N passed, M failed`.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg

import environment as env
from receiver import Receiver

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DBNAME = 'nbo_conformance_privileges'
OWNER = 'nbo_conformance_owner'
SIDECAR = 'nbo_conformance_sidecar'

SIDECAR_CONFIG = """# Written by tests/conformance/privileges.py.
database_url = "{url}"

[rules]
refresh_interval = "200ms"

[delivery]
poll_interval = "200ms"

[assembly]
poll_interval = "200ms"

[metrics]
listen = ""
"""

# What the sidecar's role must not do, each with why it matters.
FORBIDDEN = [
    ('read API tokens', 'select * from users_token'),
    ('read sessions', 'select * from django_session'),
    ('read password hashes', 'select password from users_user'),
    ('forge a captured change', "insert into netbox_outbox.change (content_type_id, object_id, kind, db_user, "
                                "application_name) values (1, 1, 'D', 'admin', 'netbox')"),
    ('switch the capture off', "update netbox_outbox.setting set value = 'netbox' where name = 'capture_mode'"),
    ('watch a table', "select netbox_outbox.watch('dcim.site')"),
    ('unwatch a table', "select netbox_outbox.unwatch('dcim.site')"),
    ('write NetBox', "update dcim_site set description = 'by the sidecar'"),
]

# What it must be able to read (besides delivering).
ALLOWED = [
    ('read users without passwords', 'select id, username, first_name, last_name from users_user'),
    ('read webhooks', 'select id, payload_url, secret from extras_webhook'),
    ('read the change log', 'select count(*) from core_objectchange'),
]


def url(dbname, user):
    return f'postgresql://{user}@{env.PG_HOST}:{env.PG_PORT}/{dbname}'


def psql(file, user, **variables):
    cmd = ['psql', url(DBNAME, user), '-X', '-v', 'ON_ERROR_STOP=1']
    for name, value in variables.items():
        cmd += ['-v', f'{name}={value}']
    return env.run(cmd + ['-f', str(REPO / 'sql' / file)])


def setup(netbox, binary, workdir):
    """The clone, the non-superuser owner, the migrations, the role: as docs/install.md says."""
    env.drop_database(DBNAME)
    with env.pg_connect() as conn:
        for role in (SIDECAR, OWNER):
            conn.execute(f'drop role if exists "{role}"')
        conn.execute(f'create role "{OWNER}" login nosuperuser nocreaterole')
    env.clone_template(DBNAME)
    with env.pg_connect(DBNAME) as conn:
        # NetBox's tables owned by an ordinary role, as in most installations
        conn.execute(f'alter database "{DBNAME}" owner to "{OWNER}"')
        for kind, relkinds in (('table', "'r', 'p'"), ('sequence', "'S'"), ('view', "'v', 'm'")):
            for (name,) in conn.execute(f"select c.oid::regclass::text from pg_class c where c.relnamespace = "
                                        f"'public'::regnamespace and c.relkind in ({relkinds})").fetchall():
                conn.execute(f'alter {kind} {name} owner to "{OWNER}"')
    env.run([str(binary), 'migrate', '--database-url', url(DBNAME, OWNER)], log_path=workdir / 'migrate.log')
    psql('create-role.sql', env.PG_USER, role=SIDECAR, password='not-a-secret')
    first = psql('roles.sql', OWNER, role=SIDECAR)
    second = psql('roles.sql', OWNER, role=SIDECAR)
    return first, second


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--binary', help='use this netbox-outbox binary instead of cargo build --release')
    parser.add_argument('--cache', required=True, help='the cache directory (set by run)')
    parser.add_argument('--started', type=float, default=time.time(), help='when run started (set by run)')
    parser.add_argument('--keep', action='store_true', help='keep the database and roles')
    args = parser.parse_args()
    workdir = HERE / 'out' / 'privileges'
    workdir.mkdir(parents=True, exist_ok=True)

    passed, failed = [], []

    def check(name, ok, detail=''):
        (passed if ok else failed).append(name)
        env.log(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail and not ok else ''}")

    try:
        env.ensure_postgres()
        env.ensure_redis()
        binary = Path(args.binary) if args.binary else env.cargo_build(REPO, workdir / 'cargo.log')
        netbox = env.NetBox(sys.prefix)
        env.ensure_template(netbox, args.cache)
        first, second = setup(netbox, binary, workdir)
    except Exception as error:  # noqa: BLE001 - any set-up failure ends the run with status 2
        env.log(f'set-up failed: {error}')
        print('privileges: 0 passed, 1 failed')
        return 2
    check('roles.sql grants on its first run', 'granted' in (first or ''), first or '')
    check('roles.sql changes nothing on its second run', '(0 rows)' in (second or ''), second or '')

    receiver = Receiver(workdir / 'received.jsonl').start()
    root = netbox.write_instance(workdir / 'instance', DBNAME)
    conf = root / 'conf' / 'configuration.py'
    conf.write_text(conf.read_text().replace(f"'USER': {env.PG_USER!r}", f"'USER': {OWNER!r}"))
    config = workdir / 'netbox-outbox.toml'
    config.write_text(SIDECAR_CONFIG.format(url=url(DBNAME, SIDECAR)))
    sidecar_env = {k: v for k, v in os.environ.items() if not k.startswith('NETBOX_OUTBOX_') and k != 'DATABASE_URL'}
    sidecar = env.Process('sidecar', [str(binary), 'run', '--config', str(config)], workdir / 'sidecar.log',
                          env=sidecar_env, cwd=workdir)
    try:
        # NetBox's own ORM, as NetBox's owner: a token (a secret the sidecar must not read), a
        # webhook with a rule for netbox-outbox, and the site that triggers it.
        netbox.shell(root, '\n'.join([
            'from core.models import ObjectType',
            'from dcim.models import Site',
            'from extras.models import EventRule, Webhook',
            'from users.models import Token, User',
            "u = User.objects.create_user('privileges', 'p@example.com', 'not-a-password')",
            "Token(user=u, version=1, token='f' * 40, write_enabled=True).save()",
            f"w = Webhook.objects.create(name='privileges', payload_url={receiver.url('/hook/privileges')!r})",
            # the rule and its object types in one transaction, as NetBox's API and UI save them
            # (in two, a site created at once may be read before the second: seen on a quiet
            # machine, where each commit is read on its own)
            'from django.db import transaction',
            'with transaction.atomic():',
            "    r = EventRule.objects.create(name='privileges', event_types=['object_created'], "
            "action_type='netbox_outbox.webhook', action_object_type=ObjectType.objects.get_for_model(Webhook), "
            "action_object_id=w.id)",
            '    r.object_types.set([ObjectType.objects.get_for_model(Site)])',
            '',
            "Site.objects.create(name='least privilege', slug='least-privilege')",
        ]), log_path=workdir / 'nbshell.log')
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and receiver.count() == 0 and sidecar.alive():
            time.sleep(0.2)
        bodies = [r.json() for r in receiver.snapshot()]
        check('the sidecar delivers as its role',
              any(b.get('object_type') == 'dcim.site' and b.get('data', {}).get('name') == 'least privilege'
                  for b in bodies),
              f'received {len(bodies)} webhooks; sidecar log: {workdir / "sidecar.log"}')
        # netbox-outbox check, as the role: everything it reads is granted
        done = subprocess.run([str(binary), 'check', '--offline', '--config', str(config)], env=sidecar_env,
                              capture_output=True, text=True, timeout=120)
        output = done.stdout + done.stderr
        (workdir / 'check.log').write_text(f'exit {done.returncode}\n{output}')
        check('netbox-outbox check runs as the role', 'permission denied' not in output and done.returncode in (0, 5),
              output[-2000:])
    finally:
        sidecar.stop()
        receiver.stop()

    with psycopg.connect(url(DBNAME, SIDECAR), autocommit=True) as conn:
        for name, sql in FORBIDDEN:
            try:
                conn.execute(sql)
                check(f'the sidecar cannot {name}', False, f'{sql} succeeded')
            except psycopg.errors.InsufficientPrivilege:
                check(f'the sidecar cannot {name}', True)
            except psycopg.Error as error:
                check(f'the sidecar cannot {name}', False, f'{sql}: {error}')
        for name, sql in ALLOWED:
            try:
                conn.execute(sql)
                check(f'the sidecar can {name}', True)
            except psycopg.Error as error:
                check(f'the sidecar can {name}', False, f'{sql}: {error}')

    if not args.keep:
        env.drop_database(DBNAME)
        with env.pg_connect() as conn:
            for role in (SIDECAR, OWNER):
                conn.execute(f'drop role if exists "{role}"')
    print(f'privileges: {len(passed)} passed, {len(failed)} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
