//! Sleep and clock jumps, with the daemon in-process and an injectable
//! clock: after the wall clock jumps past expiry (a laptop that slept), the
//! scheduler refreshes at once and `get` never hands out an expired token.

use crate::support::within;
use std::sync::Arc;
use std::time::Duration;
use tokd::broker::{Broker, Event, Options};
use tokd::config::Config;
use tokd::oauth::OAuthClient;
use tokd::schedule::Clock;
use tokd::storage::{StateFolder, Storage};
use tokd_shared::InstallationState;
use tokd_testkit::{Behaviour, Emulator, Home};

const HOUR: Duration = Duration::from_secs(3600);

/// The broker in-process on `config`, keeping its state in `home`, and
/// the events it sends.
fn broker(
    config: Config,
    home: &Home,
    options: Options,
) -> (
    std::sync::Arc<Broker>,
    tokio::sync::mpsc::UnboundedReceiver<Event>,
) {
    let (events, heard) = tokio::sync::mpsc::unbounded_channel();
    let broker = Broker::start(
        config,
        None,
        Arc::new(Storage::new(
            StateFolder::open(home.state_dir()).expect("state folder"),
            None,
        )),
        OAuthClient::new().expect("client"),
        events,
        options,
    );
    (broker, heard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_jump_past_expiry_tokens_are_refreshed_at_once_and_never_served_expired() {
    within(async {
        let emulator = Emulator::start(Behaviour::wso2()).await;
        emulator.register_client("clock-client", "clock-secret");
        let home = Home::new();
        let secret = home.write_secret("secret", "clock-secret");
        let consumer =
            emulator.consumer_table("p", "clock-client", &secret, "http://127.0.0.1:9/callback");
        let config = Config::from_str(&format!(
            r#"{consumer}
[installations.used]
consumer = "p"
grant = "client_credentials"

[installations.idle]
consumer = "p"
grant = "client_credentials"
"#
        ))
        .expect("config");
        let clock = Clock::default();
        let (broker, mut heard) = broker(
            config,
            &home,
            Options {
                clock: clock.clone(),
                // The real cap is a minute; the rule is the same.
                check_cap: Duration::from_millis(100),
                ..Options::default()
            },
        );
        broker.start_schedules();

        let mut used = broker
            .get_token("used", Duration::from_secs(60))
            .await
            .expect("first token");
        broker
            .get_token("idle", Duration::from_secs(60))
            .await
            .expect("first token");
        let lifetime = used
            .expires_at
            .and_then(|at| at.duration_since(clock.now()).ok())
            .expect("an expiry");
        assert!(lifetime > HOUR / 2, "{lifetime:?}");

        for round in 0..5 {
            while heard.try_recv().is_ok() {}
            // The machine wakes up two hours later.
            clock.jump(2 * HOUR);
            let now = clock.now();
            assert!(used.expires_at.is_some_and(|at| at < now));

            // The first get after the jump, even asking for no validity at
            // all, never gets the expired token.
            let fresh = broker
                .get_token("used", Duration::ZERO)
                .await
                .expect("a token after the jump");
            assert!(
                fresh.expires_at.is_some_and(|at| at > clock.now()),
                "round {round}: {:?} is not after {:?}",
                fresh.expires_at,
                clock.now()
            );
            assert_ne!(fresh.access_token.expose(), used.access_token.expose());
            assert!(emulator.access_token_is_valid(fresh.access_token.expose()));
            used = fresh;

            // Nobody asks for `idle`: the scheduler, reading the wall
            // clock after its capped sleep, refreshes it by itself.
            let refreshed = loop {
                match heard.recv().await.expect("events") {
                    Event::TokenRefreshed { name, expires_at } if name == "idle" => {
                        break expires_at;
                    }
                    _ => {}
                }
            };
            assert!(refreshed.is_some_and(|at| at > now), "round {round}");
            let status = broker.status("idle").expect("status");
            assert_eq!(status.state, InstallationState::Valid);
            let expires_at = status.expires_at.expect("an expiry");
            assert!(expires_at > now, "round {round}");
        }
        broker.stop(Duration::from_secs(5)).await;
    })
    .await;
}

/// The wall clock set back an hour: the provider expires a token on its
/// own clock, and tokd, by the monotonic deadline it keeps beside the
/// wall-clock expiry, does not serve it although the wall clock says it
/// has an hour left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_clock_is_set_back_an_expired_token_is_not_served() {
    within(async {
        let mut behaviour = Behaviour::wso2();
        behaviour.access_lifetime = Duration::from_secs(3);
        let emulator = Emulator::start(behaviour).await;
        emulator.register_client("clock-client", "clock-secret");
        let home = Home::new();
        let secret = home.write_secret("secret", "clock-secret");
        let consumer =
            emulator.consumer_table("p", "clock-client", &secret, "http://127.0.0.1:9/callback");
        let config = Config::from_str(&format!(
            "{consumer}\n[installations.used]\nconsumer = \"p\"\ngrant = \"client_credentials\"\n"
        ))
        .expect("config");
        let clock = Clock::default();
        let (broker, _heard) = broker(
            config,
            &home,
            Options {
                clock: clock.clone(),
                ..Options::default()
            },
        );
        let first = broker
            .get_token("used", Duration::ZERO)
            .await
            .expect("a token");
        clock.jump_back(HOUR);
        let expired = async {
            while emulator.access_token_is_valid(first.access_token.expose()) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), expired)
            .await
            .expect("the provider expires it");
        let fresh = broker
            .get_token("used", Duration::ZERO)
            .await
            .expect("a token");
        assert_ne!(fresh.access_token.expose(), first.access_token.expose());
        assert!(emulator.access_token_is_valid(fresh.access_token.expose()));
        broker.stop(Duration::from_secs(5)).await;
    })
    .await;
}

