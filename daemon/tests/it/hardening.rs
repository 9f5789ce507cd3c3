//! What an adversarial review found, each as the attack or fault that
//! showed it: another local user at the login listener and in the runtime
//! folder, planted state files, a provider answering garbage or slowly, a
//! secret command that floods or leaks, a stopped tokd.

use crate::support::{
    CLIENT_ID, SECRET, World, bash_as_nobody, browse, browser, eventually, everything_in, mode,
    open_descriptors, query_value, set_mode, tokd_bin, within, within_for,
};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokd_testkit::{Behaviour, Fault, FaultBody, Mangle, Tokd};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Unix seconds now.
fn now() -> i64 {
    tokd::schedule::unix_seconds(std::time::SystemTime::now())
}

/// A connection this test holds to a listener: whether tokd closed it.
fn closed_by_peer(stream: &tokio::net::TcpStream) -> bool {
    let mut buffer = [0u8; 64];
    match stream.try_read(&mut buffer) {
        Ok(_) => true,
        Err(error) => error.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// 1,100 connections from another uid to the login listener, and 100
/// silent ones from tokd's own uid: tokd closes the other uid's at once,
/// keeps at most 8 of its own user's (closing them when no header comes),
/// keeps answering other installations, and the owner's login completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: floods the login listener as another local user (setpriv to nobody)"]
async fn a_flood_of_callback_connections_is_capped_and_stalls_nothing() {
    within_for(Duration::from_secs(120), async {
        let world = World::start(Behaviour::wso2()).await;
        let (child, url) = world.begin_login("a").await;
        let pid = world.tokd.as_ref().expect("tokd").pid();
        let before = open_descriptors(pid);

        let port = world.port;
        let mut flood = bash_as_nobody(&format!(
            "ulimit -n 4096; for i in $(seq 1100); do exec {{fd}}<>/dev/tcp/127.0.0.1/{port} || exit 1; done; echo held; sleep 120"
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the flood");
        let mut held = String::new();
        BufReader::new(flood.stdout.take().expect("stdout"))
            .read_line(&mut held)
            .await
            .expect("the flood's line");
        assert_eq!(held.trim(), "held", "the other user opened them all");

        let mut mine = Vec::new();
        for _ in 0..100 {
            mine.push(
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect"),
            );
        }
        let capped = eventually(Duration::from_secs(30), async || {
            mine.iter().filter(|s| closed_by_peer(s)).count()
                >= mine.len() - tokd::login::MAX_CONNECTIONS
        })
        .await;
        assert!(capped, "tokd kept more than its cap open");
        let during = open_descriptors(pid);
        assert!(
            during <= before + tokd::login::MAX_CONNECTIONS + 4,
            "descriptors went from {before} to {during}"
        );
        // Other installations are answered all along.
        assert!(
            world
                .emulator
                .access_token_is_valid(&world.get("bot").await)
        );
        // The silent ones are closed when no header comes.
        let all_closed = eventually(Duration::from_secs(30), async || {
            mine.iter().all(closed_by_peer)
        })
        .await;
        assert!(all_closed, "a connection without a header stayed open");
        // The owner's browser still gets through.
        world.finish_login(child, &url).await;
        let log = world.log();
        assert!(
            log.contains("refused a login answer from another user's connection"),
            "{log}"
        );
        // Once per listener, not once per connection.
        assert!(
            log.matches("refused a login answer").count() <= 2,
            "the refusals flooded the log"
        );
        let _ = flood.kill().await;
    })
    .await;
}

/// Another uid reads the `state` (it is in `xdg-open`'s arguments) and
/// answers first: with an error, with nothing, with its own code. None of
/// it is answered or ends the login; the owner's answer then works, and
/// the installation holds the owner's grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: plays another local user (setpriv to nobody)"]
async fn another_user_can_neither_end_nor_take_a_pending_login() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let (mut child, url) = world.begin_login("a").await;
        let state = query_value(&url, "state");
        let callback = format!("http://127.0.0.1:{}/callback", world.port);
        let attackers_code = world
            .emulator
            .issue_code(CLIENT_ID, &["read"], Some(&callback), None);
        for query in [
            format!("state={state}&error=access_denied&error_description=nope"),
            format!("state={state}"),
            format!("state={state}&code={attackers_code}"),
        ] {
            let out = bash_as_nobody(&format!(
                "exec 3<>/dev/tcp/127.0.0.1/{}; printf 'GET /callback?{query} HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' >&3; cat <&3",
                world.port
            ))
            .output()
            .await
            .expect("bash");
            assert!(
                out.stdout.is_empty(),
                "another user was answered: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        assert!(child.try_wait().expect("try_wait").is_none(), "login ended");
        assert_eq!(world.emulator.counters().authorization_code, 0);
        // The owner's own browser without a code does not use the login up.
        let empty = browser()
            .get(format!("{callback}?state={state}"))
            .send()
            .await
            .expect("answer");
        assert_eq!(empty.status().as_u16(), 400);
        world.finish_login(child, &url).await;
        assert_eq!(world.emulator.grant_count(), 1, "only the owner's grant");
        assert_eq!(world.emulator.counters().authorization_code, 1);
    })
    .await;
}

/// `localhost` is listened on at 127.0.0.1 and ::1; a browser using either
/// gets through; with ::1 taken by someone else the login refuses to start
/// instead of leaving the answer to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_is_listened_on_at_both_loopback_addresses() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let port = tokd_testkit::free_port();
        let secret = world.home.write_secret("acme.secret", SECRET);
        let local = world.emulator.consumer_table(
            "local",
            CLIENT_ID,
            &secret,
            &format!("http://localhost:{port}/callback"),
        );
        world.home.write_config(&world.config(&format!(
            "\n{local}\n[installations.l]\nconsumer = \"local\"\nscopes = [\"read\"]\n"
        )));
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);

        let (child, url) = world.begin_login("l").await;
        for address in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
            tokio::net::TcpStream::connect(&address)
                .await
                .unwrap_or_else(|e| panic!("{address} is not listened on: {e}"));
        }
        // A browser that resolves localhost to ::1.
        let location = browse(&url)
            .await
            .replace(&format!("localhost:{port}"), &format!("[::1]:{port}"));
        let page = browser().get(&location).send().await.expect("answer");
        assert!(page.text().await.expect("page").contains("Logged in"));
        let output = child.wait_with_output().await.expect("tokctl login");
        assert!(output.status.success(), "{output:?}");

        let squatter = std::net::TcpListener::bind(("::1", port)).expect("take ::1");
        let out = world.tokctl(&["login", "l", "--no-browser"]).await;
        assert_eq!(out.status, 6, "{out:?}");
        assert!(
            out.stderr.contains("is taken by another program"),
            "{out:?}"
        );
        drop(squatter);
    })
    .await;
}

