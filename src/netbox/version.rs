//! Which NetBox release a database belongs to, read from the migrations NetBox applied
//! (`django_migrations`), and so which model catalogue renders its webhooks; an unknown release is
//! refused unless the operator names one (`[netbox] version`).
//!
//! Each release is known by the newest migration of each of NetBox's own apps. That tells 4.7.0
//! from the later releases, but 4.7.1, 4.7.2 and 4.7.3 have the same migrations and different
//! catalogues (tools/catalogue/README.md lists the differences): among releases the migrations
//! cannot tell apart, `[netbox] version` chooses, and without it the newest is assumed and
//! `check` warns that it was.

use std::collections::BTreeMap;
use std::fmt;

use crate::db::Query;

use super::catalogue;

/// NetBox's apps whose migrations identify a release (Django's and third-party apps say nothing
/// about NetBox's version).
pub const APPS: [&str; 10] = [
    "circuits",
    "core",
    "dcim",
    "extras",
    "ipam",
    "tenancy",
    "users",
    "virtualization",
    "vpn",
    "wireless",
];

/// The newest migration of each app in [`APPS`] (in that order) for NetBox 4.7.0.
const MIGRATIONS_4_7_0: [&str; 10] = [
    "0060_denormalization_triggers",
    "0026_populate_job_execution_time",
    "0250_cooling_infrastructure",
    "0144_customfield_status",
    "0097_merge_ipaddress_host_index_and_multi_protocol_services",
    "0026_consolidate_unique_constraints",
    "0016_default_ordering_indexes",
    "0060_consolidate_unique_constraints",
    "0013_consolidate_unique_constraints",
    "0023_wirelesslangroup_drop_unique_constraint",
];

/// 4.7.1 added `fix_ltree_cascade_triggers` to dcim, tenancy and wireless; 4.7.2 and 4.7.3 added
/// no migration.
const MIGRATIONS_4_7_1: [&str; 10] = [
    "0060_denormalization_triggers",
    "0026_populate_job_execution_time",
    "0251_fix_ltree_cascade_triggers",
    "0144_customfield_status",
    "0097_merge_ipaddress_host_index_and_multi_protocol_services",
    "0027_fix_ltree_cascade_triggers",
    "0016_default_ordering_indexes",
    "0060_consolidate_unique_constraints",
    "0013_consolidate_unique_constraints",
    "0024_fix_ltree_cascade_triggers",
];

/// A NetBox release netbox-outbox has a catalogue for.
#[derive(Debug, PartialEq, Eq)]
pub struct Release {
    pub version: &'static str,
    /// The newest migration of each app in [`APPS`], in that order.
    migrations: &'static [&'static str; 10],
}

/// Every release netbox-outbox knows, oldest first.
pub const RELEASES: [Release; 4] = [
    Release {
        version: "4.7.0",
        migrations: &MIGRATIONS_4_7_0,
    },
    Release {
        version: "4.7.1",
        migrations: &MIGRATIONS_4_7_1,
    },
    Release {
        version: "4.7.2",
        migrations: &MIGRATIONS_4_7_1,
    },
    Release {
        version: "4.7.3",
        migrations: &MIGRATIONS_4_7_1,
    },
];

/// The release a version string names, if netbox-outbox knows it.
pub fn release(version: &str) -> Option<&'static Release> {
    RELEASES.iter().find(|r| r.version == version)
}

fn known_versions() -> String {
    RELEASES
        .iter()
        .map(|r| r.version)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the applied migrations say.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    /// These releases (oldest first) have exactly the migrations found; they share a catalogue.
    Known(Vec<&'static Release>),
    /// No known release has these migrations.
    Unknown(Unknown),
}

/// Migrations no known release has, described for the operator.
#[derive(Debug, PartialEq, Eq)]
pub struct Unknown {
    /// `newer than 4.7.3`, `older than 4.7.0`, or `unlike any release`.
    pub relation: String,
    /// The apps whose newest migration differs from the nearest release: `dcim 0252_x (4.7.3: 0251_y)`.
    pub differences: Vec<String>,
}

impl fmt::Display for Detected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Detected::Known(releases) if releases.len() == 1 => {
                write!(f, "NetBox {}", releases[0].version)
            }
            Detected::Known(releases) => write!(
                f,
                "NetBox {} to {} (the same migrations)",
                releases[0].version,
                releases[releases.len() - 1].version
            ),
            Detected::Unknown(u) => write!(
                f,
                "a NetBox {} ({})",
                u.relation,
                if u.differences.is_empty() {
                    "no NetBox migrations applied".to_string()
                } else {
                    u.differences.join(", ")
                }
            ),
        }
    }
}

