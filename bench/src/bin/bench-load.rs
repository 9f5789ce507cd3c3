//! The load generator: `GetToken` calls from C connections with K calls in
//! flight on each, either for a while (throughput) or as one burst of N
//! calls sent at once (latency spread). Prints one JSON object.
//!
//! Connections go to the bus at `--address` (addressed to `--dest`), or
//! peer to peer to the socket at `--p2p PATH`.

use clap::Parser;
use std::time::{Duration, Instant};
use tokd_shared::{INTERFACE, OBJECT_PATH};

#[derive(Debug, Parser)]
struct Args {
    /// A D-Bus address (`unix:path=…`) of the bus.
    #[arg(long, required_unless_present = "p2p")]
    address: Option<String>,
    /// The private socket of a tokd instead of a bus.
    #[arg(long)]
    p2p: Option<std::path::PathBuf>,
    /// The well-known name to call on the bus.
    #[arg(long, default_value = tokd_shared::BUS_NAME)]
    dest: String,
    /// The installation asked for.
    #[arg(long, default_value = "bench")]
    name: String,
    #[arg(long, default_value_t = 60)]
    min_valid: u32,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Calls in flight per connection (throughput mode).
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
    /// Throughput mode: how long to call.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Burst mode: this many calls at once, spread over the connections.
    #[arg(long)]
    burst: Option<usize>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let output = runtime.block_on(run(args))?;
    #[allow(clippy::print_stdout)] // the result
    {
        println!("{output}");
    }
    Ok(())
}

async fn connect(args: &Args) -> zbus::Result<zbus::Connection> {
    match (&args.p2p, &args.address) {
        (Some(path), _) => {
            let stream = std::os::unix::net::UnixStream::connect(path)?;
            zbus::connection::Builder::unix_stream(stream)
                .p2p()
                .build()
                .await
        }
        (None, Some(address)) => {
            zbus::connection::Builder::address(address.as_str())
                .build()
                .await
        }
        (None, None) => Err(zbus::Error::Address("no address".into())),
    }
}

async fn call(connection: &zbus::Connection, args: &Args, min_valid: u32) -> zbus::Result<usize> {
    let destination = args.p2p.is_none().then_some(args.dest.as_str());
    let reply = connection
        .call_method(
            destination,
            OBJECT_PATH,
            Some(INTERFACE),
            "GetToken",
            &(args.name.as_str(), min_valid),
        )
        .await?;
    let (token, _, _, _): (String, i64, String, String) = reply.body().deserialize()?;
    Ok(token.len())
}

async fn run(args: Args) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let mut connections = Vec::new();
    for _ in 0..args.connections.max(1) {
        connections.push(connect(&args).await?);
    }
    // One call each first: connections warmed, the answer checked. It
    // asks for the default validity, so that a burst still finds the
    // token in need of a refresh.
    for connection in &connections {
        call(connection, &args, 60).await?;
    }
    let args = std::rc::Rc::new(args);
    let local = tokio::task::LocalSet::new();
    let result = match args.burst {
        Some(count) => local.run_until(burst(&connections, &args, count)).await?,
        None => local.run_until(throughput(&connections, &args)).await?,
    };
    Ok(result)
}

/// Calls answered per second with `in_flight` callers per connection.
async fn throughput(
    connections: &[zbus::Connection],
    args: &std::rc::Rc<Args>,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let end = Instant::now() + Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut callers = Vec::new();
    for connection in connections {
        for _ in 0..args.in_flight {
            let connection = connection.clone();
            let args = args.clone();
            callers.push(tokio::task::spawn_local(async move {
                let mut calls = 0u64;
                while Instant::now() < end {
                    call(&connection, &args, args.min_valid).await?;
                    calls += 1;
                }
                Ok::<u64, zbus::Error>(calls)
            }));
        }
    }
    let mut calls = 0;
    for caller in callers {
        calls += caller.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(
        serde_json::json!({ "calls": calls, "seconds": seconds, "per_second": calls as f64 / seconds }),
    )
}

/// `count` calls sent together; each one's latency in microseconds.
async fn burst(
    connections: &[zbus::Connection],
    args: &std::rc::Rc<Args>,
    count: usize,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let callers: Vec<_> = (0..count)
        .map(|i| {
            let connection = connections[i % connections.len()].clone();
            let args = args.clone();
            tokio::task::spawn_local(async move {
                let sent = Instant::now();
                call(&connection, &args, args.min_valid).await?;
                Ok::<u128, zbus::Error>(sent.elapsed().as_micros())
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for caller in callers {
        latencies.push(caller.await??);
    }
    Ok(serde_json::json!({
        "latencies_us": latencies,
        "wall_us": start.elapsed().as_micros(),
    }))
}