/// tokd serves the private socket only in a runtime folder that is the
/// user's alone, never follows a symlinked `tokd` folder (nor chmods its
/// target), and removes only a socket at `tokd/bus`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_socket_needs_a_private_runtime_folder() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        let runtime = world.home.path().join("runtime");
        let restart = async |world: &mut World| {
            world.tokd = None;
            world.tokd =
                Some(Tokd::start_without_socket(&tokd_bin(), &world.home, &world.bus, &[]).await);
        };

        // A runtime folder others may write to.
        std::fs::remove_dir_all(&runtime).expect("clean");
        std::fs::create_dir(&runtime).expect("runtime");
        set_mode(&runtime, 0o1777);
        restart(&mut world).await;
        let logged = async |world: &World, text: &str| {
            eventually(Duration::from_secs(20), async || world.log().contains(text)).await
        };
        assert!(logged(&world, "has mode 1777").await, "{}", world.log());
        assert!(world.log().contains("no private socket"), "{}", world.log());
        assert!(!runtime.join("tokd").exists(), "tokd used it");
        assert_eq!(
            world.tokctl(&["status", "a"]).await.status,
            0,
            "the bus serves"
        );

        // `tokd` a symlink to a folder elsewhere.
        set_mode(&runtime, 0o700);
        let elsewhere = world.home.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("elsewhere");
        set_mode(&elsewhere, 0o755);
        std::os::unix::fs::symlink(&elsewhere, runtime.join("tokd")).expect("symlink");
        restart(&mut world).await;
        assert!(logged(&world, "is a symlink").await, "{}", world.log());
        assert_eq!(mode(&elsewhere), 0o755, "the target was changed");
        assert!(!elsewhere.join("bus").exists());

        // Something that is not a socket at `tokd/bus`.
        std::fs::remove_file(runtime.join("tokd")).expect("unlink");
        std::fs::create_dir(runtime.join("tokd")).expect("tokd");
        set_mode(&runtime.join("tokd"), 0o700);
        std::fs::write(runtime.join("tokd/bus"), "keep").expect("a file");
        restart(&mut world).await;
        assert!(logged(&world, "is not a socket").await, "{}", world.log());
        assert_eq!(
            std::fs::read_to_string(runtime.join("tokd/bus")).expect("kept"),
            "keep"
        );
    })
    .await;
}

