//! Hostile or careless input to a running tokd: other users, bad D-Bus
//! arguments, forged login answers, and secrets in logs.

use crate::support::{SECRET, World, browse, browser, query_value, tokctl_bin, uid, within};
use std::os::unix::fs::PermissionsExt;
use tokd_testkit::{Behaviour, Fault, FaultBody};

fn error_name(error: &tokd_shared::Error) -> String {
    use zbus::DBusError as _;
    error.name().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dbus_arguments_are_refused_and_tokd_stays_healthy() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let (_connection, proxy) = world.proxy().await;
        let huge = "x".repeat(1 << 20);
        let invalid = "org.tokd.tokd1.Error.InvalidArgument";
        for name in ["", "a/b", "../a", "a b", "ä", huge.as_str()] {
            let error = proxy.get_token(name, 60).await.expect_err("refused");
            assert_eq!(error_name(&error), invalid, "get_token({:.20?})", name);
            let error = proxy.status(name).await.expect_err("refused");
            assert_eq!(error_name(&error), invalid);
        }
        let error = proxy.get_token("a", u32::MAX).await.expect_err("absurd");
        assert_eq!(error_name(&error), invalid);
        for code in ["", " ", "a\nb", huge.as_str()] {
            let error = proxy.complete_login("a", code).await.expect_err("bad code");
            assert_eq!(error_name(&error), invalid, "code {:.20?}", code);
        }
        let error = proxy.begin_login("bot").await.expect_err("no login");
        assert_eq!(error_name(&error), invalid);
        // Messages never echo the bad input back.
        let error = proxy.get_token(&huge, 60).await.expect_err("refused");
        assert!(error.to_string().len() < 1000);
        // Still healthy.
        assert_eq!(proxy.list().await.expect("list").len(), 4);
        assert!(
            world
                .emulator
                .access_token_is_valid(&world.get("bot").await)
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_listener_takes_only_its_own_state_once() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let (_connection, proxy) = world.proxy().await;
        let (url, listening) = proxy.begin_login("a").await.expect("begin");
        assert!(listening);
        let location = browse(&url).await;
        let forged = location.replace("state=", "state=forged");
        let base = format!("http://127.0.0.1:{}", world.port);
        let client = browser();
        let status = |response: reqwest::Response| response.status().as_u16();
        let forged_answer = client.get(&forged).send().await.expect("forged");
        assert_eq!(status(forged_answer), 400);
        let no_state = format!("{base}/callback?code=abc");
        assert_eq!(
            status(client.get(&no_state).send().await.expect("get")),
            400
        );
        let elsewhere = location.replace("/callback?", "/other?");
        assert_eq!(
            status(client.get(&elsewhere).send().await.expect("get")),
            404
        );
        assert_eq!(
            status(client.post(&location).send().await.expect("post")),
            405
        );
        assert_eq!(
            world.emulator.counters().authorization_code,
            0,
            "nothing exchanged"
        );
        // The real answer still works, once.
        let page = client.get(&location).send().await.expect("answer");
        assert!(page.text().await.expect("page").contains("Logged in"));
        let replay = client.get(&location).send().await;
        assert!(
            replay.is_err() || replay.is_ok_and(|r| r.status().as_u16() == 400),
            "a replayed answer is refused"
        );
        assert_eq!(world.emulator.counters().authorization_code, 1);
        assert!(world.emulator.access_token_is_valid(&world.get("a").await));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: runs tokctl as another local user (setpriv to nobody)"]
async fn a_caller_with_another_uid_is_refused() {
    within(async {
        assert_eq!(
            uid(),
            0,
            "this test runs tokctl as another user with setpriv and needs root"
        );
        let world = World::start(Behaviour::wso2()).await;
        world.bus.open_to_other_users();
        // The private socket opened up too, past its 0700 folder and 0600
        // mode, so that only tokd's own check at accept stands in the way.
        let runtime = world.home.path().join("runtime");
        let socket = runtime.join(tokd_shared::PRIVATE_SOCKET);
        for (path, mode) in [
            (world.home.path().to_owned(), 0o711),
            (runtime.clone(), 0o711),
            (runtime.join("tokd"), 0o711),
            (socket.clone(), 0o666),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        // The same user gets an answer ...
        assert_eq!(world.tokctl(&["status", "a"]).await.status, 0);
        // ... another one is refused by tokd itself: at accept on the
        // private socket, then by the uid check on the bus.
        let output = tokio::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"]) // nobody: dbus-daemon needs a passwd entry
            .arg(tokctl_bin())
            .args(["get", "bot"])
            .env("DBUS_SESSION_BUS_ADDRESS", world.bus.address())
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .await
            .expect("setpriv (util-linux)");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(output.stdout.is_empty());
        assert!(stderr.contains("answers only its own user"), "{stderr}");
        assert_eq!(world.emulator.counters().token_requests(), 0);
        let log = world.log();
        assert!(log.contains("refused a caller with another uid"), "{log}");
        assert!(
            log.contains("refused a private-socket connection from another uid"),
            "{log}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_or_tokctl_stderr_at_trace_level() {
    within(async {
        let mut world = World::start_with_log(Behaviour::wso2(), "trace").await;
        let mut secrets = vec![SECRET.to_owned()];
        let mut stderr = String::new();
        // Login through the listener, a get, a refresh, client credentials.
        world.login("a").await;
        secrets.push(world.get("a").await);
        let (_connection, proxy) = world.proxy().await;
        for args in [&["refresh", "a"][..], &["get", "bot"], &["refresh", "bot"]] {
            let out = world.tokctl(args).await;
            stderr.push_str(&out.stderr);
            secrets.push(out.stdout.trim().to_owned());
        }
        secrets.push(world.get("a").await);
        secrets.push(world.get("bot").await);
        // A code typed by hand and refused on reuse.
        let (url, _) = proxy.begin_login("m").await.expect("begin");
        let code = query_value(&browse(&url).await, "code");
        secrets.push(code.clone());
        for _ in 0..2 {
            stderr.push_str(&world.tokctl(&["login", "m", "--code", &code]).await.stderr);
        }
        secrets.push(world.get("m").await);
        // Failures whose bodies the provider fills with garbage.
        world
            .emulator
            .fail_next(1, Fault::status(500, FaultBody::Garbage));
        stderr.push_str(&world.tokctl(&["refresh", "m"]).await.stderr);
        // A provider that echoes what the request carried: the client
        // secret and the refresh token.
        let record = std::fs::read_to_string(world.home.state_dir().join("m.json")).expect("m");
        let record: serde_json::Value = serde_json::from_str(&record).expect("json");
        let m_refresh = record["refresh_token"].as_str().expect("refresh token").to_owned();
        world
            .emulator
            .fail_next(
                1,
                Fault::status(
                    400,
                    FaultBody::Json(format!(
                        r#"{{"error":"invalid_request","error_description":"bad client secret {} for {}"}}"#,
                        SECRET,
                        m_refresh
                    )),
                ),
            );
        stderr.push_str(&world.tokctl(&["refresh", "m"]).await.stderr);
        // Every refresh token tokd held.
        for name in ["a", "bot", "m"] {
            if let Ok(text) = std::fs::read_to_string(world.home.state_dir().join(format!("{name}.json"))) {
                let record: serde_json::Value = serde_json::from_str(&text).expect("json");
                if let Some(token) = record["refresh_token"].as_str() {
                    secrets.push(token.to_owned());
                }
            }
        }
        // Revocation, then a stop.
        stderr.push_str(&world.tokctl(&["revoke", "a"]).await.stderr);
        let status = world.tokd.as_mut().expect("tokd").terminate();
        assert!(status.success());
        let log = world.log();
        assert!(log.contains("TRACE") || log.contains("DEBUG"), "trace logging is on");
        secrets.retain(|s| s.len() >= 8);
        assert!(secrets.len() >= 8, "{} secrets collected", secrets.len());
        // On failure, show where, with the secret itself blanked out.
        let leaks = |text: &str, secret: &str| -> Vec<String> {
            text.lines()
                .filter(|line| line.contains(secret))
                .map(|line| line.replace(secret, "<SECRET>"))
                .collect()
        };
        for (index, secret) in secrets.iter().enumerate() {
            let in_log = leaks(&log, secret);
            assert!(in_log.is_empty(), "secret #{index} is in tokd's log:\n{}", in_log.join("\n"));
            let in_stderr = leaks(&stderr, secret);
            assert!(in_stderr.is_empty(), "secret #{index} is in tokctl's stderr:\n{}", in_stderr.join("\n"));
        }
    })
    .await;
}
