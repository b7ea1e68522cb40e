//! The operator commands, one module each; [`crate::cli`] parses the command line and calls them.

pub mod check;
pub mod config;
pub mod migrate;
pub mod receive;
pub mod replay;
pub mod run;
pub mod status;
pub mod test_webhook;
