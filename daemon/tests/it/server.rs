//! `tokd::run`, the daemon's one entry, driven in-process as `main.rs`
//! drives it (mini-redis's tests call `server::run` the same way): the
//! start order (the object answers as soon as the name is owned, the
//! private socket once it is), a second daemon refused, reload by
//! `Control::Reload`, and a stop while a refresh is in flight (the name is
//! kept until the rotated token is written). The private bus, the
//! emulator and `tokctl` are real; only the process is the test's.

use crate::support::{World, eventually, within_for};
use futures_util::StreamExt;
use std::time::Duration;
use tokd::broker::Options;
use tokd::config::Config;
use tokd::oauth::OAuthClient;
use tokd::server::{Control, RunError, Setup};
use tokd::storage::StateFolder;
use tokd_shared::{BUS_NAME, ManagerProxy};
use tokd_testkit::Behaviour;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

/// A daemon running in this process on the world's bus and home.
struct InProcess {
    control: UnboundedSender<Control>,
    run: JoinHandle<Result<(), RunError>>,
}

/// Builds the daemon's `Setup` from the world's files, as `main.rs` does.
fn setup(world: &World) -> Setup {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = world.home.config_path();
    let runtime = world.home.path().join("runtime");
    std::fs::create_dir_all(&runtime).expect("runtime folder");
    crate::support::set_mode(&runtime, 0o700);
    Setup {
        config: Config::from_path(&path).expect("config"),
        config_path: Some(path),
        state: StateFolder::open(world.home.state_dir()).expect("state folder"),
        http: OAuthClient::new().expect("HTTP client"),
        bus: zbus::connection::Builder::address(world.bus.address()),
        private_socket: Some(runtime.join("tokd/bus")),
        options: Options::default(),
    }
}

/// The in-process daemon's log, printed if the test fails (the test runs
/// on one thread, as tokd does, so every task's lines land here).
struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Log {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        (Self(buffer), tracing::subscriber::set_default(subscriber))
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.0.lock().map(|b| b.clone()).unwrap_or_default();
            eprintln!(
                "the in-process tokd's log:\n{}",
                String::from_utf8_lossy(&text)
            );
        }
    }
}

struct LogWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut buffer) = self.0.lock() {
            buffer.extend_from_slice(bytes);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn spawn(world: &World) -> InProcess {
    let (control, receiver) = tokio::sync::mpsc::unbounded_channel();
    let run = tokio::spawn(tokd::run(setup(world), receiver));
    InProcess { control, run }
}

async fn name_owned(dbus: &zbus::fdo::DBusProxy<'_>) -> bool {
    let name = zbus::names::BusName::try_from(BUS_NAME).expect("name");
    dbus.name_has_owner(name).await.expect("NameHasOwner")
}

// One thread, as tokd runs (its main uses a current-thread runtime).
#[tokio::test]
async fn run_serves_in_order_reloads_and_stops_only_after_the_refresh_in_flight() {
    let (_log, _guard) = Log::capture();
    // Longer than most: a whole daemon's life on the test's own thread.
    within_for(Duration::from_secs(120), async {
        let world = World::prepare(Behaviour::wso2()).await;
        let connection = world.bus.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&connection).await.expect("bus");
        let mut owners = dbus
            .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
            .await
            .expect("NameOwnerChanged");
        let daemon = spawn(&world);

        // The moment the name is owned, the object answers: it was served
        // first.
        let owned = owners.next().await.expect("the name is taken");
        assert!(owned.args().expect("args").new_owner.is_some());
        let proxy = ManagerProxy::new(&connection).await.expect("proxy");
        let listed = proxy.list().await.expect("List answers at once");
        assert_eq!(listed.len(), 4, "{listed:?}");
        // The private socket follows the name.
        let socket = world.home.path().join("runtime/tokd/bus");
        let bound = eventually(Duration::from_secs(10), async || socket.exists()).await;
        assert!(bound, "the private socket is bound once the name is owned");

        // A second daemon on the same bus is refused, and the first serves on.
        let second = spawn(&world);
        let refused = second.run.await.expect("join");
        assert!(
            matches!(
                &refused,
                Err(RunError::Serve(tokd::bus::ServeError::NameTaken))
            ),
            "{refused:?}"
        );
        assert!(name_owned(&dbus).await);

        // tokctl reaches it (the private socket, and the bus for a login).
        world.login("a").await;
        let token = world.get("a").await;
        assert!(world.emulator.access_token_is_valid(&token));

        // Reload, as SIGHUP asks it.
        world
            .home
            .write_config(&world.config("\n[installations.c]\nconsumer = \"acme\"\n"));
        daemon.control.send(Control::Reload).expect("running");
        let reloaded = eventually(Duration::from_secs(10), async || {
            proxy.status("c").await.is_ok()
        })
        .await;
        assert!(reloaded, "Control::Reload did not reload");

        // Stop while a refresh is at the provider: the name stays owned
        // (no successor may refresh with a token being rotated) until the
        // answer is written.
        let old_refresh = world.stored_refresh_token("a");
        let mut hold = world.emulator.hold_next();
        let refresh = tokio::spawn(world.command(&["refresh", "a"]).output());
        hold.arrived().await;
        daemon.control.send(Control::Stop).expect("running");
        let stopping = eventually(Duration::from_secs(10), async || {
            matches!(
                proxy.refresh("bot").await,
                Err(tokd_shared::Error::Stopping(_))
            )
        })
        .await;
        assert!(stopping, "the stop began");
        assert!(
            name_owned(&dbus).await,
            "the name is kept while a refresh is unanswered"
        );
        assert!(!daemon.run.is_finished());
        assert_eq!(world.get("a").await, token, "held tokens are still served");
        hold.release();
        let outcome = daemon.run.await.expect("join");
        assert!(outcome.is_ok(), "{outcome:?}");
        let _ = refresh.await;

        // Written before the name went: the stored refresh token is the
        // rotated, live one.
        let stored = world.stored_refresh_token("a");
        assert_ne!(stored, old_refresh);
        assert!(world.emulator.refresh_token_is_valid(&stored));
        assert!(!name_owned(&dbus).await, "the name is released");
        assert!(!socket.exists(), "the private socket is removed");
    })
    .await;
}
