//! Rule conditions that cannot be built or evaluated (reference docs 4.3): rejected, with the reason.

use super::*;

/// A rule whose conditions cannot be built or evaluated: its delivery is rejected with the
/// precise reason and what to do; the good rule fires.
macro_rules! condition_case {
    ($name:ident, $conditions:expr, $($expected:expr),+) => {
        #[tokio::test]
        async fn $name() {
            rejected_with(
                "http://127.0.0.1:1/",
                &[],
                &format!("'{}'", $conditions),
                &[$($expected),+, "event rule \"bad\"", "fix the rule's conditions in NetBox"],
            )
            .await;
        }
    };
}

condition_case!(
    conditions_that_are_a_list,
    r#"[{"attr": "name", "value": "alpha"}]"#,
    "a rule set must be a JSON object, not list"
);
condition_case!(
    conditions_that_are_a_string,
    r#""name == alpha""#,
    "a rule set must be a JSON object, not str"
);
condition_case!(
    condition_upper_case_logic_key,
    r#"{"AND": [{"attr": "name", "value": "alpha"}]}"#,
    "the logic key must be lower case: use \"and\", not \"AND\""
);
condition_case!(
    condition_logic_value_not_a_list,
    r#"{"and": {"attr": "name", "value": "alpha"}}"#,
    "the value of \"and\" must be a list of conditions, not dict"
);
condition_case!(
    condition_attr_alone_read_as_logic,
    r#"{"attr": "name"}"#,
    "invalid logic type \"attr\""
);
condition_case!(
    condition_nested_upper_case_logic,
    r#"{"and": [{"OR": [{"attr": "name", "value": "alpha"}]}]}"#,
    "unknown key \"OR\" in a condition"
);
condition_case!(
    condition_with_an_unknown_key,
    r#"{"attr": "name", "value": "alpha", "negated": true}"#,
    "unknown key \"negated\" in a condition (allowed: attr, value, op, negate)"
);
condition_case!(
    condition_without_attr,
    r#"{"value": "alpha", "op": "eq"}"#,
    "a condition needs an \"attr\""
);
condition_case!(
    condition_without_a_value,
    r#"{"attr": "name", "op": "eq"}"#,
    "a value is required for the Eq operator"
);
condition_case!(
    condition_changed_with_a_value,
    r#"{"attr": "name", "op": "changed", "value": "alpha"}"#,
    "does not accept a value"
);
condition_case!(
    condition_changed_on_a_snapshot_path,
    r#"{"and": [{"attr": "snapshots.prechange.name", "op": "changed"}]}"#,
    "use the bare attribute"
);
condition_case!(
    condition_with_a_dict_value,
    r#"{"attr": "name", "value": {"a": 1}}"#,
    "unsupported value type: dict"
);
condition_case!(
    condition_value_type_wrong_for_the_operator,
    r#"{"attr": "id", "op": "gt", "value": "1"}"#,
    "invalid type for Gt operation: str"
);
condition_case!(
    condition_with_an_unknown_operator,
    r#"{"attr": "name", "op": "neq", "value": "alpha"}"#,
    "unknown operator \"neq\"; must be one of: eq, gt"
);
condition_case!(
    condition_with_an_invalid_regex,
    r#"{"attr": "name", "op": "regex", "value": "(unclosed"}"#,
    "invalid regular expression \"(unclosed\""
);
condition_case!(
    condition_on_a_missing_attribute,
    r#"{"attr": "nosuch.field", "value": 1}"#,
    "invalid condition: invalid key path: nosuch.field"
);
condition_case!(
    condition_comparing_incomparable_types,
    r#"{"attr": "name", "op": "gt", "value": 1}"#,
    "invalid data type at 'name'"
);
