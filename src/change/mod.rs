//! The captured change, as the sidecar reads it: a row image ([`Row`]) and an object's history
//! in a batch, merged per transaction ([`history`]). The assembler builds these from
//! `netbox_outbox.change`; the renderer reads them. Both depend on this module, never on each
//! other.

pub mod history;

pub use self::history::{Action, RemovedLink, Row, TxChange};

/// Parses a `row_to_json` text into a map; None for null or anything else.
pub fn parse_row(text: Option<&str>) -> Option<Row> {
    match serde_json::from_str(text?) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Quotes an SQL identifier (a table or column name read from NetBox's catalogue or schema).
pub fn quote_ident(name: &str) -> String {
    postgres_protocol::escape::escape_identifier(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("dcim_device"), "\"dcim_device\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
