//! The `netbox-outbox` command: parses arguments, runs one command, maps the outcome to an
//! exit code. Everything else lives in the library.

use std::process::ExitCode;

/// mimalloc rather than the C library's allocator: assembly allocates and frees many small JSON
/// values per change, and glibc's malloc spent a third of the sidecar's CPU on them, with its
/// per-thread arenas holding freed memory (docs/benchmarks.md, section 3d). musl's allocator, in
/// the container image, is slower still. `--features system-allocator` builds with the C
/// library's, for heap profilers that intercept malloc (heaptrack, valgrind's massif).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    netbox_outbox::cli::main()
}
