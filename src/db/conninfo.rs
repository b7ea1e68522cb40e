//! libpq's connection conventions: the URL or `key=value` string, the `PG*` environment
//! variables that fill in what it leaves out, and the password file (`~/.pgpass`).
//!
//! tokio-postgres parses most of a connection string itself but knows neither the TLS keys
//! libpq has (`sslrootcert`, `verify-full`, ...) nor the environment. So this module takes the
//! keys tokio-postgres would reject out of the string, hands it the rest, and then fills every
//! gap the way libpq does, so a DSN that works with psql works here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::Config;
use tokio_postgres::config::Host;

use super::ConnectError;

/// The default `application_name`: a DBA sees us in `pg_stat_activity`, and the capture
/// records it with every change.
pub const APPLICATION_NAME: &str = "netbox-outbox";

/// The TLS and password-file settings tokio-postgres does not know, as written in the string.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extras {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    pub passfile: Option<String>,
}

impl Extras {
    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        match key {
            "sslmode" => Some(&mut self.sslmode),
            "sslrootcert" => Some(&mut self.sslrootcert),
            "sslcert" => Some(&mut self.sslcert),
            "sslkey" => Some(&mut self.sslkey),
            "passfile" => Some(&mut self.passfile),
            _ => None,
        }
    }
}

fn is_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// Splits a connection string into what tokio-postgres parses and the [`Extras`].
pub fn split(text: &str) -> Result<(String, Extras), ConnectError> {
    let mut extras = Extras::default();
    if is_url(text) {
        let Some((base, query)) = text.split_once('?') else {
            return Ok((text.to_string(), extras));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key)?;
            match extras.slot(&key) {
                Some(slot) => *slot = Some(decode(value)?),
                None => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, extras));
    }
    let mut kept = Vec::new();
    for (key, value) in keywords(text)? {
        match extras.slot(&key) {
            Some(slot) => *slot = Some(value),
            None => kept.push(format!("{key}={}", quote(&value))),
        }
    }
    Ok((kept.join(" "), extras))
}

fn decode(text: &str) -> Result<String, ConnectError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ConnectError::InvalidUrl {
            reason: format!("{text:?} is not valid percent-encoded UTF-8"),
        })
}

/// A value for a `key=value` string, quoted as libpq reads it.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The pairs of a libpq `key=value` string: values bare or single-quoted, with `\` escapes.
fn keywords(text: &str) -> Result<Vec<(String, String)>, ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidUrl { reason };
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid(format!(
                "{key:?} has no value (expected {key}=value)"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => {
                        return Err(invalid(format!("the value of {key} has no closing quote")));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

/// The connection string with its password replaced by `***`, for Debug output and messages.
pub fn redact(text: &str) -> String {
    const HIDDEN: &str = "***";
    if is_url(text) {
        let (scheme, rest) = text.split_once("://").unwrap_or(("", text));
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:{HIDDEN}@{hosts}"),
                None => authority.to_string(),
            },
            None => authority.to_string(),
        };
        let tail = match tail.split_once('?') {
            Some((path, query)) => {
                let query: Vec<String> = query
                    .split('&')
                    .map(|pair| match pair.split_once('=') {
                        Some((key, _)) if key == "password" => format!("{key}={HIDDEN}"),
                        _ => pair.to_string(),
                    })
                    .collect();
                format!("{path}?{}", query.join("&"))
            }
            None => tail.to_string(),
        };
        return format!("{scheme}://{authority}{tail}");
    }
    match keywords(text) {
        Ok(pairs) => pairs
            .into_iter()
            .map(|(key, value)| {
                let value = if key == "password" {
                    HIDDEN.to_string()
                } else {
                    quote(&value)
                };
                format!("{key}={value}")
            })
            .collect::<Vec<_>>()
            .join(" "),
        // Unparseable: it could hold a password anywhere.
        Err(_) => "(an invalid connection string, not shown)".to_string(),
    }
}

/// Where the environment comes from: the process, or a map in unit tests.
pub type Environment<'a> = &'a dyn Fn(&str) -> Option<String>;

fn var(env: Environment<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.is_empty())
}