/// The squatter: when `TOKD_IT_SQUAT` is set, this test is the process of
/// another user who bound `tokd/bus` in a runtime folder anyone may write
/// to. It records every byte it receives.
fn squat_if_asked() -> bool {
    let Ok(path) = std::env::var("TOKD_IT_SQUAT") else {
        return false;
    };
    let record = std::env::var("TOKD_IT_SQUAT_RECORD").expect("a record file");
    let folder = Path::new(&path).parent().expect("folder");
    std::fs::create_dir_all(folder).expect("tokd folder");
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    #[allow(clippy::print_stdout)] // how the child tells its parent
    {
        println!("TOKD-SQUATTING");
    }
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut received = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stream, &mut received);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&record)
            .expect("record");
        file.write_all(&received).expect("write");
    }
    true
}

/// Under a runtime folder anyone may write to, another user serves
/// `tokd/bus` first. tokctl sees the socket's owner, sends it nothing and
/// uses the bus; the code it carries reaches tokd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: serves a socket as another local user (setpriv to nobody)"]
async fn tokctl_sends_nothing_to_a_socket_another_user_serves() {
    if squat_if_asked() {
        return;
    }
    within(async {
        let mut world = World::start(Behaviour::bitbucket_classic()).await;
        let runtime = world.home.path().join("runtime");
        std::fs::remove_dir_all(&runtime).expect("clean");
        std::fs::create_dir(&runtime).expect("runtime");
        set_mode(&runtime, 0o1777);
        world.tokd = None;
        world.tokd =
            Some(Tokd::start_without_socket(&tokd_bin(), &world.home, &world.bus, &[]).await);
        // The home is 0700 from tempfile; let the other user reach the
        // runtime folder in it.
        set_mode(world.home.path(), 0o711);
        let record = world.home.path().join("squatted");
        std::fs::write(&record, "").expect("record");
        set_mode(&record, 0o666);
        let test = "hardening::tokctl_sends_nothing_to_a_socket_another_user_serves";
        let mut squatter = tokio::process::Command::new("setpriv")
            .args(&crate::support::as_nobody()[1..])
            .arg(std::env::current_exe().expect("test binary"))
            // (--include-ignored: this test is ignored unless run as root.)
            .args(["--exact", test, "--include-ignored", "--nocapture"])
            .arg("--test-threads=1")
            .env("TOKD_IT_SQUAT", runtime.join("tokd/bus"))
            .env("TOKD_IT_SQUAT_RECORD", &record)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the squatter");
        let mut lines = BufReader::new(squatter.stdout.take().expect("stdout")).lines();
        let mut squatting = false;
        while let Some(line) = lines.next_line().await.expect("line") {
            if line.contains("TOKD-SQUATTING") {
                squatting = true;
                break;
            }
        }
        assert!(squatting, "the squatter never bound the socket");

        let out = world.tokctl(&["login", "m", "--no-browser"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        let code = query_value(&browse(out.stdout.trim()).await, "code");
        let done = world.tokctl(&["login", "m", "--code", &code]).await;
        assert_eq!(done.status, 0, "{done:?}\n{}", world.log());
        assert!(done.stderr.contains("served by uid 65534"), "{done:?}");
        let get = world.tokctl(&["get", "m"]).await;
        assert_eq!(get.status, 0, "{get:?}");
        assert_eq!(get.stderr.matches("served by uid").count(), 1, "{get:?}");
        assert!(world.emulator.access_token_is_valid(get.stdout.trim()));
        let _ = squatter.kill().await;
        let received = std::fs::read(&record).expect("record");
        assert!(
            received.is_empty(),
            "the squatter got {} bytes",
            received.len()
        );
    })
    .await;
}

/// State files are read without following symlinks, only when they are
/// the user's own, and not at all when their loose mode cannot be fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: plants a file owned by another user (chown) and makes one immutable (chattr +i)"]
async fn planted_or_unfixable_state_files_are_not_served() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        world.login("b").await;
        world.get("bot").await;
        assert!(world.tokd().terminate().success());
        let state = world.home.state_dir();

        // `a`: owned by another uid (planted while the folder was loose).
        std::os::unix::fs::chown(state.join("a.json"), Some(65534), Some(65534)).expect("chown");
        // `b`: a symlink to a readable copy elsewhere.
        let elsewhere = world.home.path().join("b-elsewhere.json");
        std::fs::copy(state.join("b.json"), &elsewhere).expect("copy");
        set_mode(&elsewhere, 0o644);
        std::fs::remove_file(state.join("b.json")).expect("unlink");
        std::os::unix::fs::symlink(&elsewhere, state.join("b.json")).expect("symlink");
        // `bot`: loose, and immutable, so that no chmod can fix it.
        set_mode(&state.join("bot.json"), 0o644);
        let immutable = std::process::Command::new("chattr")
            .arg("+i")
            .arg(state.join("bot.json"))
            .status()
            .expect("chattr (e2fsprogs)");
        assert!(immutable.success(), "chattr +i failed on this file system");

        world.start_tokd().await;
        for (name, said) in [
            ("a", "owned by uid 65534, not by this user"),
            ("b", "a symlink, which tokd does not follow"),
        ] {
            let out = world.tokctl(&["get", name]).await;
            assert_eq!(out.status, 4, "{name}: {out:?}");
            let status = world.status(name).await;
            assert!(
                status["message"].as_str().is_some_and(|m| m.contains(said)),
                "{name}: {status}"
            );
        }
        assert_eq!(mode(&elsewhere), 0o644, "the symlink's target was changed");
        let bot = world.status("bot").await;
        assert_eq!(bot["state"], "misconfigured", "{bot}");
        assert!(
            bot["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot be set to 600")),
            "{bot}"
        );
        assert_eq!(world.tokctl(&["get", "bot"]).await.status, 6);
        // The README's cure: fix its mode, then `tokctl reload`.
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(state.join("bot.json"))
            .status();
        set_mode(&state.join("bot.json"), 0o600);
        let before = world.emulator.counters();
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        assert_eq!(world.status("bot").await["state"], "valid");
        assert!(
            world
                .emulator
                .access_token_is_valid(&world.get("bot").await)
        );
        assert_eq!(
            world.emulator.counters(),
            before,
            "the kept token, read again"
        );
    })
    .await;
}

