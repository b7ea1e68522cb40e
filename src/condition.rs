//! Event rule conditions, with the grammar and semantics of NetBox 4.7.3's
//! `extras/conditions.py`: parse once, then evaluate against the event's `data` plus
//! `snapshots`.
//!
//! Parsing fails where NetBox's `ConditionSet(...)` raises while building the set (unknown
//! operator, a value of the wrong type, an unknown key...); evaluation fails where NetBox raises
//! `InvalidCondition` (a path that does not resolve, incomparable types). In NetBox both make
//! the rule not fire; netbox-outbox records either as a rejected delivery with the reason.

use std::fmt;

use serde_json::{Map, Value};

use crate::python::value::{self as py, PyType};

/// A parsed condition set: a rule's `conditions` column.
#[derive(Debug, Clone)]
pub enum Conditions {
    /// Null, `{}` or any falsy value: the rule always fires.
    None,
    Set(ConditionSet),
}

#[derive(Debug, Clone)]
pub struct ConditionSet {
    logic: Logic,
    items: Vec<Item>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Logic {
    And,
    Or,
}

#[derive(Debug, Clone)]
enum Item {
    Set(ConditionSet),
    Condition(Condition),
}

#[derive(Debug, Clone)]
pub struct Condition {
    attr: String,
    op: Op,
    value: Option<Value>,
    negate: bool,
    regex: Option<fancy_regex::Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Contains,
    Regex,
    Changed,
    Unchanged,
}

impl Op {
    const ALL: &'static str = "eq, gt, gte, lt, lte, in, contains, regex, changed, unchanged";

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "eq" => Op::Eq,
            "gt" => Op::Gt,
            "gte" => Op::Gte,
            "lt" => Op::Lt,
            "lte" => Op::Lte,
            "in" => Op::In,
            "contains" => Op::Contains,
            "regex" => Op::Regex,
            "changed" => Op::Changed,
            "unchanged" => Op::Unchanged,
            _ => return None,
        })
    }

    fn compares_snapshots(self) -> bool {
        matches!(self, Op::Changed | Op::Unchanged)
    }

    /// The operators NetBox allows for a value of this Python type.
    fn allowed_for(self, ty: PyType) -> bool {
        use Op::*;
        match ty {
            PyType::Str => matches!(self, Eq | Contains | Regex),
            PyType::Bool => matches!(self, Eq | Contains),
            PyType::Int | PyType::Float => matches!(self, Eq | Gt | Gte | Lt | Lte | Contains),
            PyType::List => matches!(self, Eq | In | Contains),
            PyType::NoneType => self == Eq,
            PyType::Dict => false,
        }
    }
}

/// Why a condition set could not be built (NetBox raises while constructing it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedConditions(pub String);

impl fmt::Display for MalformedConditions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed conditions: {}", self.0)
    }
}

impl std::error::Error for MalformedConditions {}

/// Why a condition could not be evaluated for one event (NetBox's `InvalidCondition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidCondition(pub String);

impl fmt::Display for InvalidCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid condition: {}", self.0)
    }
}

impl std::error::Error for InvalidCondition {}

fn malformed(message: impl Into<String>) -> MalformedConditions {
    MalformedConditions(message.into())
}

impl Conditions {
    /// Builds the condition set stored in a rule's `conditions` column.
    pub fn parse(value: Option<&Value>) -> Result<Self, MalformedConditions> {
        match value {
            None => Ok(Conditions::None),
            Some(v) if !py::truthy(v) => Ok(Conditions::None),
            Some(v) => ConditionSet::parse(v).map(Conditions::Set),
        }
    }

    /// Whether the rule fires for `data` (the serialized object with a `snapshots` key).
    pub fn eval(&self, data: &Map<String, Value>) -> Result<bool, InvalidCondition> {
        match self {
            Conditions::None => Ok(true),
            Conditions::Set(set) => set.eval(data),
        }
    }
}

fn is_ruleset(value: &Value) -> bool {
    matches!(value, Value::Object(map) if map.len() == 1
        && map.keys().next().is_some_and(|k| k == "and" || k == "or"))
}

