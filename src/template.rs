//! Jinja2 templates for webhooks (`payload_url`, `additional_headers`, `body_template`),
//! rendered with minijinja configured to behave like NetBox's sandboxed Jinja2 environment:
//! undefined variables print as nothing, values print as Python prints them (`None`, `True`,
//! `{'a': 1}`), `tojson` sorts keys and escapes like Jinja2's, and NetBox's `header_safe` and
//! `env` filters exist.
//!
//! Rendering is bounded ([`Limits`]): a template is a webhook owner's input, and one that loops
//! for ever or writes gigabytes must cost one rejected delivery, not the sidecar.

use std::time::{Duration, Instant};

use minijinja::value::{Value as JValue, ValueKind};
use minijinja::{AutoEscape, Environment, Error as JError, ErrorKind, State, UndefinedBehavior};
use serde_json::Value;

use crate::python::json::{PyNumber, dumps_sorted, float_repr, py_number};

/// A template failed to parse or to render; the message says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// What one template may cost (`[netbox] template_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// minijinja's fuel: about one unit per instruction, so loops that write nothing stop too.
    pub fuel: u64,
    /// Wall-clock time for one template; checked as output is written (fuel is the hard stop).
    pub timeout: Duration,
    /// Bytes of output.
    pub max_bytes: usize,
}

impl Limits {
    pub fn of(config: &crate::config::NetboxConfig) -> Self {
        Limits {
            fuel: config.template_fuel,
            timeout: config.template_timeout,
            max_bytes: config.template_max_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::of(&crate::config::Config::defaults().netbox)
    }
}

/// A template context (a JSON object) as the templates of one request share it: converted to
/// the engine's values on first use.
pub struct Context<'a> {
    json: &'a Value,
    jinja: std::cell::OnceCell<JValue>,
}

impl<'a> Context<'a> {
    pub fn new(json: &'a Value) -> Self {
        Context {
            json,
            jinja: std::cell::OnceCell::new(),
        }
    }

    fn jinja(&self) -> JValue {
        // (a clone of the engine's value shares it)
        self.jinja.get_or_init(|| to_jinja(self.json)).clone()
    }
}

/// The rendering environment, built once.
pub struct Templates {
    env: Environment<'static>,
    limits: Limits,
}

impl Templates {
    /// The environment for a configuration: its `env` patterns and its limits.
    pub fn from_config(config: &crate::config::NetboxConfig) -> Self {
        Templates::new(config.template_environment.clone(), Limits::of(config))
    }