/// A provider's 2xx that cannot be used: the tokens it holds (issued, and
/// under strict rotation the only copy of the new refresh token) reach no
/// error, status, signal or log line, and the state says the grant may be
/// lost; the next refresh then finds it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tokens_in_an_unusable_answer_are_never_shown() {
    use futures_util::StreamExt;
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        let (_connection, proxy) = world.proxy().await;
        let mut signals = proxy.receive_state_changed().await.expect("signal");
        let used = world.stored_refresh_token("a");
        world
            .emulator
            .fail_next(1, Fault::mangled(Mangle::NumericAccessToken));
        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 5, "{out:?}");
        let issued = world.emulator.successor_of(&used).expect("rotated");
        let mut said = vec![out.stderr.clone()];
        said.push(world.tokctl(&["status", "a", "--json"]).await.stdout);
        said.push(world.tokctl(&["list"]).await.stdout);
        loop {
            let signal = signals.next().await.expect("StateChanged");
            let args = signal.args().expect("args");
            if args.name == "a" && args.state == "failing" {
                said.push(args.message.to_string());
                break;
            }
        }
        said.push(world.log());
        for text in &said {
            assert!(
                !text.contains(&issued),
                "the new refresh token is out: {text}"
            );
        }
        assert!(out.stderr.contains("the answer is not shown"), "{out:?}");
        assert!(
            out.stderr.contains("the authorization may be lost"),
            "{out:?}"
        );
        // It was: the provider rotated, tokd never read the new one.
        let next = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(next.status, 4, "{next:?}");
    })
    .await;
}

/// A 403 page from a CDN in front of a healthy provider: failing and
/// retried slowly (not parked as misconfigured), saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_oauth_4xx_is_retried_slowly_not_parked() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.get("bot").await;
        world
            .emulator
            .fail_next(1, Fault::status(403, FaultBody::Html));
        assert_eq!(world.tokctl(&["refresh", "bot"]).await.status, 5);
        let status = world.status("bot").await;
        assert_eq!(status["state"], "failing", "{status}");
        let message = status["message"].as_str().expect("message");
        assert!(message.contains("tries again in"), "{message}");
        let detail = status["last_error"].as_str().expect("last_error");
        assert!(detail.contains("not an OAuth answer"), "{detail}");
        let next = status["next_refresh"].as_i64().expect("scheduled");
        assert!(next - now() >= 14 * 60, "retried too soon: {status}");
        // A human may retry now; the provider is fine.
        assert_eq!(world.tokctl(&["refresh", "bot"]).await.status, 0);
        assert_eq!(world.status("bot").await["state"], "valid");
    })
    .await;
}