/// What the environment and the password file added, for messages.
#[derive(Debug, Default, Clone)]
pub struct Resolved {
    /// The password file consulted, if any, and whether it supplied the password.
    pub passfile: Option<(PathBuf, PassfileUse)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassfileUse {
    Used,
    NoMatch,
    /// Ignored because others may read it (libpq ignores it too).
    TooOpen,
}

/// Fills what the string left out from `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
/// `PGDATABASE`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`, `PGSSL*`, `PGPASSFILE` and the password
/// file, in libpq's order: the string, then the variable, then the default.
pub fn fill_from_environment(
    config: &mut Config,
    extras: &mut Extras,
    env: Environment<'_>,
) -> Result<Resolved, ConnectError> {
    let invalid = |reason: String| ConnectError::Invalid { reason };
    if config.get_ports().is_empty()
        && let Some(ports) = var(env, "PGPORT")
    {
        for port in ports.split(',') {
            let port = port.trim().parse().map_err(|_| {
                invalid(format!("PGPORT {port:?} is not a port number such as 5432"))
            })?;
            config.port(port);
        }
    }
    if config.get_hosts().is_empty() {
        match var(env, "PGHOST") {
            Some(hosts) => {
                for host in hosts.split(',') {
                    if host.starts_with('/') {
                        config.host_path(host);
                    } else {
                        config.host(host);
                    }
                }
            }
            None => default_host(config),
        }
    }
    if config.get_user().is_none() {
        // libpq's default is the operating-system user.
        let user = var(env, "PGUSER")
            .or_else(|| var(env, "USER"))
            .or_else(|| var(env, "LOGNAME"))
            .ok_or_else(|| {
                invalid("no user name: put one in DATABASE_URL or set PGUSER".to_string())
            })?;
        config.user(&user);
    }
    if config.get_dbname().is_none()
        && let Some(dbname) = var(env, "PGDATABASE")
    {
        config.dbname(&dbname);
    }
    if config.get_application_name().is_none() {
        config.application_name(var(env, "PGAPPNAME").as_deref().unwrap_or(APPLICATION_NAME));
    }
    if config.get_connect_timeout().is_none() {
        // libpq: seconds, zero or less waits forever; we never wait forever (a black-holed host
        // would hang the sidecar), so zero means our default.
        let seconds = match var(env, "PGCONNECT_TIMEOUT") {
            Some(text) => text.trim().parse::<i64>().map_err(|_| {
                invalid(format!(
                    "PGCONNECT_TIMEOUT {text:?} is not a number of seconds such as 10"
                ))
            })?,
            None => 10,
        };
        let seconds = if seconds <= 0 { 10 } else { seconds.max(2) };
        config.connect_timeout(Duration::from_secs(seconds as u64));
    }
    let home = var(env, "HOME").map(PathBuf::from);
    let in_home = |name: &str| {
        home.as_ref()
            .map(|h| h.join(".postgresql").join(name))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
    };
    for (slot, name, default) in [
        (&mut extras.sslmode, "PGSSLMODE", None),
        (
            &mut extras.sslrootcert,
            "PGSSLROOTCERT",
            in_home("root.crt"),
        ),
        (&mut extras.sslcert, "PGSSLCERT", in_home("postgresql.crt")),
        (&mut extras.sslkey, "PGSSLKEY", in_home("postgresql.key")),
        (&mut extras.passfile, "PGPASSFILE", None),
    ] {
        if slot.is_none() {
            *slot = var(env, name).or(default);
        }
    }
    let mut resolved = Resolved::default();
    if config.get_password().is_none() {
        if let Some(password) = var(env, "PGPASSWORD") {
            config.password(password);
        } else {
            let passfile = extras
                .passfile
                .clone()
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".pgpass")));
            if let Some(path) = passfile.filter(|p| p.is_file()) {
                let found = lookup_passfile(&path, config)?;
                if let Ok(password) = &found {
                    config.password(password.as_str());
                }
                resolved.passfile = Some((path, found.err().unwrap_or(PassfileUse::Used)));
            }
        }
    }
    Ok(resolved)
}

