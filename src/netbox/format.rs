//! Value formats: PostgreSQL's text forms (as `row_to_json` writes them, in a UTC session)
//! turned into the forms NetBox's REST serializer and snapshot encoder produce.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::python::json::float_repr;

/// A UTC timestamp split into its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub date: (i64, u32, u32),
    pub time: (u32, u32, u32),
    pub micros: u32,
}

impl Timestamp {
    /// Parses `YYYY-MM-DD[T ]HH:MM:SS[.ffffff][+00:00|Z]` (PostgreSQL's ISO output). Offsets
    /// other than UTC are applied.
    pub fn parse(text: &str) -> Option<Timestamp> {
        let text = text.trim();
        if text.len() < 19 {
            return None;
        }
        let year: i64 = text.get(0..4)?.parse().ok()?;
        let month: u32 = text.get(5..7)?.parse().ok()?;
        let day: u32 = text.get(8..10)?.parse().ok()?;
        let hour: u32 = text.get(11..13)?.parse().ok()?;
        let minute: u32 = text.get(14..16)?.parse().ok()?;
        let second: u32 = text.get(17..19)?.parse().ok()?;
        let mut rest = &text[19..];
        let mut micros = 0;
        if let Some(fraction) = rest.strip_prefix('.') {
            let digits: String = fraction.chars().take_while(char::is_ascii_digit).collect();
            rest = &fraction[digits.len()..];
            let padded = format!("{digits:0<6}");
            micros = padded[..6].parse().ok()?;
        }
        let offset_seconds: i64 = match rest {
            "" | "Z" | "+00" | "+00:00" => 0,
            other => {
                let sign = if other.starts_with('-') { -1 } else { 1 };
                let body = &other[1..];
                let (h, m) = match body.split_once(':') {
                    Some((h, m)) => (h.parse::<i64>().ok()?, m.parse::<i64>().ok()?),
                    None if body.len() == 4 => (body[..2].parse().ok()?, body[2..].parse().ok()?),
                    None => (body.parse().ok()?, 0),
                };
                sign * (h * 3600 + m * 60)
            }
        };
        let ts = Timestamp {
            date: (year, month, day),
            time: (hour, minute, second),
            micros,
        };
        if offset_seconds == 0 {
            Some(ts)
        } else {
            Some(Timestamp::from_unix(
                ts.unix_seconds() - offset_seconds,
                micros,
            ))
        }
    }

    fn unix_seconds(&self) -> i64 {
        let (y, m, d) = self.date;
        let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * m as i64 + 2) / 5 + d as i64 - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146097 + doe - 719468;
        days * 86400 + (self.time.0 * 3600 + self.time.1 * 60 + self.time.2) as i64
    }

    pub fn from_unix(seconds: i64, micros: u32) -> Timestamp {
        let days = seconds.div_euclid(86400);
        let secs = seconds.rem_euclid(86400) as u32;
        // civil from days (Howard Hinnant)
        let z = days + 719468;
        let era = z.div_euclid(146097);
        let doe = z - era * 146097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
        let y = yoe + era * 400;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Timestamp {
            date: (if m <= 2 { y + 1 } else { y }, m, d),
            time: (secs / 3600, secs / 60 % 60, secs % 60),
            micros,
        }
    }

    pub fn from_system_time(t: SystemTime) -> Timestamp {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        Timestamp::from_unix(since.as_secs() as i64, since.subsec_micros())
    }

    fn base(&self) -> String {
        let (y, mo, d) = self.date;
        let (h, mi, s) = self.time;
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}")
    }

    /// Python's `isoformat()` of an aware UTC datetime: microseconds unless zero, `+00:00`.
    pub fn isoformat(&self) -> String {
        if self.micros == 0 {
            format!("{}+00:00", self.base())
        } else {
            format!("{}.{:06}+00:00", self.base(), self.micros)
        }
    }

    /// DRF's DateTimeField in UTC: isoformat with `Z`.
    pub fn rest(&self) -> String {
        if self.micros == 0 {
            format!("{}Z", self.base())
        } else {
            format!("{}.{:06}Z", self.base(), self.micros)
        }
    }

    /// Django's JSON encoder: cut to milliseconds, `Z`.
    pub fn snapshot(&self) -> String {
        if self.micros == 0 {
            format!("{}Z", self.base())
        } else {
            format!("{}.{:03}Z", self.base(), self.micros / 1000)
        }
    }
}

