//! The operator commands beyond `run` and `migrate`.

pub mod check;
pub mod replay;
pub mod status;
pub mod test_webhook;