impl ConditionSet {
    fn parse(value: &Value) -> Result<Self, MalformedConditions> {
        let Value::Object(map) = value else {
            return Err(malformed(format!(
                "a rule set must be a JSON object, not {}",
                PyType::of(value).name()
            )));
        };
        if map.len() == 1 {
            let (key, items) = map.iter().next().expect("one key");
            let logic = match key.to_lowercase().as_str() {
                "and" => Logic::And,
                "or" => Logic::Or,
                _ => {
                    return Err(malformed(format!(
                        "invalid logic type {key:?}: must be \"and\" or \"or\""
                    )));
                }
            };
            if key != "and" && key != "or" {
                // NetBox lower-cases the key, then looks up the lower-case key: KeyError.
                return Err(malformed(format!(
                    "the logic key must be lower case: use {:?}, not {key:?}",
                    key.to_lowercase()
                )));
            }
            let Value::Array(items) = items else {
                return Err(malformed(format!(
                    "the value of {key:?} must be a list of conditions, not {}",
                    PyType::of(items).name()
                )));
            };
            let items = items
                .iter()
                .map(|item| {
                    if is_ruleset(item) {
                        ConditionSet::parse(item).map(Item::Set)
                    } else {
                        Condition::parse(item).map(Item::Condition)
                    }
                })
                .collect::<Result<_, _>>()?;
            Ok(ConditionSet { logic, items })
        } else {
            Ok(ConditionSet {
                logic: Logic::And,
                items: vec![Item::Condition(Condition::parse(value)?)],
            })
        }
    }

    fn eval(&self, data: &Map<String, Value>) -> Result<bool, InvalidCondition> {
        // all() / any() over a generator: short-circuits, so a later invalid item may never run
        for item in &self.items {
            let result = match item {
                Item::Set(set) => set.eval(data)?,
                Item::Condition(condition) => condition.eval(data)?,
            };
            match (self.logic, result) {
                (Logic::And, false) => return Ok(false),
                (Logic::Or, true) => return Ok(true),
                _ => {}
            }
        }
        Ok(self.logic == Logic::And)
    }
}

const SNAPSHOT_PREFIX: &str = "snapshots.";

fn opposite(which: &str) -> &'static str {
    if which == "prechange" {
        "postchange"
    } else {
        "prechange"
    }
}

/// The result of walking a dotted path (NetBox's `walk_path`).
enum Walk<'a> {
    Found(std::borrow::Cow<'a, Value>),
    Missing,
}

fn walk_path<'a>(
    mut obj: std::borrow::Cow<'a, Value>,
    keys: &[&str],
    empty_list_is_absent: bool,
) -> Result<Walk<'a>, String> {
    use std::borrow::Cow;
    for key in keys {
        let next: Cow<'a, Value> = match obj {
            Cow::Borrowed(Value::Null) | Cow::Owned(Value::Null) => return Ok(Walk::Missing),
            Cow::Borrowed(Value::Array(items)) => {
                match map_list(items, key, empty_list_is_absent)? {
                    Some(values) => Cow::Owned(Value::Array(values)),
                    None => return Ok(Walk::Missing),
                }
            }
            Cow::Owned(Value::Array(ref items)) => {
                match map_list(items, key, empty_list_is_absent)? {
                    Some(values) => Cow::Owned(Value::Array(values)),
                    None => return Ok(Walk::Missing),
                }
            }
            Cow::Borrowed(Value::Object(map)) => match map.get(*key) {
                Some(value) => Cow::Borrowed(value),
                None => return Ok(Walk::Missing),
            },
            Cow::Owned(Value::Object(mut map)) => match map.remove(*key) {
                Some(value) => Cow::Owned(value),
                None => return Ok(Walk::Missing),
            },
            other => {
                return Err(format!(
                    "cannot resolve '{key}' within {}",
                    PyType::of(&other).name()
                ));
            }
        };
        obj = next;
    }
    Ok(Walk::Found(obj))
}

/// Maps the rest of a path over a list of dicts; `None` when any item lacks the key.
fn map_list(
    items: &[Value],
    key: &str,
    empty_list_is_absent: bool,
) -> Result<Option<Vec<Value>>, String> {
    if items.is_empty() && empty_list_is_absent {
        return Ok(None);
    }
    let mut values = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Value::Null => return Ok(None),
            Value::Object(map) => match map.get(key) {
                Some(value) => values.push(value.clone()),
                None => return Ok(None),
            },
            other => {
                return Err(format!(
                    "cannot resolve '{key}' within {}",
                    PyType::of(other).name()
                ));
            }
        }
    }
    Ok(Some(values))
}