    /// `environment_patterns`: the variables the `env` filter may read (JINJA_ENVIRONMENT_PARAMS).
    pub fn new(environment_patterns: Vec<String>, limits: Limits) -> Self {
        let mut env = Environment::new();
        env.set_fuel(Some(limits.fuel));
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_keep_trailing_newline(false);
        env.set_formatter(|out, _state, value| {
            if value.is_undefined() {
                return Ok(());
            }
            out.write_str(&python_str(value))
                .map_err(|e| JError::new(ErrorKind::WriteFailure, e.to_string()))
        });
        env.add_filter("tojson", tojson);
        env.add_filter("header_safe", |value: JValue| -> String {
            python_str(&value)
                .chars()
                .filter(|c| !matches!(*c as u32, 0x00..=0x1f | 0x7f))
                .collect()
        });
        env.add_filter("env", move |name: String| -> JValue {
            let allowed = environment_patterns.iter().any(|p| glob_match(p, &name));
            match (allowed, std::env::var(&name)) {
                (true, Ok(value)) => JValue::from(value),
                _ => JValue::from(()),
            }
        });
        Templates { env, limits }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Renders `source` with `context` (a JSON object), within the limits.
    #[cfg(test)]
    pub fn render(&self, source: &str, context: &Value) -> Result<String, TemplateError> {
        self.render_in(source, &Context::new(context))
    }

    /// Renders `source` with a context shared by several templates of one request, which is
    /// converted for the template engine once, and only if one of them needs it.
    pub fn render_in(&self, source: &str, context: &Context<'_>) -> Result<String, TemplateError> {
        if self.is_literal(source) {
            // Most payload URLs: rendering would copy the whole event into the engine's values
            // to print the text back unchanged.
            return Ok(source.to_string());
        }
        self.render_template(source, context.jinja())
    }

    /// Whether `source` renders as itself: it has no delimiter (all start with `{`), no line
    /// end (the engine drops a trailing one, as Jinja2 does) and fits the output limit.
    fn is_literal(&self, source: &str) -> bool {
        !source.contains(['{', '\n', '\r']) && source.len() <= self.limits.max_bytes
    }

    fn render_template(&self, source: &str, context: JValue) -> Result<String, TemplateError> {
        let template = self
            .env
            .template_from_str(source)
            .map_err(|e| TemplateError(describe(&e, source)))?;
        let mut out = BoundedOutput {
            bytes: Vec::new(),
            max_bytes: self.limits.max_bytes,
            deadline: Instant::now() + self.limits.timeout,
            exceeded: None,
        };
        match template.render_captured_to(context, &mut out) {
            Ok(_) => String::from_utf8(out.bytes)
                .map_err(|_| TemplateError("the output is not valid UTF-8".into())),
            Err(e) => Err(TemplateError(match (out.exceeded, e.kind()) {
                (Some(Exceeded::Bytes), _) => format!(
                    "the output exceeds {} bytes (netbox.template_max_bytes); render less, or \
                     raise the limit",
                    self.limits.max_bytes
                ),
                (Some(Exceeded::Time), _) => format!(
                    "rendering took longer than {:?} (netbox.template_timeout); simplify the \
                     template, or raise the limit",
                    self.limits.timeout
                ),
                (None, ErrorKind::OutOfFuel) => format!(
                    "rendering used up its budget of {} instructions (netbox.template_fuel): a \
                     loop runs too long{}; simplify the template, or raise the limit",
                    self.limits.fuel,
                    e.line().map(|l| format!(" (line {l})")).unwrap_or_default()
                ),
                (None, _) => describe(&e, source),
            })),
        }
    }

    /// Checks that `source` parses, without rendering it.
    pub fn check(&self, source: &str) -> Result<(), TemplateError> {
        self.env
            .template_from_str(source)
            .map(|_| ())
            .map_err(|e| TemplateError(describe(&e, source)))
    }

    /// The variables `source` reads without setting them, as dotted paths (`data.name`), for
    /// `check` to tell a misspelt root (`dta.name`, which always fails) from a field a sample
    /// event happens to lack.
    pub fn variables(&self, source: &str) -> Vec<String> {
        self.env
            .template_from_str(source)
            .map(|t| t.undeclared_variables(true).into_iter().collect())
            .unwrap_or_default()
    }
}

/// Which limit stopped a rendering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exceeded {
    Bytes,
    Time,
}

