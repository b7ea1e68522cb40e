//! `netbox-outbox receive`: a local request bin that prints every webhook it gets (or only a
//! count per second, for load tests). The request bin itself ([`request_bin`]) is also the
//! receiver of the integration tests, the benchmarks and the demo.

pub mod request_bin;

pub use self::request_bin::{Received, Receiver, Reply, TooFew};

use crate::cli::{Failure, exit};

/// A request bin: prints each webhook as it arrives.
pub async fn receive(
    listen: std::net::SocketAddr,
    secret: Option<String>,
    status: u16,
    quiet: bool,
) -> Result<u8, Failure> {
    let receiver = Receiver::bind(listen)
        .await
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot listen on {listen}: {e}")))?;
    receiver.default_reply(Reply::Status(status));
    eprintln!("listening on http://{} (Ctrl-C to stop)", receiver.addr);
    if quiet {
        receiver.keep_nothing();
        let mut last = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                    let total = receiver.count();
                    println!("{total} {}", total - last);
                    last = total;
                }
            }
        }
    }
    let mut shown = 0;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(exit::OK),
            got = receiver.wait_for(shown + 1, std::time::Duration::from_secs(3600)) => {
                let got = got.unwrap_or_else(|too_few| too_few.arrived);
                for r in &got[shown..] {
                    println!("---- {} {}", r.method, r.path);
                    for (name, value) in &r.headers {
                        println!("{name}: {value}");
                    }
                    if let Some(secret) = &secret {
                        println!("# signature {}", if r.signature_valid(secret) { "valid" } else { "INVALID" });
                    }
                    println!();
                    println!("{}", String::from_utf8_lossy(&r.body));
                }
                shown = got.len();
            }
        }
    }
}
