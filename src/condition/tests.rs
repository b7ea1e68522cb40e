//! NetBox's condition grammar and semantics, case by case (docs 4.3 of the NetBox reference).

use serde_json::{Map, Value, json};

use super::*;

fn data(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("data is an object"),
    }
}

fn device() -> Map<String, Value> {
    data(json!({
        "id": 7,
        "name": "abc-01",
        "status": {"value": "active", "label": "Active"},
        "flag": true,
        "weight": 12.5,
        "position": 3,
        "tenant": null,
        "tags": [{"slug": "gold", "name": "Gold"}, {"slug": "edge", "name": "Edge"}],
        "custom_fields": {"owner": "team-a", "rank": 2, "empty": []},
        "snapshots": {
            "prechange": {"status": "planned", "name": "abc-01", "tags": [], "custom_fields": {"owner": "team-a"}},
            "postchange": {"status": "active", "name": "abc-01", "tags": ["gold"], "custom_fields": {"owner": "team-b"}}
        }
    }))
}

fn created() -> Map<String, Value> {
    let mut d = device();
    d.insert(
        "snapshots".into(),
        json!({"prechange": null, "postchange": {"status": "active", "name": "abc-01"}}),
    );
    d
}

fn eval(conditions: Value, data: &Map<String, Value>) -> Result<bool, String> {
    let parsed = Conditions::parse(Some(&conditions)).map_err(|e| format!("malformed: {}", e.0))?;
    parsed.eval(data).map_err(|e| format!("invalid: {}", e.0))
}

#[track_caller]
fn fires(conditions: Value, data: &Map<String, Value>) {
    assert_eq!(eval(conditions.clone(), data), Ok(true), "{conditions}");
}

#[track_caller]
fn does_not_fire(conditions: Value, data: &Map<String, Value>) {
    assert_eq!(eval(conditions.clone(), data), Ok(false), "{conditions}");
}

#[track_caller]
fn invalid(conditions: Value, data: &Map<String, Value>) {
    let result = eval(conditions.clone(), data);
    assert!(
        matches!(&result, Err(e) if e.starts_with("invalid")),
        "{conditions}: {result:?}"
    );
}

#[track_caller]
fn malformed(conditions: Value) {
    let result = Conditions::parse(Some(&conditions));
    assert!(result.is_err(), "{conditions} should be malformed");
}

#[test]
fn falsy_conditions_always_fire() {
    for none in [
        json!(null),
        json!({}),
        json!([]),
        json!(""),
        json!(0),
        json!(false),
    ] {
        fires(none, &device());
    }
    assert!(matches!(Conditions::parse(None), Ok(Conditions::None)));
}

#[test]
fn every_operator() {
    let d = device();
    fires(json!({"attr": "name", "value": "abc-01"}), &d);
    fires(
        json!({"attr": "status.value", "value": "active", "op": "eq"}),
        &d,
    );
    fires(json!({"attr": "weight", "value": 12, "op": "gt"}), &d);
    fires(json!({"attr": "weight", "value": 12.5, "op": "gte"}), &d);
    fires(json!({"attr": "position", "value": 4, "op": "lt"}), &d);
    fires(json!({"attr": "position", "value": 3.0, "op": "lte"}), &d);
    does_not_fire(json!({"attr": "position", "value": 3, "op": "lt"}), &d);
    fires(
        json!({"attr": "status.value", "value": ["active", "planned"], "op": "in"}),
        &d,
    );
    fires(
        json!({"attr": "name", "value": "c-0", "op": "contains"}),
        &d,
    );
    fires(
        json!({"attr": "tags.slug", "value": "gold", "op": "contains"}),
        &d,
    );
    fires(json!({"attr": "name", "value": "ab", "op": "regex"}), &d);
    fires(json!({"attr": "status", "op": "changed"}), &d);
    fires(json!({"attr": "name", "op": "unchanged"}), &d);
    fires(json!({"attr": "custom_fields.owner", "op": "changed"}), &d);
}

#[test]
fn python_equality_and_negate() {
    let d = device();
    // 1 == 1.0 == True
    fires(json!({"attr": "flag", "value": 1}), &d);
    fires(json!({"attr": "position", "value": 3.0}), &d);
    fires(json!({"attr": "tenant", "value": null}), &d);
    does_not_fire(
        json!({"attr": "name", "value": "abc-01", "negate": true}),
        &d,
    );
    fires(json!({"attr": "name", "value": "x", "negate": 1}), &d);
    does_not_fire(
        json!({"attr": "name", "value": "abc-01", "negate": "yes"}),
        &d,
    );
    fires(json!({"attr": "name", "value": "abc-01", "negate": ""}), &d);
}

#[test]
fn regex_is_anchored_at_the_start_only() {
    let d = device();
    does_not_fire(json!({"attr": "name", "value": "bc", "op": "regex"}), &d);
    fires(json!({"attr": "name", "value": "ab", "op": "regex"}), &d);
    fires(json!({"attr": "name", "value": "a|zz", "op": "regex"}), &d);
    does_not_fire(json!({"attr": "name", "value": "zz|b", "op": "regex"}), &d);
    fires(
        json!({"attr": "name", "value": "abc-\\d+$", "op": "regex"}),
        &d,
    );
    // a lookahead, which Python supports
    fires(
        json!({"attr": "name", "value": "(?=abc)a", "op": "regex"}),
        &d,
    );
}

