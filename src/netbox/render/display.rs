//! `display` (NetBox's `str(obj)`), evaluated from the catalogue's display specs: templates of
//! `{expression}` placeholders over the row, its related rows (`refs`) and sub-templates
//! (`vars`), with a few Python string filters. See tools/catalogue/README.md, "Display specs".

use serde_json::Value;

use super::Renderer;
use crate::change::Row;
use crate::netbox::catalogue::{
    ColumnFormat, Display, DisplayFilter, DisplayKind, DisplayRef, Model,
};
use crate::netbox::lookup::{Found, RelatedKey};

/// `str(obj)` of a row of `model`.
pub fn display(r: &mut Renderer<'_>, name: &str, model: &Model, row: &Row) -> String {
    let spec = &model.display;
    let mut ctx = Ctx { name, row, spec };
    match spec.kind {
        DisplayKind::Template => ctx.template(r, spec.template.as_deref().unwrap_or_default()),
        DisplayKind::Cases => {
            for case in &spec.cases {
                if case.when.iter().all(|e| ctx.truthy(r, e)) {
                    return ctx.template(r, &case.template);
                }
            }
            String::new()
        }
    }
}

/// What NetBox's base `Model.__str__` prints.
fn fallback(name: &str, row: &Row) -> String {
    let class = name.split('.').nth(1).unwrap_or(name);
    let id = row.get("id").map(py_str).unwrap_or_default();
    format!("{class} object ({id})")
}

struct Ctx<'a> {
    name: &'a str,
    row: &'a Row,
    spec: &'a Display,
}

/// A resolved expression base.
enum Base {
    /// A raw column value with its format and scale.
    Column(Value, Option<ColumnFormat>, Option<u32>),
    /// A referenced object: present or not, and its display.
    Object(Option<String>),
    Text(String),
}

