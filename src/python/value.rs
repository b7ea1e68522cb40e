//! Python's equality, ordering, membership and truthiness over JSON values, as NetBox's
//! condition engine applies them to `json.loads` output.
//!
//! Numbers are told apart as Python's `json.loads` tells them (see [`crate::python::json::py_number`]):
//! `1` is an `int` of any size, `1.0` and `1e400` (infinity) are `float`s, and `1`, `1.0` and
//! `true` are equal.

use std::cmp::Ordering;

use serde_json::{Number, Value};

use crate::python::json::{PyNumber, py_number};

/// Python's type of a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyType {
    NoneType,
    Bool,
    Int,
    Float,
    Str,
    List,
    Dict,
}

impl PyType {
    pub fn of(value: &Value) -> Self {
        match value {
            Value::Null => PyType::NoneType,
            Value::Bool(_) => PyType::Bool,
            Value::Number(n) if is_float(n) => PyType::Float,
            Value::Number(_) => PyType::Int,
            Value::String(_) => PyType::Str,
            Value::Array(_) => PyType::List,
            Value::Object(_) => PyType::Dict,
        }
    }

    /// The name Python prints for the type.
    pub fn name(self) -> &'static str {
        match self {
            PyType::NoneType => "NoneType",
            PyType::Bool => "bool",
            PyType::Int => "int",
            PyType::Float => "float",
            PyType::Str => "str",
            PyType::List => "list",
            PyType::Dict => "dict",
        }
    }
}

fn is_float(n: &Number) -> bool {
    // a Decimal compares as a number; its type name aside, it behaves as the float here
    matches!(
        py_number(n.as_str()),
        PyNumber::Float(_) | PyNumber::Decimal(..)
    )
}

/// A numeric value: Python's bool, int or float.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i128),
    Float(f64),
}

fn number(value: &Value) -> Option<Num> {
    match value {
        Value::Bool(b) => Some(Num::Int(i128::from(*b))),
        Value::Number(n) => match py_number(n.as_str()) {
            PyNumber::Int(digits) => Some(match digits.parse::<i128>() {
                Ok(i) => Num::Int(i),
                // beyond i128 (±1.7e38) an int is compared through its nearest float
                Err(_) => Num::Float(digits.parse().unwrap_or(f64::NAN)),
            }),
            PyNumber::Float(x) | PyNumber::Decimal(_, x) => Some(Num::Float(x)),
        },
        _ => None,
    }
}

fn cmp_num(a: Num, b: Num) -> Option<Ordering> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => Some(x.cmp(&y)),
        (Num::Int(x), Num::Float(y)) => (x as f64).partial_cmp(&y),
        (Num::Float(x), Num::Int(y)) => x.partial_cmp(&(y as f64)),
        (Num::Float(x), Num::Float(y)) => x.partial_cmp(&y),
    }
}

/// Python compares a `Decimal` with a `float` exactly: `Decimal("12.345600") == 12.3456` is
/// False (the float is not exactly 12.3456), `Decimal("12.500000") == 12.5` is True. So they are
/// equal only when the Decimal is a binary fraction the float holds exactly. None when neither
/// side is a Decimal facing a float.
fn decimal_float_eq(a: &Value, b: &Value) -> Option<bool> {
    let literal = |v: &Value| match v {
        Value::Number(n) => Some(n.as_str().to_string()),
        _ => None,
    };
    let (la, lb) = (literal(a)?, literal(b)?);
    let (text, other) = match (py_number(&la), py_number(&lb)) {
        (PyNumber::Decimal(t, _), PyNumber::Float(f))
        | (PyNumber::Float(f), PyNumber::Decimal(t, _)) => (t.to_string(), f),
        _ => return None,
    };
    let Ok(value) = text.parse::<f64>() else {
        return Some(false);
    };
    Some(value == other && exactly_binary(&text))
}

/// Whether a decimal text (`-12.500`) is a value an f64 holds exactly: a fraction whose
/// denominator is a power of two, with at most 53 significant bits.
fn exactly_binary(text: &str) -> bool {
    let unsigned = text.trim_start_matches('-');
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let fraction = fraction.trim_end_matches('0');
    let Ok(digits) = format!("{whole}{fraction}").parse::<u128>() else {
        return false;
    };
    let Some(five) = 5u128.checked_pow(fraction.len() as u32) else {
        return false;
    };
    if digits % five != 0 {
        return false;
    }
    let mut odd = digits / five;
    if odd == 0 {
        return true;
    }
    while odd % 2 == 0 {
        odd /= 2;
    }
    odd < (1u128 << 53)
}

/// `a == b` in Python.
pub fn eq(a: &Value, b: &Value) -> bool {
    if let Some(equal) = decimal_float_eq(a, b) {
        return equal;
    }
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return cmp_num(x, y) == Some(Ordering::Equal);
    }
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| eq(v, w)))
        }
        _ => false,
    }
}