/// `expires_in: 0` is taken as no lifetime given: a token is served, and
/// the schedule does not loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_lifetime_is_taken_as_none_given() {
    within(async {
        let mut behaviour = Behaviour::wso2();
        behaviour.expires_in_sent = Some(0);
        let world = World::start(behaviour).await;
        world.login("a").await;
        let token = world.get("a").await;
        assert!(world.emulator.access_token_is_valid(&token));
        let status = world.status("a").await;
        let expires = status["expires_at"].as_i64().expect("an expiry");
        let next = status["next_refresh"].as_i64().expect("scheduled");
        assert!(expires - now() > 50 * 60, "{status}");
        assert!(next - now() > 30 * 60, "a refresh loop: {status}");
    })
    .await;
}

/// Asking for more validity than the provider ever gives: one refresh,
/// then the newest token with a warning, not a refresh per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_asking_beyond_the_lifetime_share_one_refresh() {
    within(async {
        let mut behaviour = Behaviour::wso2();
        behaviour.access_lifetime = Duration::from_secs(30);
        let world = World::start(behaviour).await;
        world.login("a").await;
        let started = std::time::Instant::now();
        for _ in 0..50 {
            let out = world.tokctl(&["get", "a", "--min-valid", "5m"]).await;
            assert_eq!(out.status, 0, "{out:?}");
            assert!(world.emulator.access_token_is_valid(out.stdout.trim()));
            assert!(out.stderr.starts_with("tokctl: warning: "), "{out:?}");
        }
        // Not one per call: one, and the scheduler's (a 30 s token is due
        // about every 15 s); the 50 gets take well under a second.
        let bound = started.elapsed().as_secs() / 10 + 1;
        let refreshes = world.emulator.counters().refresh_token;
        assert!(
            refreshes >= 1 && refreshes <= bound,
            "{refreshes} refreshes"
        );
    })
    .await;
}

/// The secret command's stderr stays out of the log, except the first
/// line of a failure, and a flood of output is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_commands_stderr_and_floods_stay_out() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let table = |name: &str, argv: &str| {
            format!(
                "\n[consumers.{name}]\ntoken_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_command = {argv}\n[installations.{name}]\nconsumer = \"{name}\"\ngrant = \"client_credentials\"\n",
                world.emulator.token_url()
            )
        };
        let leaky = table(
            "leaky",
            &format!(r#"["sh", "-c", "echo {SECRET} >&2; echo {SECRET}"]"#),
        );
        let locked = table(
            "locked",
            r#"["sh", "-c", "echo 'pass: the store is locked' >&2; echo second line >&2; exit 1"]"#,
        );
        let flood = table("flood", r#"["yes", "x"]"#);
        world
            .home
            .write_config(&world.config(&format!("{leaky}{locked}{flood}")));
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);

        assert!(
            world
                .emulator
                .access_token_is_valid(&world.get("leaky").await)
        );
        let out = world.tokctl(&["get", "locked"]).await;
        assert_eq!(out.status, 5, "{out:?}");
        assert!(out.stderr.contains("pass: the store is locked"), "{out:?}");
        assert!(!out.stderr.contains("second line"), "{out:?}");
        let out = world.tokctl(&["get", "flood"]).await;
        assert_ne!(out.status, 0, "{out:?}");
        assert!(out.stderr.contains("more than 64 KiB"), "{out:?}");
        assert_eq!(world.tokctl(&["status", "bot"]).await.status, 0, "tokd is fine");
        let log = world.log();
        assert!(!log.contains(SECRET), "the secret reached the log");
    })
    .await;
}

/// A stopped tokd (SIGSTOP): tokctl gives up after `--timeout`, exit 7
/// and one line, over the socket and the bus alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokctl_gives_up_on_a_stopped_tokd() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.get("bot").await;
        let tokd = world.tokd.as_ref().expect("tokd");
        tokd.pause();
        for args in [
            &["--timeout", "2s", "get", "bot"][..],
            &["get", "bot", "--timeout", "2s"],
            &["list", "--timeout", "1"],
        ] {
            let out = world.tokctl(args).await;
            assert_eq!(out.status, 7, "{args:?}: {out:?}");
            assert!(out.stdout.is_empty());
            assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
            assert!(out.stderr.contains("did not answer within"), "{out:?}");
        }
        tokd.resume();
        assert!(
            world
                .emulator
                .access_token_is_valid(&world.get("bot").await)
        );
    })
    .await;
}