/// libpq's default host: its socket directory when a server listens there, else localhost.
fn default_host(config: &mut Config) {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let socket_dir = ["/var/run/postgresql", "/run/postgresql", "/tmp"]
        .into_iter()
        .find(|dir| Path::new(dir).join(format!(".s.PGSQL.{port}")).exists());
    match socket_dir {
        Some(dir) => config.host_path(dir),
        None => config.host("localhost"),
    };
}

/// The password for the first host from a password file, or why there is none.
fn lookup_passfile(
    path: &Path,
    config: &Config,
) -> Result<Result<String, PassfileUse>, ConnectError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |e: std::io::Error| ConnectError::Invalid {
        reason: format!("cannot read the password file {}: {e}", path.display()),
    };
    let mode = std::fs::metadata(path)
        .map_err(unreadable)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Ok(Err(PassfileUse::TooOpen));
    }
    let text = std::fs::read_to_string(path).map_err(unreadable)?;
    let (host, is_socket) = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => (h.clone(), false),
        Some(Host::Unix(p)) => (p.display().to_string(), true),
        None => ("localhost".to_string(), false),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = config.get_user().unwrap_or_default();
    let dbname = config.get_dbname().unwrap_or(user);
    Ok(passfile_entry(&text, &host, is_socket, &port, dbname, user).ok_or(PassfileUse::NoMatch))
}

/// The first matching `host:port:database:user:password` line (`*` matches anything, `\:`
/// and `\\` are escapes, `#` starts a comment). A Unix socket matches `localhost`, as in libpq.
fn passfile_entry(
    text: &str,
    host: &str,
    is_socket: bool,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .find_map(|line| {
            let fields = passfile_fields(line);
            let [h, p, d, u, password] = <[String; 5]>::try_from(fields).ok()?;
            let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
            let host_matches = matches(&h, host) || (is_socket && h == "localhost");
            (host_matches && matches(&p, port) && matches(&d, dbname) && matches(&u, user))
                .then_some(password)
        })
}