/// Python's ordering of `a` and `b`, or the TypeError Python raises for incomparable types.
pub fn cmp(a: &Value, b: &Value) -> Result<Ordering, String> {
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        // NaN compares false every way; Python gives False, which no ordering expresses.
        return cmp_num(x, y).ok_or_else(|| "comparison with NaN".to_string());
    }
    match (a, b) {
        (Value::String(x), Value::String(y)) => Ok(x.chars().cmp(y.chars())),
        (Value::Array(x), Value::Array(y)) => {
            for (p, q) in x.iter().zip(y) {
                if !eq(p, q) {
                    return cmp(p, q);
                }
            }
            Ok(x.len().cmp(&y.len()))
        }
        _ => Err(format!(
            "'<' not supported between instances of '{}' and '{}'",
            PyType::of(a).name(),
            PyType::of(b).name()
        )),
    }
}

/// `needle in haystack` in Python, or the TypeError it raises.
pub fn contains(haystack: &Value, needle: &Value) -> Result<bool, String> {
    match haystack {
        Value::String(s) => match needle {
            Value::String(n) => Ok(s.contains(n.as_str())),
            other => Err(format!(
                "'in <string>' requires string as left operand, not {}",
                PyType::of(other).name()
            )),
        },
        Value::Array(items) => Ok(items.iter().any(|item| eq(item, needle))),
        Value::Object(map) => match needle {
            // dict membership tests keys; JSON keys are strings, so only a str can be found
            Value::String(key) => Ok(map.contains_key(key)),
            Value::Array(_) | Value::Object(_) => {
                Err(format!("unhashable type: '{}'", PyType::of(needle).name()))
            }
            _ => Ok(false),
        },
        other => Err(format!(
            "argument of type '{}' is not iterable",
            PyType::of(other).name()
        )),
    }
}

/// Python's truthiness.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(_) => match number(value) {
            Some(Num::Int(i)) => i != 0,
            Some(Num::Float(f)) => f != 0.0,
            None => true,
        },
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn v(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn numbers_compare_across_bool_int_and_float() {
        assert!(eq(&v("1"), &v("1.0")));
        assert!(eq(&v("true"), &v("1")));
        assert!(eq(&v("false"), &v("0.0")));
        assert!(!eq(&v("\"1\""), &v("1")));
        assert_eq!(PyType::of(&v("1.0")), PyType::Float);
        assert_eq!(PyType::of(&v("1")), PyType::Int);
        assert_eq!(cmp(&v("2"), &v("1.5")), Ok(Ordering::Greater));
        // ints beyond u64 stay exact; a float literal that overflows is infinity, as in Python
        assert_eq!(PyType::of(&v("18446744073709551617")), PyType::Int);
        assert!(!eq(&v("18446744073709551617"), &v("18446744073709551616")));
        assert_eq!(PyType::of(&v("1e400")), PyType::Float);
        assert_eq!(
            cmp(&v("1e400"), &v("18446744073709551617")),
            Ok(Ordering::Greater)
        );
        assert!(truthy(&v("1e400")));
        assert!(cmp(&v("\"a\""), &v("1")).is_err());
        assert!(cmp(&Value::Null, &v("1")).is_err());
    }

    /// A numeric column in `data` is a Decimal, compared with a condition's float as Python
    /// does (`python3 -c 'from decimal import Decimal as D; print(D("12.345600") == 12.3456)'`).
    #[test]
    fn decimals_compare_with_floats_exactly() {
        let d = crate::python::decimal::number;
        assert!(!eq(&d("12.345600"), &v("12.3456")));
        assert!(eq(&d("12.500000"), &v("12.5")));
        assert!(eq(&v("-0.25"), &d("-0.250")));
        assert!(eq(&d("12.000000"), &v("12")), "with an int: by value");
        assert!(!eq(&d("NaN"), &v("1.5")));
        assert!(!eq(&d("0.100000"), &v("0.1")));
        assert!(eq(&d("0.000000"), &v("0.0")));
        assert_eq!(cmp(&d("12.345600"), &v("12")), Ok(Ordering::Greater));
    }

    #[test]
    fn containers_follow_python() {
        assert!(eq(&json!([1, "a"]), &json!([1.0, "a"])));
        assert!(eq(&json!({"a": 1, "b": 2}), &json!({"b": 2, "a": 1})));
        assert_eq!(contains(&json!("abc-01"), &json!("c-0")), Ok(true));
        assert!(contains(&json!("abc"), &json!(1)).is_err());
        assert_eq!(contains(&json!([1, 2]), &json!(2.0)), Ok(true));
        assert_eq!(contains(&json!({"k": 1}), &json!("k")), Ok(true));
        assert_eq!(contains(&json!({"1": 1}), &json!(1)), Ok(false));
        assert!(contains(&json!({"k": 1}), &json!([])).is_err());
        assert!(contains(&json!(5), &json!(5)).is_err());
        assert_eq!(cmp(&json!([1, 2]), &json!([1, 3])), Ok(Ordering::Less));
    }

    #[test]
    fn truthiness() {
        for falsy in ["null", "false", "0", "0.0", "\"\"", "[]", "{}"] {
            assert!(!truthy(&v(falsy)), "{falsy}");
        }
        for t in ["true", "1", "-0.5", "\"x\"", "[0]", "{\"a\":null}"] {
            assert!(truthy(&v(t)), "{t}");
        }
    }
}