/// tokd makes itself undumpable: run as another user, its /proc files
/// then belong to root (proc(5)), and no core or ptrace by that user can
/// read its memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokd_is_not_dumpable() {
    use std::os::unix::fs::MetadataExt;
    within(async {
        let bus = tokd_testkit::PrivateBus::start();
        let home = tokd_testkit::Home::new();
        home.write_config("");
        // Run as a user other than root: as root, its files belong to root
        // anyway. A normal user runs it as itself; root as nobody.
        let tokd = if crate::support::uid() == 0 {
            bus.open_to_other_users();
            let chown = std::process::Command::new("chown")
                .args(["-R", "65534:65534"])
                .arg(home.path())
                .status()
                .expect("chown");
            assert!(chown.success());
            Tokd::start_wrapped(&crate::support::as_nobody(), &tokd_bin(), &home, &bus, &[]).await
        } else {
            Tokd::start(&tokd_bin(), &home, &bus).await
        };
        let status = std::fs::metadata(format!("/proc/{}/status", tokd.pid())).expect("proc");
        assert_eq!(
            status.uid(),
            0,
            "tokd is dumpable: its /proc files are its user's"
        );
    })
    .await;
}

/// Rotated-out refresh tokens do not linger in tokd's memory: after five
/// rotations none of them is anywhere in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: reads the memory of tokd, which makes itself undumpable (/proc/PID/mem then needs CAP_SYS_PTRACE)"]
async fn rotated_out_refresh_tokens_are_wiped_from_memory() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        let mut old = Vec::new();
        for _ in 0..5 {
            old.push(world.stored_refresh_token("a"));
            assert_eq!(world.tokctl(&["refresh", "a"]).await.status, 0);
        }
        let pid = world.tokd.as_ref().expect("tokd").pid();
        let memory = readable_memory(pid);
        assert!(
            memory.windows(8).any(|w| w == b"client-1"),
            "the scan reads tokd's heap"
        );
        // Not in tokd's own values (zeroed on drop), nor in buffers it
        // does not own (the HTTP client's, the parser's: the allocator
        // zeroes every freed block).
        for (index, token) in old.iter().enumerate() {
            assert!(
                !memory
                    .windows(token.len())
                    .any(|window| window == token.as_bytes()),
                "rotated-out refresh token #{index} is still in tokd's memory"
            );
        }
    })
    .await;
}

/// Every readable, writable private mapping of `pid` (heap, stacks,
/// anonymous), read through /proc/PID/mem (as root).
fn readable_memory(pid: u32) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("mem");
    let mut all = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (range, perms) = (fields[0], fields[1]);
        if !perms.starts_with("rw") || fields.get(5).is_some_and(|f| f.starts_with('/')) {
            continue;
        }
        let (start, end) = range.split_once('-').expect("range");
        let start = u64::from_str_radix(start, 16).expect("hex");
        let end = u64::from_str_radix(end, 16).expect("hex");
        let mut chunk = vec![0u8; usize::try_from(end - start).expect("size")];
        if mem.seek(SeekFrom::Start(start)).is_ok() && mem.read_exact(&mut chunk).is_ok() {
            all.extend_from_slice(&chunk);
        }
    }
    all
}