fn passfile_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            // The password is the rest of the line, colons and all.
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    fn resolve(text: &str, vars: &[(&str, &str)]) -> (Config, Extras) {
        let (rest, mut extras) = split(text).unwrap();
        let mut config: Config = rest.parse().unwrap();
        fill_from_environment(&mut config, &mut extras, &env(vars)).unwrap();
        (config, extras)
    }

    #[test]
    fn tls_keys_are_taken_out_of_urls_and_keyword_strings() {
        let (rest, extras) = split(
            "postgres://u:p@db:5433/netbox?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@db:5433/netbox?application_name=x");
        assert_eq!(extras.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(extras.sslrootcert.as_deref(), Some("/etc/ca.pem"));

        let (rest, extras) =
            split("host=db sslmode=verify-ca sslcert = '/a b/c.crt' dbname=n").unwrap();
        assert_eq!(rest, "host='db' dbname='n'");
        assert_eq!(extras.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(extras.sslcert.as_deref(), Some("/a b/c.crt"));
    }

    #[test]
    fn keyword_values_keep_quotes_and_escapes() {
        let (rest, _) = split(r"host=db password='a \'b\' c' sslmode=require").unwrap();
        let config: Config = rest.parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"a 'b' c"[..]));
        assert!(split("host='db").is_err());
        assert!(split("host").is_err());
    }

    #[test]
    fn the_string_wins_over_the_environment() {
        let (config, extras) = resolve(
            "postgres://alice:pw@db:6000/netbox?sslmode=require",
            &[
                ("PGHOST", "other"),
                ("PGPORT", "7000"),
                ("PGUSER", "bob"),
                ("PGPASSWORD", "env"),
                ("PGDATABASE", "x"),
                ("PGSSLMODE", "disable"),
            ],
        );
        assert_eq!(config.get_hosts(), [Host::Tcp("db".into())]);
        assert_eq!(config.get_ports(), [6000]);
        assert_eq!(config.get_user(), Some("alice"));
        assert_eq!(config.get_password(), Some(&b"pw"[..]));
        assert_eq!(config.get_dbname(), Some("netbox"));
        assert_eq!(extras.sslmode.as_deref(), Some("require"));
    }

    #[test]
    fn the_environment_fills_what_the_string_leaves_out() {
        let (config, extras) = resolve(
            "",
            &[
                ("PGHOST", "db1,/run/pg"),
                ("PGPORT", "6000"),
                ("PGUSER", "bob"),
                ("PGPASSWORD", "env"),
                ("PGDATABASE", "netbox"),
                ("PGSSLMODE", "verify-full"),
                ("PGSSLROOTCERT", "system"),
                ("PGAPPNAME", "mine"),
                ("PGCONNECT_TIMEOUT", "1"),
            ],
        );
        assert_eq!(
            config.get_hosts(),
            [Host::Tcp("db1".into()), Host::Unix("/run/pg".into())]
        );
        assert_eq!(config.get_ports(), [6000]);
        assert_eq!(config.get_user(), Some("bob"));
        assert_eq!(config.get_password(), Some(&b"env"[..]));
        assert_eq!(config.get_dbname(), Some("netbox"));
        assert_eq!(config.get_application_name(), Some("mine"));
        // libpq's minimum is two seconds.
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(extras.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(extras.sslrootcert.as_deref(), Some("system"));

        let (config, _) = resolve("host=db", &[("USER", "os-user")]);
        assert_eq!(config.get_user(), Some("os-user"));
        assert_eq!(config.get_application_name(), Some(APPLICATION_NAME));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(10)));
    }

    #[test]
    fn bad_environment_values_name_the_variable() {
        let (rest, mut extras) = split("").unwrap();
        let mut config: Config = rest.parse().unwrap();
        let error = fill_from_environment(&mut config, &mut extras, &env(&[("PGPORT", "x")]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("PGPORT \"x\" is not a port number"),
            "{error}"
        );
    }

    #[test]
    fn password_file_lines_match_like_libpq() {
        let text = "# comment\n\
                    other:*:*:*:nope\n\
                    db:5432:netbox:alice:se\\:cr:et\n\
                    *:*:*:*:fallback\n";
        let entry = |host, port, db, user| passfile_entry(text, host, false, port, db, user);
        assert_eq!(
            entry("db", "5432", "netbox", "alice").as_deref(),
            Some("se:cr:et")
        );
        assert_eq!(
            entry("db", "5433", "netbox", "alice").as_deref(),
            Some("fallback")
        );
        assert_eq!(
            passfile_entry("localhost:*:*:*:local", "/run/pg", true, "5432", "d", "u").as_deref(),
            Some("local")
        );
        assert_eq!(passfile_entry("a:b:c", "a", false, "b", "c", "d"), None);
    }

    #[test]
    fn redaction_hides_the_password_and_keeps_the_rest() {
        assert_eq!(
            redact("postgres://alice:s3cret@db:5432/netbox?password=s3cret&sslmode=require"),
            "postgres://alice:***@db:5432/netbox?password=***&sslmode=require"
        );
        assert_eq!(
            redact("host=db password='s3 cret' user=alice"),
            "host='db' password=*** user='alice'"
        );
        assert!(!redact("host='db password=s3cret").contains("s3cret"));
    }
}
