//! The Python behaviour NetBox's webhooks depend on, reproduced for JSON values: equality and
//! ordering for conditions, `json.dumps` for default bodies, `repr` for templates.

pub mod decimal;
pub mod json;
pub mod value;
