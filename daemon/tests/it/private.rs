//! The private socket, `$XDG_RUNTIME_DIR/tokd/bus`: the same interface
//! peer to peer, for this user only, tried first by tokctl, with the
//! session bus behind it.

use crate::support::{World, mode, within};
use std::path::PathBuf;
use tokd_testkit::Behaviour;

fn socket(world: &World) -> PathBuf {
    world
        .home
        .path()
        .join("runtime")
        .join(tokd_shared::PRIVATE_SOCKET)
}

/// `tokctl ARGS` with the session bus out of reach: only the private
/// socket can answer.
async fn tokctl_without_bus(world: &World, args: &[&str]) -> std::process::Output {
    world
        .command(args)
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent/bus")
        .output()
        .await
        .expect("run tokctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokctl_is_answered_over_the_private_socket_without_the_bus() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let path = socket(&world);
        assert_eq!(mode(&path), 0o600, "the socket is for this user only");
        assert_eq!(mode(path.parent().expect("folder")), 0o700);
        assert!(world.log().contains("serving on the private socket"));

        // A client that never authenticates and one that sends garbage
        // hold up nobody else.
        let _silent = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        {
            use std::io::Write;
            let mut garbage = std::os::unix::net::UnixStream::connect(&path).expect("connect");
            garbage
                .write_all(b"\0AUTH NONSENSE\r\nGET / HTTP/1.1\r\n\r\n\xff\xfe")
                .expect("write");
        }
        let out = tokctl_without_bus(&world, &["get", "bot"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}\nlog:\n{}", world.log());
        let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(world.emulator.access_token_is_valid(&token));
        // The same token over the bus: one daemon behind both.
        assert_eq!(world.get("bot").await, token);
        let list = tokctl_without_bus(&world, &["list", "--json"]).await;
        assert!(list.status.success());
        assert!(String::from_utf8_lossy(&list.stdout).contains("\"bot\""));

        // The same interface for any D-Bus client that connects there.
        let stream = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        let connection = zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .build()
            .await
            .expect("a peer-to-peer connection");
        let proxy = tokd_shared::ManagerProxy::new(&connection)
            .await
            .expect("proxy");
        let (p2p_token, expires_at, token_type, warning) =
            proxy.get_token("bot", 60).await.expect("GetToken");
        assert_eq!(p2p_token, token);
        assert!(expires_at > 0);
        assert_eq!(token_type, "bearer");
        assert!(warning.is_empty());
        let error = proxy
            .get_token("nope", 60)
            .await
            .expect_err("an unknown installation");
        assert!(
            error.to_string().contains("UnknownInstallation") || error.to_string().contains("nope"),
            "{error}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_live_socket_tokctl_falls_back_to_the_bus() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let path = socket(&world);
        // Gone altogether.
        std::fs::remove_file(&path).expect("remove the socket");
        let token = world.get("bot").await;
        assert!(world.emulator.access_token_is_valid(&token));
        let out = tokctl_without_bus(&world, &["get", "bot"]).await;
        assert_eq!(out.status.code(), Some(7), "neither socket nor bus");
        // A stale socket that nobody listens on, as a killed tokd leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        assert!(path.exists());
        assert_eq!(world.get("bot").await, token);
        // A socket that takes the connection and never finishes the
        // handshake (a stopped tokd): the bus answers once the handshake's
        // time is up, and the call sent with the handshake is not answered
        // twice.
        std::fs::remove_file(&path).expect("remove the stale socket");
        let stuck = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert_eq!(world.get("bot").await, token);
        // A listener with its queue full (a stopped tokd that many clients
        // tried): connect itself would wait for ever.
        drop(stuck);
        std::fs::remove_file(&path).expect("remove the stuck socket");
        let (_full, queued) = full_listener(&path);
        assert!(!queued.is_empty());
        assert_eq!(world.get("bot").await, token);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tokd_replaces_a_stale_socket_and_removes_its_own_when_it_stops() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        let path = socket(&world);
        world.tokd().kill();
        assert!(path.exists(), "SIGKILL leaves the socket behind");
        world.start_tokd().await;
        let out = tokctl_without_bus(&world, &["get", "bot"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = world.tokd().terminate();
        assert!(status.success(), "{status}");
        assert!(!path.exists(), "a clean stop removes the socket");
    })
    .await;
}

/// A listener at `path` that never accepts, with a queue of one, and the
/// connections that filled it (kept open; a small queue keeps within an
/// ordinary user's limit of open files).
fn full_listener(path: &std::path::Path) -> (std::os::fd::OwnedFd, Vec<std::os::fd::OwnedFd>) {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket,
    };
    use std::os::fd::AsRawFd as _;
    let address = UnixAddr::new(path).expect("address");
    let unix = |flags| socket(AddressFamily::Unix, SockType::Stream, flags, None).expect("socket");
    let listener = unix(SockFlag::SOCK_CLOEXEC);
    bind(listener.as_raw_fd(), &address).expect("bind");
    listen(&listener, Backlog::new(1).expect("backlog")).expect("listen");
    let mut queued = Vec::new();
    loop {
        let fd = unix(SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC);
        match connect(fd.as_raw_fd(), &address) {
            Ok(()) => queued.push(fd),
            Err(nix::errno::Errno::EAGAIN) => return (listener, queued),
            Err(error) => panic!("connect: {error}"),
        }
        assert!(queued.len() < 100, "the queue never filled");
    }
}
