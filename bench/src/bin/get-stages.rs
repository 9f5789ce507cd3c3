//! What `tokctl get NAME` does between its start and its exit, stage by
//! stage, with the same crates and the same calls as tokctl
//! (`ctl/src/main.rs`: `connect`, `served_by_this_user`, the socket of
//! `tokd_shared::socket`, the proxy, the call): the runtime, the socket's connect, the uid check, the zbus
//! handshake, the proxy, the call, and the teardown. Prints one line of
//! JSON, each stage and its time in microseconds in order; tokd-bench runs it many
//! times and takes the medians. Linked as tokctl is (glibc static) by
//! `bench/run`.
//!
//! Usage: `get-stages NAME` with tokctl's environment (XDG_RUNTIME_DIR).

use std::time::Instant;
use tokd_shared::ManagerProxy;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let name = std::env::args().nth(1).unwrap_or_else(|| "bench".into());
    let mut marks: Vec<(&str, Instant)> = Vec::new();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    marks.push(("runtime", Instant::now()));
    let path = tokd_shared::private_socket_path().ok_or("XDG_RUNTIME_DIR is not set")?;
    let stream = std::os::unix::net::UnixStream::connect(&path)?;
    marks.push(("connect", Instant::now()));
    let credentials = rustix::net::sockopt::socket_peercred(&stream)?;
    if credentials.uid != rustix::process::getuid() {
        return Err("the socket is another user's".into());
    }
    marks.push(("uid check", Instant::now()));
    let token = runtime.block_on(async {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        let connection = zbus::connection::Builder::socket(tokd_shared::socket::NoFdSocket(stream))
            .p2p()
            .build()
            .await?;
        marks.push(("handshake", Instant::now()));
        let proxy = ManagerProxy::builder(&connection)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        marks.push(("proxy", Instant::now()));
        let (token, _, _, _) = proxy.get_token(&name, 60).await?;
        marks.push(("call", Instant::now()));
        drop(proxy);
        drop(connection);
        Ok::<_, Box<dyn std::error::Error>>(token)
    })?;
    drop(runtime);
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
