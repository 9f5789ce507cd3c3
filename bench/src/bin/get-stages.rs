//! What `tokctl get NAME` does between its start and its exit, stage by
//! stage, with the same crates and the same calls as tokctl
//! (`ctl/src/direct.rs`: the private socket's connect, the uid check of
//! `served_by_this_user`, then `tokd_shared::direct::get_token`, which
//! sends the handshake and the call in one write and reads the answer).
//! Prints one line of JSON, each stage and its time in microseconds in
//! order; tokd-bench runs it many times and takes the medians. Linked as
//! tokctl is (glibc static) by `bench/run`.
//!
//! Usage: `get-stages NAME` with tokctl's environment (XDG_RUNTIME_DIR).

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let name = std::env::args().nth(1).unwrap_or_else(|| "bench".into());
    let mut marks: Vec<(&str, Instant)> = Vec::new();
    let path = tokd_shared::private_socket_path().ok_or("XDG_RUNTIME_DIR is not set")?;
    let mut stream = std::os::unix::net::UnixStream::connect(&path)?;
    marks.push(("connect", Instant::now()));
    let credentials = rustix::net::sockopt::socket_peercred(&stream)?;
    let uid = rustix::process::getuid();
    if credentials.uid != uid {
        return Err("the socket is another user's".into());
    }
    marks.push(("uid check", Instant::now()));
    let within = Instant::now() + Duration::from_secs(60);
    let (token, _, _, _) =
        tokd_shared::direct::get_token(&mut stream, uid.as_raw(), &name, 60, within, within)
            .map_err(|unanswered| format!("{unanswered:?}"))??;
    marks.push(("call", Instant::now()));
    drop(stream);
    marks.push(("teardown", Instant::now()));
    if token.is_empty() {
        return Err("an empty token".into());
    }
    // An array of [stage, µs] pairs, in the order they happened.
    let mut line = String::from("[");
    let mut before = start;
    for (index, (stage, at)) in marks.iter().enumerate() {
        if index > 0 {
            line.push(',');
        }
        line.push_str(&format!(
            "[\"{stage}\",{:.1}]",
            at.duration_since(before).as_secs_f64() * 1e6
        ));
        before = *at;
    }
    line.push(']');
    #[allow(clippy::print_stdout)] // the result
    {
        println!("{line}");
    }
    Ok(())
}