/// A refresh the provider answers after tokd gave up (its own timeout is
/// longer than other requests', but finite): the state says the grant may
/// be lost, and under strict rotation it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_given_up_on_says_the_grant_may_be_lost() {
    use tokd::broker::{Broker, Error, Options};
    use tokd::oauth::{OAuthClient, Timeouts};
    within(async {
        let emulator = tokd_testkit::Emulator::start(Behaviour::wso2()).await;
        emulator.register_client(CLIENT_ID, SECRET);
        let home = tokd_testkit::Home::new();
        let secret = home.write_secret("secret", SECRET);
        let redirect = "http://127.0.0.1:9/callback";
        let consumer = emulator.consumer_table("acme", CLIENT_ID, &secret, redirect);
        let config = tokd::config::Config::from_str(&format!(
            "{consumer}\n[installations.a]\nconsumer = \"acme\"\nscopes = [\"read\"]\n"
        ))
        .expect("config");
        let http = OAuthClient::with_timeouts(Timeouts {
            connect: Duration::from_secs(5),
            total: Duration::from_millis(500),
            refresh: Duration::from_secs(1),
        })
        .expect("client");
        let (events, _heard) = tokio::sync::mpsc::unbounded_channel();
        let broker = Broker::start(
            config,
            None,
            std::sync::Arc::new(tokd::storage::Storage::new(
                tokd::storage::StateFolder::open(home.state_dir()).expect("state folder"),
                None,
            )),
            http,
            events,
            Options::default(),
        );
        let code = emulator.issue_code(CLIENT_ID, &["read"], Some(redirect), None);
        broker.complete_login("a", &code).await.expect("logged in");
        let stored = |home: &tokd_testkit::Home| -> String {
            let text = std::fs::read_to_string(home.state_dir().join("a.json")).expect("file");
            let record: serde_json::Value = serde_json::from_str(&text).expect("json");
            record["refresh_token"]
                .as_str()
                .expect("refresh token")
                .to_owned()
        };
        let used = stored(&home);
        emulator.fail_next(1, Fault::slow(Duration::from_secs(3)));
        let error = broker.refresh_now("a").await.expect_err("gave up");
        let Error::ProviderUnavailable(message) = error else {
            panic!("{error:?}");
        };
        assert!(
            message.contains("the authorization may be lost"),
            "{message}"
        );
        let view = broker.status("a").expect("status");
        assert!(
            view.message.contains("the authorization may be lost"),
            "{view:?}"
        );
        let rotated = eventually(Duration::from_secs(20), async || {
            emulator.successor_of(&used).is_some()
        })
        .await;
        assert!(rotated, "the provider answered after tokd gave up");
        let lost = broker.refresh_now("a").await.expect_err("used up");
        assert!(matches!(lost, Error::NeedsLogin(_)), "{lost:?}");
        // "If the next try is refused, log in again": a login cures it.
        let code = emulator.issue_code(CLIENT_ID, &["read"], Some(redirect), None);
        broker
            .complete_login("a", &code)
            .await
            .expect("logged in again");
        let token = broker
            .get_token("a", Duration::from_secs(1))
            .await
            .expect("a token");
        assert!(emulator.access_token_is_valid(token.access_token.expose()));
        broker.stop(Duration::from_secs(5)).await;
    })
    .await;
}

/// A provider's token with a CR LF in it (RFC 6749 allows printable ASCII
/// only): refused when the answer is read, under either grant, so it is
/// never stored, served, put in a header by `--format header`, or passed
/// on by `exec`; the token held before is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_line_break_is_refused_and_never_served() {
    within(async {
        let world = World::start(Behaviour::bitbucket_classic()).await;
        world.login("a").await;
        let held = world.get("a").await;
        world
            .emulator
            .fail_next(1, Fault::mangled(Mangle::HeaderInAccessToken));
        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 5, "{out:?}");
        assert!(
            out.stderr.contains("characters no token may have"),
            "{out:?}"
        );
        let header = world.tokctl(&["get", "a", "--format", "header"]).await;
        assert_eq!(header.status, 0, "{header:?}");
        assert_eq!(header.stdout, format!("Authorization: Bearer {held}\n"));
        let exec = world
            .tokctl(&["exec", "a", "--", "sh", "-c", "printf %s \"$TOKEN\""])
            .await;
        assert_eq!(exec.stdout, held, "{exec:?}");

        // Client credentials: the first fetch is refused, nothing is kept.
        world
            .emulator
            .fail_next(1, Fault::mangled(Mangle::HeaderInAccessToken));
        let bot = world.tokctl(&["get", "bot"]).await;
        assert_ne!(bot.status, 0, "{bot:?}");
        assert!(!bot.stdout.contains("X-Injected"), "{bot:?}");
        for (path, text) in everything_in(&world.home.state_dir()) {
            assert!(!text.contains("X-Injected"), "{}: {text}", path.display());
        }
        assert!(!world.log().contains("X-Injected"), "{}", world.log());
        // The provider mended: both carry on.
        assert_eq!(world.tokctl(&["refresh", "bot"]).await.status, 0);
        world.get("bot").await;
        assert_eq!(world.tokctl(&["refresh", "a"]).await.status, 0);
        assert_ne!(world.get("a").await, held);
    })
    .await;
}