impl Ctx<'_> {
    fn template(&mut self, r: &mut Renderer<'_>, template: &str) -> String {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                out.push_str(&rest[start..]);
                return out;
            };
            let expression = &rest[start + 1..start + end];
            out.push_str(&self.eval(r, expression));
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        out
    }

    fn split(expression: &str) -> (&str, Vec<&str>) {
        let mut parts = expression.split('|');
        let base = parts.next().unwrap_or_default();
        (base, parts.collect())
    }

    fn eval(&mut self, r: &mut Renderer<'_>, expression: &str) -> String {
        let (base, filters) = Self::split(expression);
        let resolved = self.base(r, base);
        let mut text = match &resolved {
            Base::Column(value, format, scale) => column_str(value, *format, *scale),
            Base::Object(display) => display.clone().unwrap_or_else(|| "None".into()),
            Base::Text(t) => t.clone(),
        };
        for filter in filters {
            text = self.filter(r, filter, &resolved, text);
        }
        text
    }

    fn truthy(&mut self, r: &mut Renderer<'_>, expression: &str) -> bool {
        let (base, filters) = Self::split(expression);
        if !filters.is_empty() || base.starts_with('$') {
            return !self.eval(r, expression).is_empty();
        }
        match self.base(r, base) {
            Base::Column(value, ..) => crate::python::value::truthy(&value),
            Base::Object(display) => display.is_some(),
            Base::Text(t) => !t.is_empty(),
        }
    }

    fn base(&mut self, r: &mut Renderer<'_>, base: &str) -> Base {
        if let Some(var) = base.strip_prefix('$') {
            let template = self.spec.vars.get(var).cloned().unwrap_or_default();
            return Base::Text(self.template(r, &template));
        }
        if let Some(path) = base.strip_prefix('=') {
            return Base::Object(self.resolve(r, path).map(|(name, row)| {
                match r.catalogue.model(&name) {
                    Some(model) => display(r, &name, model, &row),
                    None => content_type_display(&name, &row),
                }
            }));
        }
        match base.rsplit_once('.') {
            Some((path, column)) => match self.resolve(r, path) {
                Some((name, row)) => {
                    let (format, scale) = column_format(r, &name, column);
                    Base::Column(
                        row.get(column).cloned().unwrap_or(Value::Null),
                        format,
                        scale,
                    )
                }
                None => Base::Column(Value::Null, None, None),
            },
            None => {
                let (format, scale) = column_format(r, self.name, base);
                Base::Column(
                    self.row.get(base).cloned().unwrap_or(Value::Null),
                    format,
                    scale,
                )
            }
        }
    }

    /// Follows a ref path (`a`, `a.b`) to (model name, row).
    fn resolve(&self, r: &mut Renderer<'_>, path: &str) -> Option<(String, Row)> {
        let spec = self.spec.refs.get(path)?;
        let (parent_name, parent_row) = match path.rsplit_once('.') {
            Some((prefix, _)) => self.resolve(r, prefix)?,
            None => (self.name.to_string(), self.row.clone()),
        };
        match spec {
            DisplayRef::Fk { column, model } => {
                let id = parent_row.get(column)?.as_i64()?;
                let model = model.clone();
                if model == "contenttypes.contenttype" {
                    let name = r.netbox.object_type(id as i32)?;
                    let mut row = Row::new();
                    let (app, m) = name.split_once('.')?;
                    row.insert("app_label".into(), Value::from(app));
                    row.insert("model".into(), Value::from(m));
                    return Some((model, row));
                }
                let row = r.row_of(&model, id)?;
                Some((model, row))
            }
            DisplayRef::Gfk {
                ct_column,
                id_column,
            } => {
                let ct = parent_row.get(ct_column)?.as_i64()?;
                let id = parent_row.get(id_column)?.as_i64()?;
                let model = r.netbox.object_type(ct as i32)?;
                let row = r.row_of(&model, id)?;
                Some((model, row))
            }
            DisplayRef::FirstRelated {
                model: model_name,
                ct_column,
                id_column,
                ct_model,
                order_by: order,
            } => {
                let model = r.catalogue.model(model_name)?;
                let ct = r
                    .netbox
                    .content_type_id(ct_model.as_deref().unwrap_or(&parent_name))?;
                let id = parent_row.get("id")?.as_i64()?;
                let key = RelatedKey {
                    table: model.table.clone(),
                    column: id_column.clone(),
                    content_type: Some((ct_column.clone(), ct)),
                };
                let mut rows = match r.lookups.related(&key, id) {
                    Found::Yes(rows) => rows.to_vec(),
                    Found::Missing => {
                        r.needs.related.insert((key, id));
                        return None;
                    }
                };
                rows.sort_by(|a, b| {
                    for o in order {
                        let x = a.get(&o.column).unwrap_or(&Value::Null);
                        let y = b.get(&o.column).unwrap_or(&Value::Null);
                        let ord =
                            crate::python::value::cmp(x, y).unwrap_or(std::cmp::Ordering::Equal);
                        let ord = if o.desc { ord.reverse() } else { ord };
                        if ord.is_ne() {
                            return ord;
                        }
                    }
                    std::cmp::Ordering::Equal
                });
                let first = rows.into_iter().next()?;
                Some((model_name.clone(), first))
            }
        }
    }

    fn filter(&mut self, r: &mut Renderer<'_>, filter: &str, base: &Base, text: String) -> String {
        let arg = filter.split_once(':').map_or("", |(_, arg)| arg);
        let Some(known) = DisplayFilter::of(filter) else {
            // refused when the catalogue loads (Catalogue::check)
            r.problems
                .push(format!("{} display: unknown filter `{filter}`", self.name));
            return text;
        };
        match known {
            DisplayFilter::Label => {
                let value = match base {
                    Base::Column(v, ..) => v.clone(),
                    _ => Value::String(text.clone()),
                };
                r.catalogue
                    .choice_label(arg, &value)
                    .map(str::to_string)
                    .unwrap_or(text)
            }
            DisplayFilter::Replace => {
                let (old, new) = arg.split_once(':').unwrap_or((arg, ""));
                text.replace(old, new)
            }
            DisplayFilter::Capitalize => {
                let mut chars = text.chars();
                match chars.next() {
                    Some(first) => first
                        .to_uppercase()
                        .chain(chars.flat_map(char::to_lowercase))
                        .collect(),
                    None => text,
                }
            }
            DisplayFilter::Basename => text.rsplit('/').next().unwrap_or_default().to_string(),
            DisplayFilter::Removeprefix => {
                let prefix = match arg.strip_prefix('$') {
                    Some(_) => match self.base(r, arg) {
                        Base::Text(t) => t,
                        _ => String::new(),
                    },
                    None => arg.to_string(),
                };
                text.strip_prefix(&prefix)
                    .map(str::to_string)
                    .unwrap_or(text)
            }
            DisplayFilter::Localdate => text.get(0..10).unwrap_or(&text).to_string(),
            DisplayFilter::LocaltimeHm => match crate::netbox::format::Timestamp::parse(&text) {
                Some(ts) => format!("{:02}:{:02}", ts.time.0, ts.time.1),
                None => text,
            },
            DisplayFilter::AsnWithAsdot => match text.parse::<u64>() {
                Ok(n) if n >= 65536 => format!("{n} ({}.{})", n / 65536, n % 65536),
                _ => text,
            },
            DisplayFilter::IpRangeName => {
                let end = match self.base(r, arg) {
                    Base::Column(v, f, s) => column_str(&v, f, s),
                    _ => String::new(),
                };
                ip_range_name(&text, &end)
            }
            DisplayFilter::PythonModuleName => {
                let file = text.rsplit('/').next().unwrap_or_default();
                if file == "__init__.py" {
                    text.rsplit('/').nth(1).unwrap_or_default().to_string()
                } else {
                    file.rsplit_once('.')
                        .map_or(file, |(stem, _)| stem)
                        .to_string()
                }
            }
        }
    }
}