#[test]
fn logic_sets_short_circuit() {
    let d = device();
    fires(json!({"and": []}), &d);
    does_not_fire(json!({"or": []}), &d);
    fires(
        json!({"or": [{"attr": "name", "value": "abc-01"}, {"attr": "missing.path", "value": 1}]}),
        &d,
    );
    invalid(
        json!({"or": [{"attr": "missing.path", "value": 1}, {"attr": "name", "value": "abc-01"}]}),
        &d,
    );
    does_not_fire(
        json!({"and": [{"attr": "name", "value": "zzz"}, {"attr": "missing", "value": 1}]}),
        &d,
    );
    fires(
        json!({"and": [
            {"attr": "status.value", "value": "active"},
            {"or": [{"attr": "position", "value": 9}, {"attr": "flag", "value": true}]}
        ]}),
        &d,
    );
}

#[test]
fn paths_that_do_not_resolve_are_invalid() {
    let d = device();
    invalid(json!({"attr": "missing", "value": 1}), &d);
    invalid(json!({"attr": "tenant.name", "value": "x"}), &d);
    invalid(json!({"attr": "name.first", "value": "x"}), &d);
    invalid(json!({"attr": "tags.missing", "value": "x"}), &d);
    // incomparable types
    invalid(json!({"attr": "name", "value": 3, "op": "gt"}), &d);
    invalid(json!({"attr": "tenant", "value": 3, "op": "gt"}), &d);
    invalid(
        json!({"attr": "position", "value": "3", "op": "contains"}),
        &d,
    );
    invalid(json!({"attr": "position", "value": "3", "op": "regex"}), &d);
}

#[test]
fn snapshot_paths() {
    let d = device();
    fires(
        json!({"attr": "snapshots.prechange.status", "value": "planned"}),
        &d,
    );
    fires(
        json!({"attr": "snapshots.postchange.tags", "value": "gold", "op": "contains"}),
        &d,
    );
    // on a create the prechange snapshot is null: the path resolves to null
    let c = created();
    fires(
        json!({"attr": "snapshots.prechange.status", "value": null}),
        &c,
    );
    does_not_fire(
        json!({"attr": "snapshots.prechange.status", "value": "active"}),
        &c,
    );
    // null satisfies only eq null; other operators are false, then negated
    does_not_fire(
        json!({"attr": "snapshots.prechange.status", "value": "act", "op": "contains"}),
        &c,
    );
    fires(
        json!({"attr": "snapshots.prechange.status", "value": 1, "op": "gt", "negate": true}),
        &c,
    );
    // a misspelt field still fails
    invalid(
        json!({"attr": "snapshots.prechange.statos", "value": null}),
        &c,
    );
    // changed on a create: only one snapshot resolves, so it changed
    fires(json!({"attr": "status", "op": "changed"}), &c);
    invalid(json!({"attr": "nothing", "op": "changed"}), &c);
    // an empty list counts as absent on the snapshot side
    let mut e = device();
    e.insert(
        "snapshots".into(),
        json!({"prechange": {"tags": []}, "postchange": {"tags": []}}),
    );
    invalid(json!({"attr": "tags.name", "op": "changed"}), &e);
    // no snapshots at all
    let mut none = device();
    none.insert("snapshots".into(), json!(null));
    invalid(json!({"attr": "status", "op": "unchanged"}), &none);
}

#[test]
fn every_malformed_form_is_rejected() {
    malformed(json!([{"attr": "name", "value": "x"}]));
    malformed(json!("name == x"));
    malformed(json!(5));
    malformed(json!({"AND": [{"attr": "name", "value": "x"}]}));
    malformed(json!({"xor": []}));
    malformed(json!({"attr": "name"}));
    malformed(json!({"and": "name"}));
    malformed(json!({"and": [{"OR": [{"attr": "name", "value": "x"}]}]}));
    malformed(json!({"and": [{}]}));
    malformed(json!({"and": [5]}));
    malformed(json!({"attr": "name", "value": "x", "op": "neq"}));
    malformed(json!({"attr": "name", "value": "x", "op": 1}));
    malformed(json!({"attr": "name", "value": "x", "colour": "red"}));
    malformed(json!({"value": "x", "op": "eq"}));
    malformed(json!({"attr": "name", "op": "eq", "negate": false}));
    malformed(json!({"attr": "name", "value": {"a": 1}, "op": "eq"}));
    malformed(json!({"attr": "name", "value": "x", "op": "gt"}));
    malformed(json!({"attr": "name", "value": true, "op": "regex"}));
    malformed(json!({"attr": "name", "value": [1], "op": "gt"}));
    malformed(json!({"attr": "name", "value": null, "op": "contains"}));
    malformed(json!({"attr": "name", "value": 1, "op": "in"}));
    malformed(json!({"attr": "status", "value": "x", "op": "changed"}));
    malformed(json!({"attr": "snapshots.prechange.status", "op": "changed"}));
    malformed(json!({"attr": "name", "value": "(unclosed", "op": "regex"}));
    malformed(json!({"attr": 5, "value": "x", "op": "eq"}));
}
