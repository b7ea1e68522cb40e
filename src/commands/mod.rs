//! The operator commands, one module each; [`crate::cli`] parses the command line and calls them.
//! Only `receive` is public: its request bin serves the tests, benchmarks and demo too.

pub(crate) mod check;
pub(crate) mod config;
pub(crate) mod installed;
pub(crate) mod migrate;
pub mod receive;
pub(crate) mod replay;
pub(crate) mod run;
pub(crate) mod status;
pub(crate) mod test_webhook;