/// Collects a rendering's output, failing the write (which stops rendering) past the byte limit
/// or the deadline.
struct BoundedOutput {
    bytes: Vec<u8>,
    max_bytes: usize,
    deadline: Instant,
    exceeded: Option<Exceeded>,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > self.max_bytes {
            self.exceeded = Some(Exceeded::Bytes);
        } else if Instant::now() > self.deadline {
            self.exceeded = Some(Exceeded::Time);
        }
        if self.exceeded.is_some() {
            return Err(std::io::Error::other("template limit exceeded"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A template error in words: the line, what went wrong, and the expression at fault, so
/// `{{ data.site.name }}` failing says which of many expressions it was.
fn describe(error: &JError, source: &str) -> String {
    let mut message = match error.line() {
        Some(line) => format!("line {line}: {}", error.kind()),
        None => error.kind().to_string(),
    };
    if let Some(detail) = error.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    // minijinja points at the failing attribute (`.field`); widen the span back over the
    // dotted path it hangs from, so the message shows `data.site.field`.
    let widened = error.range().map(|range| {
        let before = &source[..range.start.min(source.len())];
        let start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| c.is_alphanumeric() || *c == '_' || *c == '.')
            .last()
            .map_or(range.start, |(i, _)| i);
        start..range.end
    });
    if let Some(range) = widened
        && let Some(expression) = source.get(range)
        && !expression.trim().is_empty()
        && expression.len() <= 200
    {
        message.push_str(&format!(" (in `{}`)", expression.trim()));
    }
    message
}

/// Jinja2's `tojson`: `json.dumps(value, sort_keys=True)` with `<`, `>`, `&` and `'` escaped.
fn tojson(_state: &State<'_, '_>, value: JValue) -> Result<JValue, JError> {
    if holds_decimal(&value) {
        return Err(JError::new(
            ErrorKind::InvalidOperation,
            "tojson: Object of type Decimal is not JSON serializable (a numeric column in `data`, \
             as in NetBox)",
        ));
    }
    let json: Value = serde_json::to_value(&value)
        .map_err(|e| JError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = dumps_sorted(&json)
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\'', "\\u0027");
    Ok(JValue::from_safe_string(text))
}

/// Whether a Decimal is anywhere in `value` (Python's `json.dumps` refuses one).
fn holds_decimal(value: &JValue) -> bool {
    if value.downcast_object_ref::<Decimal>().is_some() {
        return true;
    }
    match value.kind() {
        ValueKind::Seq | ValueKind::Iterable => value
            .try_iter()
            .is_ok_and(|mut items| items.any(|v| holds_decimal(&v))),
        ValueKind::Map => value.try_iter().is_ok_and(|mut keys| {
            keys.any(|k| holds_decimal(&value.get_item(&k).unwrap_or_default()))
        }),
        _ => false,
    }
}

/// A JSON value as a template sees it. Not `Value::from_serialize`: with serde_json's
/// `arbitrary_precision` a number serializes as a private one-field struct. Ints stay ints (exact
/// up to 128 bits; beyond, minijinja has no int, so a [`BigInt`] that prints its digits), floats
/// follow [`py_number`] (`1e400` is `inf`, as after Python's `json.loads`).
pub fn to_jinja(value: &Value) -> JValue {
    match value {
        Value::Null => JValue::from(()),
        Value::Bool(b) => JValue::from(*b),
        Value::Number(n) => match py_number(n.as_str()) {
            PyNumber::Int(digits) => digits
                .parse::<i64>()
                .map(JValue::from)
                .or_else(|_| digits.parse::<i128>().map(JValue::from))
                .or_else(|_| digits.parse::<u128>().map(JValue::from))
                .unwrap_or_else(|_| JValue::from_object(BigInt(digits.to_string()))),
            PyNumber::Float(x) => JValue::from(x),
            PyNumber::Decimal(text, _) => JValue::from_object(Decimal(
                crate::python::decimal::str_of(text, None).unwrap_or_else(|| text.to_string()),
            )),
        },
        Value::String(s) => JValue::from(s.as_str()),
        Value::Array(items) => items.iter().map(to_jinja).collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (JValue::from(k.as_str()), to_jinja(v)))
            .collect(),
    }
}

/// A Python int beyond 128 bits: printed with all its digits, as Python prints it; arithmetic
/// and comparisons on it are not supported (no NetBox template does them on such a number).
#[derive(Debug)]
struct BigInt(String);

impl minijinja::value::Object for BigInt {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Plain
    }

    fn render(self: &std::sync::Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A numeric column's `Decimal` in `data`: printed as Python's `str(Decimal)` (`12.345600`);
/// arithmetic and comparisons on it are not supported, and `tojson` refuses it as Python's
/// `json.dumps` does (NetBox's job fails on such a template).
#[derive(Debug)]
struct Decimal(String);

impl minijinja::value::Object for Decimal {
    fn repr(self: &std::sync::Arc<Self>) -> minijinja::value::ObjectRepr {
        minijinja::value::ObjectRepr::Plain
    }

    fn render(self: &std::sync::Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `str(value)` in Python.
pub fn python_str(value: &JValue) -> String {
    match value.kind() {
        ValueKind::String => value.as_str().unwrap_or_default().to_string(),
        _ => match value.downcast_object_ref::<Decimal>() {
            Some(decimal) => decimal.0.clone(),
            None => python_repr(value),
        },
    }
}

/// `repr(value)` in Python, for the types JSON produces.
pub fn python_repr(value: &JValue) -> String {
    match value.kind() {
        ValueKind::Undefined => String::new(),
        ValueKind::None => "None".into(),
        ValueKind::Bool => if value.is_true() { "True" } else { "False" }.into(),
        ValueKind::Number => {
            if value.is_integer() {
                // i64, or i128/u128 for ints beyond it: their Display is the digits
                value.to_string()
            } else if let Ok(f) = f64::try_from(value.clone()) {
                float_repr(f)
            } else {
                value.to_string()
            }
        }
        ValueKind::String => repr_str(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<String> = value
                .try_iter()
                .map(|it| it.map(|v| python_repr(&v)).collect())
                .unwrap_or_default();
            format!("[{}]", items.join(", "))
        }
        ValueKind::Map => {
            let items: Vec<String> = value
                .try_iter()
                .map(|keys| {
                    keys.map(|k| {
                        let v = value.get_item(&k).unwrap_or_default();
                        format!("{}: {}", python_repr(&k), python_repr(&v))
                    })
                    .collect()
                })
                .unwrap_or_default();
            format!("{{{}}}", items.join(", "))
        }
        _ => match value.downcast_object_ref::<Decimal>() {
            Some(decimal) => format!("Decimal('{}')", decimal.0),
            None => value.to_string(),
        },
    }
}

/// Python's repr of a str: single quotes unless the text holds one and no double quote.
fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// fnmatch-style matching with `*` and `?`, as NetBox matches JINJA_ENVIRONMENT_PARAMS.
fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some('*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some('?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(source: &str, context: Value) -> Result<String, TemplateError> {
        Templates::new(vec!["NBO_TEST_*".into()], Limits::default()).render(source, &context)
    }

    #[test]
    fn text_without_delimiters_is_returned_as_the_engine_would_render_it() {
        let templates = Templates::new(Vec::new(), Limits::default());
        let context = json!({"data": {"id": 1}});
        for text in [
            "",
            "https://receiver.example/hook",
            "http://10.0.0.1:8080/a%20b?x=1&y=%7D#frag",
            "100% } %} #} ## -%",
            "  spaced \t text  ",
            "ünïcödé/путь",
        ] {
            assert!(templates.is_literal(text), "{text:?}");
            assert_eq!(
                templates.render(text, &context).unwrap(),
                templates.render_template(text, to_jinja(&context)).unwrap(),
                "{text:?}"
            );
        }
        // Line ends and delimiters go through the engine: a trailing line end is dropped, as
        // Jinja2 drops it, and text over the output limit is refused.
        for text in ["http://a/\n", "http://a/\r\n", "{{ data.id }}", "{# c #}x"] {
            assert!(!templates.is_literal(text), "{text:?}");
        }
        assert_eq!(
            templates.render("http://a/\n", &context).unwrap(),
            "http://a/"
        );
        assert_eq!(templates.render("x{# c #}", &context).unwrap(), "x");
        let small = Templates::new(
            Vec::new(),
            Limits {
                max_bytes: 4,
                ..Limits::default()
            },
        );
        assert!(small.render("12345", &context).is_err());
        assert_eq!(small.render("1234", &context).unwrap(), "1234");
    }

    #[test]
    fn values_print_as_python_prints_them() {
        let context = json!({"n": null, "t": true, "f": 1.5, "i": 3, "s": "x",
                             "d": {"a": 1, "b": [null, false, "it's"]}, "l": []});
        assert_eq!(
            render("{{ n }}|{{ t }}|{{ f }}|{{ i }}|{{ s }}", context.clone()).unwrap(),
            "None|True|1.5|3|x"
        );
        assert_eq!(
            render("{{ d }}", context.clone()).unwrap(),
            "{'a': 1, 'b': [None, False, \"it's\"]}"
        );
        assert_eq!(render("{{ l }}", context).unwrap(), "[]");
    }

    #[test]
    fn numbers_print_as_python_prints_them_after_json_loads() {
        let context: Value = serde_json::from_str(
            r#"{"big": 18446744073709551617, "inf": 1e400, "dec": 1.50, "f": 2.0, "i": 7, "huge": 1000000000000000000000000000000000000000000}"#,
        )
        .unwrap();
        assert_eq!(
            render(
                "{{ big }}|{{ inf }}|{{ dec }}|{{ f }}|{{ i }}|{{ big + 1 }}|{{ huge }}|{{ [huge] }}",
                context
            )
            .unwrap(),
            "18446744073709551617|inf|1.5|2.0|7|18446744073709551618|\
             1000000000000000000000000000000000000000000|[1000000000000000000000000000000000000000000]"
        );
    }

    /// A numeric column's Decimal: `str()` keeps the column's scale, `repr()` names the type,
    /// `tojson` fails as `json.dumps` does on a Decimal (NetBox's job fails).
    #[test]
    fn decimals_print_as_python_prints_them() {
        let mut data = serde_json::Map::new();
        data.insert(
            "latitude".into(),
            crate::netbox::format::decimal_rest(&serde_json::from_str("12.345600").unwrap()),
        );
        data.insert(
            "weight".into(),
            crate::netbox::format::decimal_rest(&json!("NaN")),
        );
        let mut context = serde_json::Map::new();
        context.insert("data".into(), Value::Object(data));
        let context = Value::Object(context);
        assert_eq!(
            render(
                "{{ data.latitude }}|{{ data.weight }}|{{ data }}",
                context.clone()
            )
            .unwrap(),
            "12.345600|NaN|{'latitude': Decimal('12.345600'), 'weight': Decimal('NaN')}"
        );
        assert!(render("{{ data | tojson }}", context).is_err());
    }

    #[test]
    fn undefined_prints_nothing_but_its_attributes_fail() {
        assert_eq!(
            render("[{{ username }}{{ model }}]", json!({})).unwrap(),
            "[]"
        );
        let err = render("{{ nothing.here }}", json!({})).unwrap_err();
        assert!(err.0.contains("undefined"), "{err}");
    }

    #[test]
    fn tojson_sorts_keys_and_escapes_like_jinja2() {
        let out = render(
            "{{ d | tojson }}",
            json!({"d": {"b": "<a&'é>", "a": [1, 2.0]}}),
        )
        .unwrap();
        assert_eq!(
            out,
            r#"{"a": [1, 2.0], "b": "\u003ca\u0026\u0027\u00e9\u003e"}"#
        );
    }

    #[test]
    fn netbox_filters() {
        assert_eq!(
            render(
                "{{ v | header_safe }}",
                json!({"v": "a\r\nX-Evil: 1\u{7f}"})
            )
            .unwrap(),
            "aX-Evil: 1"
        );
        let templates = Templates::new(vec!["HO?E".into()], Limits::default());
        let home = std::env::var("HOME").unwrap_or_default();
        assert_eq!(
            templates.render("{{ 'HOME' | env }}", &json!({})).unwrap(),
            home
        );
        assert_eq!(
            templates.render("{{ 'PATH' | env }}", &json!({})).unwrap(),
            "None"
        );
    }

    #[test]
    fn errors_say_where() {
        let err = render("{% if %}", json!({})).unwrap_err();
        assert!(err.0.starts_with("line 1: syntax error"), "{err}");
        let err = render("{{ a | nosuchfilter }}", json!({"a": 1})).unwrap_err();
        assert!(err.0.contains("unknown filter"), "{err}");
        assert!(
            Templates::new(vec![], Limits::default())
                .check("{% for %}")
                .is_err()
        );
    }

    fn limited(fuel: u64, max_bytes: usize) -> Templates {
        Templates::new(
            vec![],
            Limits {
                fuel,
                timeout: Duration::from_secs(60),
                max_bytes,
            },
        )
    }

    #[test]
    fn a_runaway_loop_runs_out_of_fuel() {
        let nested =
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}";
        let started = Instant::now();
        let err = limited(100_000, 1 << 20)
            .render(nested, &json!({}))
            .unwrap_err();
        assert!(err.0.contains("netbox.template_fuel"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // the default budget stops it too
        let err = Templates::new(vec![], Limits::default())
            .render(nested, &json!({}))
            .unwrap_err();
        assert!(err.0.contains("netbox.template_fuel"), "{err}");
        // an ordinary template is far within it
        assert!(
            limited(10_000, 1 << 20)
                .render(
                    "{% for k, v in d|items %}{{ k }}={{ v }};{% endfor %}",
                    &json!({"d": {"a": 1, "b": 2}})
                )
                .is_ok()
        );
    }

    #[test]
    fn output_is_capped() {
        let err = limited(1 << 40, 1000)
            .render(
                "{% for i in range(100000) %}xxxxxxxxxx{% endfor %}",
                &json!({}),
            )
            .unwrap_err();
        assert!(
            err.0.contains("1000 bytes (netbox.template_max_bytes)"),
            "{err}"
        );
        assert_eq!(
            limited(1 << 40, 10)
                .render("0123456789", &json!({}))
                .unwrap(),
            "0123456789"
        );
    }

    #[test]
    fn the_timeout_stops_a_slow_writer() {
        let templates = Templates::new(
            vec![],
            Limits {
                fuel: 1 << 40,
                timeout: Duration::from_millis(1),
                max_bytes: usize::MAX,
            },
        );
        let err = templates
            .render(
                "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
                &json!({}),
            )
            .unwrap_err();
        assert!(err.0.contains("netbox.template_timeout"), "{err}");
    }
}
