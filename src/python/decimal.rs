//! Python's `decimal.Decimal` as NetBox's numeric columns reach a webhook: `str()` of the value
//! the database holds, and the JSON number that stands for a Decimal inside `data`.
//!
//! DRF leaves a numeric column in `serializer.data` as a `Decimal`; the default body writes it as
//! `float(Decimal)`, but a body template sees the Decimal itself (`{{ data.latitude }}` prints
//! `12.345600`, not `12.3456`). So `data` carries such a value as a number whose literal is the
//! database's text behind a `d` ([`number`]): [`crate::python::json::py_number`] reads it as a
//! Decimal, `dumps` writes its float, templates print its `str()`.

use serde_json::{Number, Value};

/// The marker in front of a Decimal's text inside a number literal.
pub const MARK: char = 'd';

/// A JSON number standing for `Decimal(text)`; `text` is PostgreSQL's numeric text (`12.345600`,
/// `NaN`).
pub fn number(text: &str) -> Value {
    // serde_json has no public constructor for a number it did not parse; with
    // `arbitrary_precision` a Number is its literal, and only this crate's writers and readers
    // (python::json, python::value, template) see it. `json!`/`to_value` would re-parse and
    // refuse it: values holding one are only cloned (the unit tests in python::json check both).
    Value::Number(Number::from_string_unchecked(format!("{MARK}{text}")))
}

/// `str(Decimal(text))` for PostgreSQL's numeric text (`-123.4500`, no exponent, or `NaN`),
/// padded to `scale` fractional digits as the column stores it; `None` for any other text.
/// Python writes the coefficient plainly while the adjusted exponent is at least -6, else in
/// scientific form (`1E-7`, `0E-7`).
pub fn str_of(text: &str, scale: Option<u32>) -> Option<String> {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return Some(text.to_string());
    }
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, mut fraction) = match unsigned.split_once('.') {
        Some((w, f)) => (w, f.to_string()),
        None => (unsigned, String::new()),
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if let Some(scale) = scale {
        while fraction.len() < scale as usize {
            fraction.push('0');
        }
    }
    let digits = format!("{whole}{fraction}");
    let coefficient = digits.trim_start_matches('0');
    let coefficient = if coefficient.is_empty() {
        "0"
    } else {
        coefficient
    };
    let exponent = -(fraction.len() as i64);
    let adjusted = exponent + coefficient.len() as i64 - 1;
    let sign = if negative { "-" } else { "" };
    if adjusted >= -6 {
        let whole = whole.trim_start_matches('0');
        let whole = if whole.is_empty() { "0" } else { whole };
        return Some(if fraction.is_empty() {
            format!("{sign}{whole}")
        } else {
            format!("{sign}{whole}.{fraction}")
        });
    }
    let (first, rest) = coefficient.split_at(1);
    let point = if rest.is_empty() { "" } else { "." };
    Some(format!("{sign}{first}{point}{rest}E{adjusted}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_as_python_writes_it() {
        // python3 -c 'from decimal import Decimal as D; print(str(D(text)))'
        let cases = [
            ("12.345600", "12.345600"),
            ("-0.000100", "-0.000100"),
            ("0.000000", "0.000000"),
            ("42", "42"),
            ("0.0000001", "1E-7"),
            ("0.00000012", "1.2E-7"),
            ("0.0000000", "0E-7"),
            ("-0.0000010", "-0.0000010"),
            (
                "123456789012345678901234567890.12",
                "123456789012345678901234567890.12",
            ),
            ("NaN", "NaN"),
        ];
        for (text, want) in cases {
            assert_eq!(str_of(text, None).as_deref(), Some(want), "{text}");
        }
        assert_eq!(str_of("12", Some(2)).as_deref(), Some("12.00"));
        assert_eq!(str_of("1e5", None), None);
        assert_eq!(str_of("abc", None), None);
    }
}