/// A login nobody finishes: its listener stops listening after the login
/// timeout (ten minutes in tokd, shortened here), and its state no longer
/// works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_login_closes_its_listener_after_the_timeout() {
    within(async {
        let home = Home::new();
        let secret = home.write_secret("secret", "s");
        let port = tokd_testkit::free_port();
        let consumer = format!(
            r#"[consumers.p]
token_url = "http://127.0.0.1:9/token"
auth_url = "http://127.0.0.1:9/authorize"
client_id = "c"
client_secret_file = "{}"
redirect_uri = "http://127.0.0.1:{port}/callback"

[installations.a]
consumer = "p"
"#,
            secret.display()
        );
        let (events, _heard) = tokio::sync::mpsc::unbounded_channel();
        let broker = Broker::start(
            Config::from_str(&consumer).expect("config"),
            None,
            Arc::new(Storage::new(
                StateFolder::open(home.state_dir()).expect("state folder"),
                None,
            )),
            OAuthClient::new().expect("client"),
            events,
            Options {
                login_timeout: Duration::from_millis(500),
                ..Options::default()
            },
        );
        let (url, listening) = broker.begin_login("a", None).await.expect("login starts");
        assert!(listening);
        let state = url
            .query_pairs()
            .find(|(key, _)| key == "state")
            .map(|(_, value)| value.into_owned())
            .expect("a state");
        let address = format!("127.0.0.1:{port}");
        // Listening now…
        tokio::net::TcpStream::connect(&address)
            .await
            .expect("the listener accepts while the login is pending");
        // …and, with nobody answering, closed after the timeout.
        let closed = async {
            while tokio::net::TcpStream::connect(&address).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), closed)
            .await
            .expect("the listener closes after the login timeout");
        // The expired login's state is not honoured by a new listener
        // either: a later login listens again, and the old state is refused.
        let (_, listening) = broker.begin_login("a", None).await.expect("login again");
        assert!(listening);
        let stale = raw_get(&address, &format!("/callback?code=x&state={state}")).await;
        assert!(stale.starts_with("HTTP/1.1 400"), "{stale}");
        broker.stop(Duration::from_secs(5)).await;
    })
    .await;
}

/// One GET over a plain socket; returns the whole answer.
async fn raw_get(address: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("answer");
    answer
}