/// NetBox's `timestamp`: `timezone.now().isoformat()`.
pub fn timestamp_now() -> String {
    Timestamp::from_system_time(SystemTime::now()).isoformat()
}

/// A datetime column's value in the REST form, or null.
pub fn datetime_rest(value: &Value) -> Value {
    match value.as_str().and_then(Timestamp::parse) {
        Some(ts) => Value::String(ts.rest()),
        None => value.clone(),
    }
}

/// A datetime column's value in the snapshot form.
pub fn datetime_snapshot(value: &Value) -> Value {
    match value.as_str().and_then(Timestamp::parse) {
        Some(ts) => Value::String(ts.snapshot()),
        None => value.clone(),
    }
}

/// A numeric column in the REST form: DRF's quantized `Decimal`, which the default body writes
/// as `float(Decimal)` (`12.3456`, `12.0`, and for a NaN, the only non-finite value a
/// `numeric(p, s)` column holds, the bare token `NaN`) and a body template prints as `str()`
/// (`12.345600`); see [`crate::python::decimal`]. PostgreSQL's JSON has no NaN, so the row
/// carries it as the string `"NaN"`.
pub fn decimal_rest(value: &Value) -> Value {
    let literal = match value {
        Value::Number(n) => n.as_str(),
        Value::String(s) => s.as_str(),
        _ => return value.clone(),
    };
    match crate::python::decimal::str_of(literal, None) {
        Some(_) => crate::python::decimal::number(literal),
        None => value.clone(),
    }
}

/// A numeric column in the snapshot form: `str(Decimal)` of the value as the database holds it
/// (Django's encoder writes a Decimal as `str()`): the column's scale (`"12.345600"`), exact at any
/// size, scientific below 1e-6 as Python writes it (`"1E-7"`), `"NaN"` for a NaN.
pub fn decimal_snapshot(value: &Value, scale: Option<u32>) -> Value {
    let literal = match value {
        Value::Number(n) => n.as_str(),
        Value::String(s) => s.as_str(),
        _ => return value.clone(),
    };
    match crate::python::decimal::str_of(literal, scale) {
        Some(text) => Value::String(text),
        None => match literal.parse::<f64>() {
            Ok(f) if f.is_nan() => Value::String("NaN".into()),
            Ok(f) if f.is_infinite() => {
                Value::String(if f > 0.0 { "Infinity" } else { "-Infinity" }.into())
            }
            Ok(f) => Value::String(float_repr(f)),
            Err(_) => value.clone(),
        },
    }
}

