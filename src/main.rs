//! The `netbox-outbox` command: parses arguments, runs one command, maps the outcome to an
//! exit code. Everything else lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    netbox_outbox::cli::main()
}