/// A column's format and scale, from the catalogue.
fn column_format(
    r: &Renderer<'_>,
    model: &str,
    column: &str,
) -> (Option<ColumnFormat>, Option<u32>) {
    r.catalogue
        .model(model)
        .and_then(|m| m.columns.get(column))
        .map_or((None, None), |c| (c.format, c.scale))
}

/// `str()` of a Django value from its row form.
fn column_str(value: &Value, format: Option<ColumnFormat>, scale: Option<u32>) -> String {
    match (value, format) {
        (Value::Null, _) => "None".into(),
        (_, Some(ColumnFormat::Decimal)) => {
            match crate::netbox::format::decimal_snapshot(value, scale) {
                Value::String(s) => s,
                other => py_str(&other),
            }
        }
        (_, Some(ColumnFormat::Inet)) => py_str(&crate::netbox::format::inet(value)),
        (Value::String(s), Some(ColumnFormat::Mac)) => s.to_uppercase(),
        (_, Some(ColumnFormat::Datetime)) => match value
            .as_str()
            .and_then(crate::netbox::format::Timestamp::parse)
        {
            // str(datetime) uses a space and +00:00
            Some(ts) => ts.isoformat().replacen('T', " ", 1),
            None => py_str(value),
        },
        _ => py_str(value),
    }
}

/// Python's `str()` of a JSON value.
fn py_str(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match crate::python::json::py_number(n.as_str()) {
            crate::python::json::PyNumber::Float(f) => crate::python::json::float_repr(f),
            crate::python::json::PyNumber::Decimal(text, _) => {
                crate::python::decimal::str_of(text, None).unwrap_or_else(|| text.to_string())
            }
            crate::python::json::PyNumber::Int(_) => crate::python::json::number_form(n.as_str()),
        },
        other => crate::template::python_str(&crate::template::to_jinja(other)),
    }
}

fn content_type_display(name: &str, row: &Row) -> String {
    if name == "contenttypes.contenttype" {
        let app = row
            .get("app_label")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let model = row.get("model").and_then(Value::as_str).unwrap_or_default();
        return format!("{app} | {model}");
    }
    fallback(name, row)
}

/// NetBox's IPRange name (see the catalogue README): chunks equal at the same position, then the
/// rest of each side.
fn ip_range_name(start: &str, end: &str) -> String {
    let (start_ip, length) = start.split_once('/').unwrap_or((start, ""));
    let end_ip = end.split_once('/').map_or(end, |(ip, _)| ip);
    if start_ip == end_ip {
        return format!("{start_ip}-{end_ip}/{length}");
    }
    let sep = if start_ip.contains(':') { ':' } else { '.' };
    let a: Vec<&str> = start_ip.split(sep).collect();
    let b: Vec<&str> = end_ip.split(sep).collect();
    let base: Vec<&str> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x == y)
        .map(|(x, _)| *x)
        .collect();
    let sep_s = sep.to_string();
    let prefix = base.join(&sep_s);
    format!(
        "{prefix}{sep}{}-{}/{length}",
        a[base.len().min(a.len())..].join(&sep_s),
        b[base.len().min(b.len())..].join(&sep_s)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_strings_are_pythons() {
        assert_eq!(
            column_str(&Value::from(12.5), Some(ColumnFormat::Decimal), Some(2)),
            "12.50"
        );
        assert_eq!(
            column_str(&Value::from("10.0.0.1"), Some(ColumnFormat::Inet), None),
            "10.0.0.1/32"
        );
        assert_eq!(column_str(&Value::Null, None, None), "None");
        assert_eq!(column_str(&Value::from(true), None, None), "True");
        assert_eq!(
            column_str(&Value::from("aa:bb"), Some(ColumnFormat::Mac), None),
            "AA:BB"
        );
    }

    #[test]
    fn ip_range_names_keep_every_equal_chunk() {
        assert_eq!(ip_range_name("10.0.0.1/24", "10.0.1.1/24"), "10.0.1.1-1/24");
        assert_eq!(
            ip_range_name("10.0.0.1/24", "10.0.0.1/24"),
            "10.0.0.1-10.0.0.1/24"
        );
        assert_eq!(
            ip_range_name("10.0.0.10/24", "10.0.0.20/24"),
            "10.0.0.10-20/24"
        );
    }
}