/// A provider that sends a refresh token with client credentials: tokd
/// neither keeps nor uses it (the client's own credentials get the next
/// token), so an answer it cannot read never says the authorization may
/// be lost, and a lost "grant" never asks for a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_never_say_a_grant_may_be_lost() {
    within(async {
        let world = World::start(Behaviour {
            refresh_with_client_credentials: true,
            ..Behaviour::wso2()
        })
        .await;
        world.get("bot").await;
        let record = world.stored("bot").expect("a state file");
        assert!(record["refresh_token"].is_null(), "{record}");
        world
            .emulator
            .fail_next(1, Fault::mangled(Mangle::HtmlWrapped));
        let out = world.tokctl(&["refresh", "bot"]).await;
        assert_eq!(out.status, 5, "{out:?}");
        let status = world.status("bot").await;
        for text in [&out.stderr, &status.to_string()] {
            assert!(!text.contains("may be lost"), "{text}");
            assert!(!text.contains("refresh token"), "{text}");
        }
        let counters = world.emulator.counters();
        assert_eq!(counters.refresh_token, 0, "{counters:?}");
        assert_eq!(world.tokctl(&["refresh", "bot"]).await.status, 0);
        assert_eq!(world.status("bot").await["state"], "valid");
    })
    .await;
}

/// Provider text that would take over a terminal: scopes with a window
/// title escape, a screen clear, an OSC 8 link and a right-to-left
/// override, and an error description that reads backwards. No control,
/// bidi or invisible character reaches tokctl's output or D-Bus's scopes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_text_never_reaches_a_terminal_raw() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        world
            .emulator
            .fail_next(1, Fault::mangled(Mangle::HostileScope));
        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        let hidden = |text: &str| text.chars().any(tokd_shared::text::hidden);
        let (_connection, proxy) = world.proxy().await;
        let info = proxy.status("a").await.expect("Status");
        assert!(!hidden(&info.scopes), "{:?}", info.scopes);
        assert!(info.scopes.contains("read"), "{:?}", info.scopes);
        for args in [
            &["status", "a"][..],
            &["status", "a", "--json"],
            &["list"],
            &["list", "--json"],
        ] {
            let out = world.tokctl(args).await;
            assert_eq!(out.status, 0, "{args:?}: {out:?}");
            for text in [&out.stdout, &out.stderr] {
                let shown: String = text.chars().filter(|c| *c != '\n').collect();
                assert!(!hidden(&shown), "{args:?}: {text:?}");
                assert!(!text.contains("evil.example"), "{args:?}: {text:?}");
            }
        }

        // An error description that would read backwards.
        world.emulator.fail_next(
            1,
            Fault::status(
                503,
                FaultBody::Json(
                    "{\"error\":\"temporarily_unavailable\",\"error_description\":\"try \\u202Eniaga retal\\u200B \\u001b[2J\"}"
                        .to_owned(),
                ),
            ),
        );
        let out = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(out.status, 5, "{out:?}");
        assert!(out.stderr.contains("niaga retal"), "{out:?}");
        let shown: String = out.stderr.chars().filter(|c| *c != '\n').collect();
        assert!(!hidden(&shown), "{:?}", out.stderr);
        let status = world.tokctl(&["status", "a"]).await;
        let shown: String = status.stdout.chars().filter(|c| *c != '\n').collect();
        assert!(!hidden(&shown), "{:?}", status.stdout);
    })
    .await;
}

/// A token kept before tokd checked answers for unprintable characters
/// (here: a state file with a CR LF in its access token) is never served
/// after a restart: it counts as expired, and the first get refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_token_with_a_line_break_is_replaced_not_served() {
    within(async {
        let mut world = World::start(Behaviour::bitbucket_classic()).await;
        world.login("a").await;
        let held = world.get("a").await;
        assert!(world.tokd().terminate().success());
        let path = world.home.state_dir().join("a.json");
        let mut record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("state file"))
                .expect("json");
        record["access_token"] = format!("{held}\r\nX-Injected: yes").into();
        std::fs::write(&path, record.to_string()).expect("edit");
        set_mode(&path, 0o600);
        let refreshes = world.emulator.counters().refresh_token;
        world.start_tokd().await;
        let header = world.tokctl(&["get", "a", "--format", "header"]).await;
        assert_eq!(header.status, 0, "{header:?}\n{}", world.log());
        assert!(!header.stdout.contains("X-Injected"), "{header:?}");
        assert_eq!(header.stdout.lines().count(), 1, "{header:?}");
        assert_eq!(world.emulator.counters().refresh_token, refreshes + 1);
    })
    .await;
}