/// Classifies the newest applied migration of each of NetBox's apps (`app` to name; apps without
/// one are absent).
pub fn classify(newest: &BTreeMap<String, String>) -> Detected {
    let matches = |r: &Release| {
        APPS.iter()
            .zip(r.migrations.iter())
            .all(|(app, m)| newest.get(*app).map(String::as_str) == Some(*m))
    };
    let found: Vec<&'static Release> = RELEASES.iter().filter(|r| matches(r)).collect();
    if !found.is_empty() {
        return Detected::Known(found);
    }
    let oldest = &RELEASES[0];
    let newest_release = &RELEASES[RELEASES.len() - 1];
    // Migration names start with a zero-padded number, so they compare as their order.
    let cmp = |r: &Release| {
        APPS.iter()
            .zip(r.migrations.iter())
            .map(|(app, m)| newest.get(*app).map(|n| n.as_str().cmp(*m)))
            .collect::<Vec<_>>()
    };
    use std::cmp::Ordering::{Greater, Less};
    let (relation, nearest) = if cmp(newest_release).contains(&Some(Greater)) {
        (
            format!("newer than {}", newest_release.version),
            newest_release,
        )
    } else if cmp(oldest).iter().any(|o| matches!(o, None | Some(Less))) {
        (format!("older than {}", oldest.version), oldest)
    } else {
        ("unlike any release".to_string(), newest_release)
    };
    let differences = APPS
        .iter()
        .zip(nearest.migrations.iter())
        .filter_map(|(app, m)| match newest.get(*app) {
            Some(n) if n.as_str() == *m => None,
            Some(n) => Some(format!("{app} {n} ({}: {m})", nearest.version)),
            None => Some(format!("{app} none ({}: {m})", nearest.version)),
        })
        .collect();
    Detected::Unknown(Unknown {
        relation,
        differences,
    })
}

/// Reads the newest migration of each of NetBox's apps. A database without `django_migrations`
/// is not NetBox's: it classifies as older than any release, with no migrations.
pub async fn detect(client: &impl Query) -> Result<Detected, tokio_postgres::Error> {
    let apps: Vec<String> = APPS.iter().map(|a| a.to_string()).collect();
    let rows = client
        .query(
            "select app::text, max(name)::text from django_migrations where app = any($1) group by app",
            &[&apps],
        )
        .await;
    let rows = match rows {
        Ok(rows) => rows,
        // no django_migrations: not a NetBox database
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => vec![],
        Err(e) => return Err(e),
    };
    Ok(classify(
        &rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
    ))
}

/// The release whose catalogue renders this database's webhooks, and how it was chosen.
#[derive(Debug)]
pub struct Choice {
    pub release: &'static Release,
    pub detected: Detected,
    /// `[netbox] version` was set.
    pub overridden: bool,
}

fn versions_of(found: &[&'static Release]) -> String {
    let names: Vec<String> = found.iter().map(|r| format!("\"{}\"", r.version)).collect();
    names.join(" or ")
}

impl Choice {
    /// One line for the log and `check`.
    pub fn describe(&self) -> String {
        match (&self.detected, self.overridden) {
            (Detected::Known(found), true) if found.contains(&self.release) => format!(
                "NetBox {} ([netbox] version; the migrations say {})",
                self.release.version, self.detected
            ),
            (_, true) => format!(
                "NetBox {} as [netbox] version says; the migrations say {}: webhooks may differ \
                 from NetBox's own where the releases' models differ",
                self.release.version, self.detected
            ),
            (Detected::Known(found), false) if found.len() > 1 => format!(
                "NetBox {} assumed: the migrations say {}, whose webhooks differ (their catalogues \
                 do); if this NetBox is an older one, set [netbox] version = {} \
                 (NETBOX_OUTBOX_NETBOX__VERSION)",
                self.release.version,
                self.detected,
                versions_of(&found[..found.len() - 1])
            ),
            (_, false) => format!("{} (from its migrations)", self.detected),
        }
    }

    /// Whether the release was assumed among several the migrations cannot tell apart (worth a
    /// warning: `[netbox] version` settles it).
    pub fn assumed(&self) -> bool {
        !self.overridden && matches!(&self.detected, Detected::Known(found) if found.len() > 1)
    }

    /// Whether the override contradicts the migrations (worth a warning, not a refusal).
    pub fn contradicted(&self) -> bool {
        match &self.detected {
            Detected::Known(found) => !found.contains(&self.release),
            Detected::Unknown(_) => true,
        }
    }
}

/// An unknown NetBox release, refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "the database holds {detected}, a release netbox-outbox has no model catalogue for (it knows \
     {known}), so its webhooks could differ from NetBox's own; upgrade netbox-outbox, or, to \
     render them as one of the known releases anyway, set [netbox] version = \"{suggest}\" in \
     the configuration file (or NETBOX_OUTBOX_NETBOX__VERSION={suggest})"
)]
pub struct UnknownRelease {
    pub detected: Detected,
    known: String,
    suggest: &'static str,
}