impl Condition {
    fn parse(value: &Value) -> Result<Self, MalformedConditions> {
        let Value::Object(map) = value else {
            return Err(malformed(format!(
                "a condition must be a JSON object, not {}",
                PyType::of(value).name()
            )));
        };
        for key in map.keys() {
            if !matches!(key.as_str(), "attr" | "value" | "op" | "negate") {
                return Err(malformed(format!(
                    "unknown key {key:?} in a condition (allowed: attr, value, op, negate)"
                )));
            }
        }
        let attr = match map.get("attr") {
            Some(Value::String(attr)) => attr.clone(),
            Some(other) => {
                return Err(malformed(format!(
                    "attr must be a string, not {}",
                    PyType::of(other).name()
                )));
            }
            None => return Err(malformed("a condition needs an \"attr\"")),
        };
        let op = match map.get("op") {
            None => Op::Eq,
            Some(Value::String(name)) => Op::parse(name).ok_or_else(|| {
                malformed(format!(
                    "unknown operator {name:?}; must be one of: {}",
                    Op::ALL
                ))
            })?,
            Some(other) => {
                return Err(malformed(format!(
                    "unknown operator {other}; must be one of: {}",
                    Op::ALL
                )));
            }
        };
        let negate = map.get("negate").is_some_and(py::truthy);
        let value = map.get("value").cloned();
        if op.compares_snapshots() {
            if value.is_some() {
                return Err(malformed(format!(
                    "the {op:?} operator compares snapshots and does not accept a value"
                )));
            }
            if attr.starts_with(SNAPSHOT_PREFIX) {
                return Err(malformed(format!(
                    "the {op:?} operator resolves {attr:?} within each snapshot: use the bare \
                     attribute (e.g. \"status\"), not a snapshot path"
                )));
            }
        } else {
            let Some(v) = &value else {
                return Err(malformed(format!(
                    "a value is required for the {op:?} operator"
                )));
            };
            let ty = PyType::of(v);
            if ty == PyType::Dict {
                return Err(malformed("unsupported value type: dict"));
            }
            if !op.allowed_for(ty) {
                return Err(malformed(format!(
                    "invalid type for {op:?} operation: {}",
                    ty.name()
                )));
            }
        }
        let regex = if op == Op::Regex {
            let pattern = value.as_ref().and_then(Value::as_str).unwrap_or_default();
            // re.match() anchors at the start only
            Some(
                fancy_regex::Regex::new(&format!("\\A(?:{pattern})")).map_err(|e| {
                    malformed(format!("invalid regular expression {pattern:?}: {e}"))
                })?,
            )
        } else {
            None
        };
        Ok(Condition {
            attr,
            op,
            value,
            negate,
            regex,
        })
    }

    fn keys(&self) -> Vec<&str> {
        self.attr.split('.').collect()
    }

