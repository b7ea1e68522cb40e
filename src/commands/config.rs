//! `netbox-outbox config`: prints a configuration file with every setting, its default and what
//! it does.

use crate::cli::exit;

pub fn print() -> u8 {
    print!("{}", crate::config::DEFAULT_TOML);
    exit::OK
}
