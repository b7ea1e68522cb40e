//! `json.dumps(value)` with Python's default options, byte for byte: `", "` and `": "`
//! separators, keys in insertion order, every non-ASCII character escaped as `\uXXXX` (surrogate
//! pairs beyond the BMP), and floats written as Python's `repr` writes them.
//!
//! NetBox sends this as the body of a webhook without a body template; receivers that verify
//! `X-Hook-Signature` hash these exact bytes.
//!
//! Numbers keep the digits PostgreSQL wrote (serde_json's `arbitrary_precision`), and are written
//! as Python writes what `json.loads` made of them: a literal without `.`, `e` or `E` is an `int`
//! of any size (`18446744073709551617` stays exact), any other is a `float` (`1.50` becomes
//! `1.5`, `1e400` becomes `Infinity`), see [`number_form`].

use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value;
use serde_json::ser::{CharEscape, Formatter};

/// Serializes `value` as Python's `json.dumps(value)` would.
pub fn dumps(value: &Value) -> String {
    let mut out = Vec::with_capacity(1024);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value
        .serialize(&mut serializer)
        .expect("serializing a Value into memory cannot fail");
    String::from_utf8(out).expect("the output is ASCII")
}

/// `json.dumps(value, sort_keys=True)`: object keys sorted by code point, at every depth.
pub fn dumps_sorted(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&map[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    dumps(&sorted(value))
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation when the
/// decimal exponent is in [-4, 16), else scientific with a signed two-digit exponent.
pub fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // Rust's {:e} gives the shortest round-trip digits: "1.23456e1", "-5e-7"
    let sci = format!("{x:e}");
    let (mantissa, exponent) = sci.split_once('e').expect("{:e} has an exponent");
    let exponent: i32 = exponent.parse().expect("integer exponent");
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let decimal_point = exponent + 1; // digits before the decimal point
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if (-3..=16).contains(&decimal_point) {
        if decimal_point <= 0 {
            out.push_str("0.");
            out.push_str(&"0".repeat((-decimal_point) as usize));
            out.push_str(&digits);
        } else if decimal_point as usize >= digits.len() {
            out.push_str(&digits);
            out.push_str(&"0".repeat(decimal_point as usize - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decimal_point as usize]);
            out.push('.');
            out.push_str(&digits[decimal_point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push_str(&format!(
            "e{}{:02}",
            if exponent < 0 { '-' } else { '+' },
            exponent.abs()
        ));
    }
    out
}

/// What Python's `json.loads` reads a JSON number literal as.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PyNumber<'a> {
    /// An `int`: the literal's digits, exact at any size.
    Int(&'a str),
    /// A `float`, `inf` when the literal overflows as in Python.
    Float(f64),
    /// A `Decimal` (a numeric column in `data`, see [`crate::python::decimal`]): its text and
    /// the float it becomes in a JSON body.
    Decimal(&'a str, f64),
}

/// Classifies a JSON number literal as Python's `json.loads` does (`int` unless it has a
/// fraction or an exponent; `NaN`, `Infinity` and `-Infinity` are floats; a literal this crate
/// marked as a Decimal is one).
pub fn py_number(literal: &str) -> PyNumber<'_> {
    // the non-finite tokens Python's json.loads reads (and json.dumps writes); a number holds
    // one only when the renderer made it (a NaN numeric column, see `netbox::format`)
    match literal {
        "NaN" => return PyNumber::Float(f64::NAN),
        "Infinity" => return PyNumber::Float(f64::INFINITY),
        "-Infinity" => return PyNumber::Float(f64::NEG_INFINITY),
        _ => {}
    }
    if let Some(text) = literal.strip_prefix(crate::python::decimal::MARK) {
        return PyNumber::Decimal(text, text.parse().unwrap_or(f64::NAN));
    }
    if literal.contains(['.', 'e', 'E']) {
        // Rust, like Python's float(), reads an overflowing literal as infinity
        PyNumber::Float(literal.parse().unwrap_or(f64::NAN))
    } else {
        PyNumber::Int(literal)
    }
}

/// `json.dumps(json.loads(literal))` for one number literal: `-0` is the int `0`, floats are
/// written as `repr` writes them, and the non-finite ones as `NaN`, `Infinity`, `-Infinity`.
pub fn number_form(literal: &str) -> String {
    match py_number(literal) {
        PyNumber::Int(digits) if digits.trim_start_matches('-').bytes().all(|b| b == b'0') => {
            "0".into()
        }
        PyNumber::Int(digits) => digits.into(),
        PyNumber::Float(x) | PyNumber::Decimal(_, x) => match float_repr(x).as_str() {
            "nan" => "NaN".into(),
            "inf" => "Infinity".into(),
            "-inf" => "-Infinity".into(),
            other => other.into(),
        },
    }
}

struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(b": ")
    }

    fn write_f64<W: ?Sized + Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(number_form(&format!("{value:e}")).as_bytes())
    }

    /// Every `Number` comes here (`arbitrary_precision`): its literal as PostgreSQL wrote it.
    fn write_number_str<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        value: &str,
    ) -> io::Result<()> {
        writer.write_all(number_form(value).as_bytes())
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() && c != '\x7f' {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => {
                return write!(writer, "\\u{byte:04x}");
            }
        };
        writer.write_all(s)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (12.3456, "12.3456"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1e16, "1e+16"),
            (1234567890123456.0, "1234567890123456.0"),
            (1.5e16, "1.5e+16"),
            (-2.5, "-2.5"),
            (123.0, "123.0"),
            (1e22, "1e+22"),
            (0.30000000000000004, "0.30000000000000004"),
            (-0.0, "-0.0"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ];
        for (x, want) in cases {
            assert_eq!(float_repr(x), want, "{x:?}");
        }
    }

    #[test]
    fn dumps_matches_python_bytes() {
        // python3 -c 'import json; print(json.dumps({...}))'
        let value: Value = serde_json::from_str(
            r#"{"event": "created", "n": [1, 2.50, 1e3, -0.0], "s": "héllo 🚀 \"q\" \\ / \n\t\u0001\u007f", "e": {}, "l": [], "z": null, "b": true}"#,
        )
        .unwrap();
        assert_eq!(
            dumps(&value),
            r#"{"event": "created", "n": [1, 2.5, 1000.0, -0.0], "s": "h\u00e9llo \ud83d\ude80 \"q\" \\ / \n\t\u0001\u007f", "e": {}, "l": [], "z": null, "b": true}"#
        );
        assert_eq!(
            dumps(&json!({"a": {"b": [1, {"c": "d"}]}})),
            r#"{"a": {"b": [1, {"c": "d"}]}}"#
        );
    }

    #[test]
    fn numbers_beyond_f64_and_u64_are_written_as_python_writes_them() {
        // python3 -c 'import json; print(json.dumps(json.loads(text)))', the text being what
        // PostgreSQL's jsonb writes (1e400 in a jsonb prints as 1 and 400 zeros: an int)
        let big = format!("1{}", "0".repeat(400));
        let text = format!(
            r#"{{"u": 18446744073709551617, "neg": -18446744073709551617, "jsonb_1e400": {big}, "inf": 1e400, "ninf": -1e400, "dec": 1.50, "exp": 2E3, "z": -0, "small": 1e-5, "f": 0.30000000000000004}}"#
        );
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            dumps(&value),
            format!(
                r#"{{"u": 18446744073709551617, "neg": -18446744073709551617, "jsonb_1e400": {big}, "inf": Infinity, "ninf": -Infinity, "dec": 1.5, "exp": 2000.0, "z": 0, "small": 1e-05, "f": 0.30000000000000004}}"#
            )
        );
        // numbers made in Rust take the same path
        assert_eq!(
            dumps(&json!([1e22, 0.1, -0.0, u64::MAX])),
            "[1e+22, 0.1, -0.0, 18446744073709551615]"
        );
        assert_eq!(py_number("1e400"), PyNumber::Float(f64::INFINITY));
        assert_eq!(py_number("-Infinity"), PyNumber::Float(f64::NEG_INFINITY));
        assert!(matches!(py_number("NaN"), PyNumber::Float(x) if x.is_nan()));
        assert_eq!(
            py_number("18446744073709551617"),
            PyNumber::Int("18446744073709551617")
        );
    }

    #[test]
    fn non_finite_numbers_are_bare_tokens() {
        // python3 -c 'import json; print(json.dumps([float("nan"), float("inf"), -float("inf")]))'
        let number = |t: &str| Value::Number(serde_json::Number::from_string_unchecked(t.into()));
        let value = Value::Array(vec![number("NaN"), number("Infinity"), number("-Infinity")]);
        assert_eq!(dumps(&value), "[NaN, Infinity, -Infinity]");
        // built by hand: `json!`/`to_value` re-parse a number's literal, which refuses these
        let mut map = serde_json::Map::new();
        map.insert("b".into(), value);
        map.insert("a".into(), json!(1));
        assert_eq!(
            dumps_sorted(&Value::Object(map)),
            r#"{"a": 1, "b": [NaN, Infinity, -Infinity]}"#
        );
        assert_eq!(number_form("NaN"), "NaN");
        // a Decimal is written as its float
        let decimals = Value::Array(vec![
            crate::python::decimal::number("12.345600"),
            crate::python::decimal::number("12"),
            crate::python::decimal::number("NaN"),
        ]);
        assert_eq!(dumps(&decimals), "[12.3456, 12.0, NaN]");
    }
}