/// Picks the release: `[netbox] version` when set (already validated against [`RELEASES`]),
/// otherwise what the migrations say; an unknown release without an override is refused.
pub fn choose(detected: Detected, configured: Option<&str>) -> Result<Choice, UnknownRelease> {
    if let Some(release) = configured.and_then(release) {
        return Ok(Choice {
            release,
            detected,
            overridden: true,
        });
    }
    match &detected {
        Detected::Known(found) => Ok(Choice {
            release: found[found.len() - 1],
            detected,
            overridden: false,
        }),
        Detected::Unknown(u) => {
            let suggest = if u.relation.starts_with("older") {
                RELEASES[0].version
            } else {
                RELEASES[RELEASES.len() - 1].version
            };
            Err(UnknownRelease {
                detected,
                known: known_versions(),
                suggest,
            })
        }
    }
}

/// Detects the release, chooses it, and makes its catalogue the one this process renders with.
pub async fn select(client: &impl Query, configured: Option<&str>) -> Result<Choice, SelectError> {
    let detected = detect(client).await?;
    let choice = choose(detected, configured)?;
    catalogue::select(choice.release.version);
    Ok(choice)
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("cannot read NetBox's migrations (django_migrations): {0}")]
    Read(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Unknown(#[from] UnknownRelease),
}

/// Checks a `[netbox] version` value: one of the releases netbox-outbox knows.
pub fn validate(version: &str) -> Result<(), String> {
    if release(version).is_some() {
        Ok(())
    } else {
        Err(format!(
            "{version:?} is not a NetBox release netbox-outbox has a catalogue for ({}); leave it \
             unset to read the release from the database's migrations",
            known_versions()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(migrations: &[&str; 10]) -> BTreeMap<String, String> {
        APPS.iter()
            .zip(migrations.iter())
            .map(|(a, m)| (a.to_string(), m.to_string()))
            .collect()
    }

    fn versions(d: &Detected) -> Vec<&'static str> {
        match d {
            Detected::Known(r) => r.iter().map(|r| r.version).collect(),
            Detected::Unknown(_) => vec![],
        }
    }

    #[test]
    fn the_migrations_tell_4_7_0_from_the_later_releases() {
        let d = classify(&applied(&MIGRATIONS_4_7_0));
        assert_eq!(versions(&d), ["4.7.0"]);
        assert_eq!(d.to_string(), "NetBox 4.7.0");
        assert_eq!(choose(d, None).unwrap().release.version, "4.7.0");

        let d = classify(&applied(&MIGRATIONS_4_7_1));
        assert_eq!(versions(&d), ["4.7.1", "4.7.2", "4.7.3"]);
        assert_eq!(d.to_string(), "NetBox 4.7.1 to 4.7.3 (the same migrations)");
        // the newest of them, assumed, and said so
        let c = choose(d, None).unwrap();
        assert_eq!(c.release.version, "4.7.3");
        assert!(c.assumed() && !c.contradicted());
        assert_eq!(
            c.describe(),
            "NetBox 4.7.3 assumed: the migrations say NetBox 4.7.1 to 4.7.3 (the same migrations), \
             whose webhooks differ (their catalogues do); if this NetBox is an older one, set \
             [netbox] version = \"4.7.1\" or \"4.7.2\" (NETBOX_OUTBOX_NETBOX__VERSION)"
        );
    }

    #[test]
    fn the_override_picks_among_releases_with_the_same_migrations() {
        let c = choose(classify(&applied(&MIGRATIONS_4_7_1)), Some("4.7.1")).unwrap();
        assert_eq!(c.release.version, "4.7.1");
        assert!(!c.assumed() && !c.contradicted());
        assert!(
            c.describe().starts_with(
                "NetBox 4.7.1 ([netbox] version; the migrations say NetBox 4.7.1 to 4.7.3"
            ),
            "{}",
            c.describe()
        );
        // and the catalogue is 4.7.1's own
        assert_eq!(catalogue::for_version("4.7.1").netbox_version, "4.7.1");
    }

    #[test]
    fn a_newer_netbox_is_refused_naming_what_was_found_and_the_override() {
        let mut newer = applied(&MIGRATIONS_4_7_1);
        newer.insert("dcim".into(), "0252_something_new".into());
        let d = classify(&newer);
        assert_eq!(
            d,
            Detected::Unknown(Unknown {
                relation: "newer than 4.7.3".into(),
                differences: vec![
                    "dcim 0252_something_new (4.7.3: 0251_fix_ltree_cascade_triggers)".into()
                ],
            })
        );
        let e = choose(d, None).unwrap_err().to_string();
        assert!(
            e.contains("a NetBox newer than 4.7.3 (dcim 0252_something_new"),
            "{e}"
        );
        assert!(e.contains("it knows 4.7.0, 4.7.1, 4.7.2, 4.7.3"), "{e}");
        assert!(e.contains("[netbox] version = \"4.7.3\""), "{e}");
        assert!(e.contains("NETBOX_OUTBOX_NETBOX__VERSION=4.7.3"), "{e}");
    }

    #[test]
    fn an_older_netbox_or_none_at_all_is_refused() {
        let mut older = applied(&MIGRATIONS_4_7_0);
        older.insert("extras".into(), "0140_old".into());
        let d = classify(&older);
        assert!(
            d.to_string().starts_with(
                "a NetBox older than 4.7.0 (extras 0140_old (4.7.0: 0144_customfield_status))"
            ),
            "{d}"
        );
        let e = choose(d, None).unwrap_err().to_string();
        assert!(e.contains("[netbox] version = \"4.7.0\""), "{e}");

        let d = classify(&BTreeMap::new());
        assert!(
            d.to_string()
                .starts_with("a NetBox older than 4.7.0 (circuits none"),
            "{d}"
        );
        assert!(choose(d, None).is_err());

        // a new migration in one app and an old one in another: newer, naming both
        let mut mixed = applied(&MIGRATIONS_4_7_0);
        mixed.insert("vpn".into(), "0012_x".into());
        mixed.insert("dcim".into(), "0252_x".into());
        let d = classify(&mixed).to_string();
        assert!(d.starts_with("a NetBox newer than 4.7.3 (dcim 0252_x (4.7.3: 0251_fix_ltree_cascade_triggers), tenancy 0026"), "{d}");
        assert!(
            d.contains("vpn 0012_x (4.7.3: 0013_consolidate_unique_constraints)"),
            "{d}"
        );
    }

    #[test]
    fn the_override_wins_and_says_when_it_contradicts_the_migrations() {
        let mut newer = applied(&MIGRATIONS_4_7_1);
        newer.insert("extras".into(), "0150_future".into());
        let c = choose(classify(&newer), Some("4.7.3")).unwrap();
        assert_eq!(c.release.version, "4.7.3");
        assert!(c.overridden && c.contradicted());
        assert!(c.describe().starts_with("NetBox 4.7.3 as [netbox] version says; the migrations say a NetBox newer than 4.7.3"), "{}", c.describe());

        let c = choose(classify(&applied(&MIGRATIONS_4_7_1)), Some("4.7.2")).unwrap();
        assert_eq!(c.release.version, "4.7.2");
        assert!(!c.contradicted());

        let c = choose(classify(&applied(&MIGRATIONS_4_7_1)), Some("4.7.0")).unwrap();
        assert!(c.contradicted());
    }

    #[test]
    fn only_known_releases_are_accepted_as_the_override() {
        assert!(validate("4.7.0").is_ok());
        let e = validate("4.8.0").unwrap_err();
        assert!(e.contains("4.7.0, 4.7.1, 4.7.2, 4.7.3"), "{e}");
    }
}