    fn eval(&self, data: &Map<String, Value>) -> Result<bool, InvalidCondition> {
        use std::borrow::Cow;
        if self.op.compares_snapshots() {
            let Some(Value::Object(snapshots)) = data.get("snapshots") else {
                return Err(InvalidCondition(format!(
                    "no snapshot data available for the {:?} operator: snapshot operators are \
                     only meaningful on update and delete events",
                    self.op
                )));
            };
            let (pre, post) = self.resolve_snapshots(snapshots)?;
            let equal = match (&pre, &post) {
                (Some(a), Some(b)) => py::eq(a, b),
                _ => false,
            };
            let result = if self.op == Op::Changed {
                !equal
            } else {
                equal
            };
            return Ok(result != self.negate);
        }

        let absent = self.references_absent_snapshot(data);
        let value: Cow<'_, Value> = if absent {
            Cow::Owned(Value::Null)
        } else {
            let root = Value::Object(data.clone());
            match walk_path(Cow::Owned(root), &self.keys(), false) {
                Ok(Walk::Found(v)) => Cow::Owned(v.into_owned()),
                Ok(Walk::Missing) => {
                    return Err(InvalidCondition(format!("invalid key path: {}", self.attr)));
                }
                Err(e) => {
                    return Err(InvalidCondition(format!(
                        "invalid key path: {} ({e})",
                        self.attr
                    )));
                }
            }
        };
        let result = match self.apply(&value) {
            Ok(result) => result,
            // A null snapshot satisfies only eq null: the rest is a non-match, not an error.
            Err(_) if absent => false,
            Err(e) => {
                return Err(InvalidCondition(format!(
                    "invalid data type at '{}' for '{:?}' evaluation: {e}",
                    self.attr, self.op
                )));
            }
        };
        Ok(result != self.negate)
    }

    /// Applies the operator to the resolved data value, or fails like Python's TypeError.
    fn apply(&self, data: &Value) -> Result<bool, String> {
        use std::cmp::Ordering::*;
        let value = self.value.as_ref().expect("value operators have a value");
        Ok(match self.op {
            Op::Eq => py::eq(data, value),
            Op::Gt => py::cmp(data, value)? == Greater,
            Op::Gte => py::cmp(data, value)? != Less,
            Op::Lt => py::cmp(data, value)? == Less,
            Op::Lte => py::cmp(data, value)? != Greater,
            Op::In => py::contains(value, data)?,
            Op::Contains => py::contains(data, value)?,
            Op::Regex => match data {
                Value::String(text) => self
                    .regex
                    .as_ref()
                    .expect("regex operators compile their pattern")
                    .is_match(text)
                    .map_err(|e| e.to_string())?,
                other => {
                    return Err(format!(
                        "expected string or bytes-like object, got '{}'",
                        PyType::of(other).name()
                    ));
                }
            },
            Op::Changed | Op::Unchanged => unreachable!("snapshot operators are handled apart"),
        })
    }

    /// NetBox's `_references_absent_snapshot`: a `snapshots.prechange.x` path on a create (or
    /// `postchange` on a delete) resolves to null, if the rest of the path describes the data.
    fn references_absent_snapshot(&self, data: &Map<String, Value>) -> bool {
        use std::borrow::Cow;
        let Some(rest) = self.attr.strip_prefix(SNAPSHOT_PREFIX) else {
            return false;
        };
        let Some(Value::Object(snapshots)) = data.get("snapshots") else {
            return false;
        };
        let (which, remainder) = rest.split_once('.').unwrap_or((rest, ""));
        if which != "prechange" && which != "postchange" {
            return false;
        }
        if !matches!(snapshots.get(which), Some(Value::Null)) {
            return false;
        }
        if let Some(other) = snapshots.get(opposite(which))
            && !remainder.is_empty()
            && !other.is_null()
        {
            let keys: Vec<&str> = remainder.split('.').collect();
            match walk_path(Cow::Borrowed(other), &keys, true) {
                Ok(Walk::Found(_)) => {}
                Ok(Walk::Missing) | Err(_) => return false,
            }
        }
        true
    }

    /// NetBox's `_resolve_snapshot_attrs`: the attribute in each snapshot, `None` where absent.
    #[allow(clippy::type_complexity)]
    fn resolve_snapshots(
        &self,
        snapshots: &Map<String, Value>,
    ) -> Result<(Option<Value>, Option<Value>), InvalidCondition> {
        use std::borrow::Cow;
        let keys = self.keys();
        let mut values = [None, None];
        let mut errors = Vec::new();
        let mut available = false;
        for (i, which) in ["prechange", "postchange"].into_iter().enumerate() {
            let snapshot = snapshots.get(which).unwrap_or(&Value::Null);
            if snapshot.is_null() {
                continue;
            }
            available = true;
            match walk_path(Cow::Borrowed(snapshot), &keys, true) {
                Ok(Walk::Found(v)) => values[i] = Some(v.into_owned()),
                Ok(Walk::Missing) => {}
                Err(e) => errors.push(e),
            }
        }
        if !available {
            return Err(InvalidCondition(format!(
                "no snapshot data available for the {:?} operator: {}; snapshot operators are \
                 only meaningful on update and delete events",
                self.op, self.attr
            )));
        }
        if values.iter().all(Option::is_none) {
            let reason = errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            return Err(InvalidCondition(format!(
                "invalid key path for the {:?} operator: {}{reason}; the attribute resolves in \
                 neither snapshot (snapshots store raw values: no '.value' suffix on choices)",
                self.op, self.attr
            )));
        }
        let [pre, post] = values;
        Ok((pre, post))
    }
}

#[cfg(test)]
mod tests;