/// An IP address with its prefix length, as NetBox always writes it (PostgreSQL drops /32 and
/// /128 on inet values).
pub fn inet(value: &Value) -> Value {
    match value.as_str() {
        Some(s) if !s.contains('/') => {
            let length = if s.contains(':') { 128 } else { 32 };
            Value::String(format!("{s}/{length}"))
        }
        _ => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn datetimes_in_netbox_forms() {
        let ts = Timestamp::parse("2026-11-24T22:45:01.203664+00:00").unwrap();
        assert_eq!(ts.rest(), "2026-11-24T22:45:01.203664Z");
        assert_eq!(ts.snapshot(), "2026-11-24T22:45:01.203Z");
        assert_eq!(ts.isoformat(), "2026-11-24T22:45:01.203664+00:00");
        let trimmed = Timestamp::parse("2026-11-24T22:45:01.2+00:00").unwrap();
        assert_eq!(trimmed.rest(), "2026-11-24T22:45:01.200000Z");
        assert_eq!(trimmed.snapshot(), "2026-11-24T22:45:01.200Z");
        let whole = Timestamp::parse("2026-11-24 22:45:01+00").unwrap();
        assert_eq!(whole.rest(), "2026-11-24T22:45:01Z");
        assert_eq!(whole.snapshot(), "2026-11-24T22:45:01Z");
        let shifted = Timestamp::parse("2026-01-01T01:30:00.5+02:00").unwrap();
        assert_eq!(shifted.rest(), "2025-12-31T23:30:00.500000Z");
        let t = Timestamp::from_unix(784111777, 7);
        assert_eq!(t.isoformat(), "1994-11-06T08:49:37.000007+00:00");
    }

    #[test]
    fn decimals_and_addresses() {
        assert_eq!(
            crate::python::json::dumps(&decimal_rest(&json!(12.3456))),
            "12.3456"
        );
        assert_eq!(
            decimal_snapshot(&json!(12.3456), Some(6)),
            json!("12.345600")
        );
        assert_eq!(decimal_snapshot(&json!(12), Some(1)), json!("12.0"));
        assert_eq!(decimal_snapshot(&Value::Null, Some(1)), Value::Null);
        assert_eq!(decimal_rest(&Value::Null), Value::Null);
        assert_eq!(inet(&json!("192.0.2.1")), json!("192.0.2.1/32"));
        assert_eq!(inet(&json!("2001:db8::1")), json!("2001:db8::1/128"));
        assert_eq!(inet(&json!("192.0.2.1/24")), json!("192.0.2.1/24"));
    }

    fn number(literal: &str) -> Value {
        serde_json::from_str(literal).unwrap()
    }

    /// What NetBox sends for a numeric column, by `python3 -c` over `Decimal(text)`:
    /// `json.dumps(float(d))` in `data`, `str(d)` in snapshots and `str()` (display).
    #[test]
    fn decimals_as_python_writes_them() {
        use crate::python::json::dumps;
        let cases = [
            // row_to_json text, data, snapshot (scale 6)
            ("12.345600", "12.3456", "12.345600"),
            ("-0.000100", "-0.0001", "-0.000100"),
            ("0.000000", "0.0", "0.000000"),
            (
                "1234567890.123456",
                "1234567890.123456",
                "1234567890.123456",
            ),
            (
                "9999999999.999999",
                "9999999999.999998",
                "9999999999.999999",
            ),
            ("12", "12.0", "12.000000"),
        ];
        for (text, data, snapshot) in cases {
            assert_eq!(dumps(&decimal_rest(&number(text))), data, "{text}");
            assert_eq!(
                decimal_snapshot(&number(text), Some(6)),
                json!(snapshot),
                "{text}"
            );
        }
        // beyond f64's digits the snapshot keeps every digit; data is the nearest float
        let wide = "123456789012345678901234567890.12";
        assert_eq!(decimal_snapshot(&number(wide), Some(2)), json!(wide));
        assert_eq!(
            dumps(&decimal_rest(&number(wide))),
            "1.2345678901234568e+29"
        );
        // scale 0: str(Decimal("42")) is "42", float is 42.0
        assert_eq!(decimal_snapshot(&number("42"), Some(0)), json!("42"));
        assert_eq!(dumps(&decimal_rest(&number("42"))), "42.0");
        // below 1e-6 Python's str() turns scientific
        assert_eq!(
            decimal_snapshot(&number("0.0000001"), Some(7)),
            json!("1E-7")
        );
        assert_eq!(
            decimal_snapshot(&number("0.00000012"), Some(8)),
            json!("1.2E-7")
        );
        assert_eq!(
            decimal_snapshot(&number("0.0000000"), Some(7)),
            json!("0E-7")
        );
        assert_eq!(
            decimal_snapshot(&number("-0.0000010"), Some(7)),
            json!("-0.0000010")
        );
        // a NaN column: row_to_json writes the string "NaN"; DRF keeps Decimal("NaN") through
        // quantize, the encoder writes float("nan") as the bare token
        assert_eq!(dumps(&decimal_rest(&json!("NaN"))), "NaN");
        assert_eq!(decimal_snapshot(&json!("NaN"), Some(6)), json!("NaN"));
    }
}
