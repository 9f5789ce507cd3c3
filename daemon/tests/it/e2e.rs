//! The real `tokd` and `tokctl` binaries on a private dbus-daemon, against
//! the provider emulator over loopback HTTP.

use crate::support::{
    CLIENT_ID, World, browse, browser, query_value, tokctl_bin, tokd_bin, within,
};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;
use tokd_testkit::{Behaviour, Fault};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_through_the_loopback_listener_then_get() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        let token = world.get("a").await;
        assert!(world.emulator.access_token_is_valid(&token));
        assert_eq!(world.emulator.counters().authorization_code, 1);
        // A second get is served from memory.
        assert_eq!(world.get("a").await, token);
        assert_eq!(world.emulator.counters().token_requests(), 1);
        // Other formats.
        let header = world.tokctl(&["get", "a", "--format", "header"]).await;
        assert_eq!(header.stdout, format!("Authorization: Bearer {token}\n"));
        let json = world.tokctl(&["get", "a", "--format", "json"]).await;
        let json: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
        assert_eq!(json["access_token"], token.as_str());
        assert_eq!(json["token_type"], "Bearer");
        assert!(
            json["expires_in"].as_i64().is_some_and(|s| s > 3000),
            "{json}"
        );
        // The listener is closed after the login.
        let closed = browser()
            .get(format!("http://127.0.0.1:{}/callback", world.port))
            .send()
            .await;
        assert!(closed.is_err(), "the listener still answers: {closed:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_opens_the_browser_with_xdg_open_when_there_is_a_display() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        // A stand-in xdg-open first on PATH: it writes down the URL it got.
        let bin = world.home.path().join("bin");
        std::fs::create_dir(&bin).expect("bin");
        let opened = world.home.path().join("opened-url");
        let script = bin.join("xdg-open");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nprintf '%s' \"$1\" > {}.tmp && mv {0}.tmp {0}\n",
                opened.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("mode");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = world
            .command(&["login", "a"])
            .env("DISPLAY", ":0")
            .env("PATH", path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tokctl login");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let url = loop {
            if let Ok(url) = std::fs::read_to_string(&opened) {
                break url;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "xdg-open was not run"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let location = browse(&url).await;
        let page = browser().get(&location).send().await.expect("callback");
        assert!(page.text().await.expect("page").contains("Logged in"));
        let output = child.wait_with_output().await.expect("tokctl login ends");
        assert!(output.status.success(), "{output:?}");
        assert!(
            output.stdout.is_empty(),
            "the URL went to the browser, not stdout"
        );
        assert!(String::from_utf8_lossy(&output.stderr).contains("opened the login page"));
        assert!(world.emulator.access_token_is_valid(&world.get("a").await));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_with_a_code_copied_by_hand() {
    within(async {
        let world = World::start(Behaviour::bitbucket_classic()).await;
        // The consumer's redirect is not on this machine: tokctl prints the
        // URL, says how to finish, and returns.
        let out = world.tokctl(&["login", "m", "--no-browser"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert!(out.stderr.contains("tokctl login m --code"), "{out:?}");
        let location = browse(out.stdout.trim()).await;
        assert!(location.starts_with("https://app.example.com/callback?"));
        let code = query_value(&location, "code");
        let done = world.tokctl(&["login", "m", "--code", &code]).await;
        assert_eq!(done.status, 0, "{done:?}\n{}", world.log());
        assert!(done.stdout.is_empty());
        let token = world.get("m").await;
        assert!(world.emulator.access_token_is_valid(&token));
        // The code works once: reusing it is refused with the hint.
        let again = world.tokctl(&["login", "m", "--code", &code]).await;
        assert_eq!(again.status, 4, "{again:?}");
        assert!(again.stdout.is_empty());
        assert!(again.stderr.contains("tokctl login m"), "{again:?}");
        assert_eq!(world.get("m").await, token, "the held token is kept");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_are_requested_on_first_get_and_then_held() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let token = world.get("bot").await;
        assert!(world.emulator.access_token_is_valid(&token));
        assert_eq!(world.get("bot").await, token);
        let counters = world.emulator.counters();
        assert_eq!(counters.client_credentials, 1);
        assert_eq!(counters.token_requests(), 1);
        // A login makes no sense for it.
        let login = world.tokctl(&["login", "bot"]).await;
        assert_eq!(login.status, 2, "{login:?}");
        assert!(login.stderr.contains("client credentials"), "{login:?}");
        // Refresh requests a new one.
        let refresh = world.tokctl(&["refresh", "bot"]).await;
        assert_eq!(refresh.status, 0, "{refresh:?}");
        assert_ne!(world.get("bot").await, token);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_of_one_consumer_stay_independent() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        world.login("b").await;
        let a = world.get("a").await;
        let b = world.get("b").await;
        assert_ne!(a, b);
        assert!(world.emulator.revoke_grant_of(&a));
        let refresh = world.tokctl(&["refresh", "a"]).await;
        assert_eq!(refresh.status, 4, "{refresh:?}");
        assert!(refresh.stdout.is_empty());
        assert!(refresh.stderr.contains("tokctl login a"), "{refresh:?}");
        assert_eq!(refresh.stderr.lines().count(), 1, "{refresh:?}");
        // `a` now says so everywhere; `b` is untouched and refreshes fine.
        let get_a = world.tokctl(&["get", "a"]).await;
        assert_eq!(get_a.status, 4, "{get_a:?}");
        assert!(get_a.stdout.is_empty());
        let refresh_b = world.tokctl(&["refresh", "b"]).await;
        assert_eq!(refresh_b.status, 0, "{refresh_b:?}");
        let new_b = world.get("b").await;
        assert_ne!(new_b, b);
        assert!(world.emulator.access_token_is_valid(&new_b));
        let list = world.tokctl(&["list", "--json"]).await;
        let list: serde_json::Value = serde_json::from_str(&list.stdout).expect("json");
        let state = |name: &str| {
            list.as_array()
                .expect("array")
                .iter()
                .find(|i| i["name"] == name)
                .map(|i| i["state"].as_str().unwrap_or("").to_owned())
        };
        assert_eq!(state("a").as_deref(), Some("needs-login"));
        assert_eq!(state("b").as_deref(), Some("valid"));
        // A new login brings `a` back.
        world.login("a").await;
        assert!(world.emulator.access_token_is_valid(&world.get("a").await));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_gets_share_one_refresh_on_a_strictly_rotating_provider() {
    within(async {
        let mut behaviour = Behaviour::wso2();
        behaviour.access_lifetime = Duration::from_secs(120);
        let world = World::start(behaviour.clone()).await;
        world.login("a").await;
        let old = world.get("a").await;
        // New tokens live an hour; every get below asks for ten minutes,
        // which the held token cannot give. The provider answers slowly so
        // that all the gets pile up on the one request.
        behaviour.access_lifetime = Duration::from_secs(3600);
        world.emulator.set_behaviour(behaviour);
        world
            .emulator
            .fail_next(1, Fault::slow(Duration::from_secs(1)));
        let before = world.emulator.counters();
        let gets = (0..100).map(|_| world.tokctl(&["get", "a", "--min-valid", "10m"]));
        let outs = futures_util::future::join_all(gets).await;
        let after = world.emulator.counters();
        assert_eq!(
            after.refresh_token - before.refresh_token,
            1,
            "exactly one request to the provider"
        );
        assert_eq!(after.token_requests() - before.token_requests(), 1);
        let first = &outs[0].stdout;
        for out in &outs {
            assert_eq!(out.status, 0, "{out:?}");
            assert_eq!(&out.stdout, first, "every caller gets the same token");
        }
        let token = first.trim();
        assert_ne!(token, old);
        assert!(world.emulator.access_token_is_valid(token));
        // What the callers got is what is on disk, with the rotated
        // refresh token: nothing lives only in memory.
        let record =
            std::fs::read_to_string(world.home.state_dir().join("a.json")).expect("record");
        let record: serde_json::Value = serde_json::from_str(&record).expect("json");
        assert_eq!(record["access_token"], token);
        let refresh = record["refresh_token"].as_str().expect("refresh token");
        assert!(world.emulator.refresh_token_is_valid(refresh));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_request_stalls_only_its_own_installation() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        world.login("b").await;
        let (_connection, proxy) = world.proxy().await;
        use futures_util::StreamExt;
        let mut states = proxy.receive_state_changed().await.expect("signal");
        // The next request to the provider hangs for a minute.
        world
            .emulator
            .fail_next(1, Fault::slow(Duration::from_secs(60)));
        let mut slow = world.command(&["refresh", "a"]).spawn().expect("refresh a");
        loop {
            let signal = states.next().await.expect("StateChanged");
            let args = signal.args().expect("args");
            if args.name == "a" && args.state == "refreshing" {
                break;
            }
        }
        // `a` is stuck at the provider; `b` refreshes and gets as usual.
        let refresh = world.tokctl(&["refresh", "b"]).await;
        assert_eq!(refresh.status, 0, "{refresh:?}");
        let b = world.get("b").await;
        assert!(world.emulator.access_token_is_valid(&b));
        let list = world.tokctl(&["status", "a", "--json"]).await;
        assert!(list.stdout.contains("\"refreshing\""), "{list:?}");
        assert!(
            slow.try_wait().expect("try_wait").is_none(),
            "`a` is still waiting"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_schedule_refreshes_with_no_caller() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        let config = world.config(
            "\n[installations.cron]\nconsumer = \"acme\"\ngrant = \"client_credentials\"\nschedule = \"* * * * * *\"\n",
        );
        world.home.write_config(&config);
        drop(world.tokd.take());
        let (_connection, proxy) = world.proxy().await;
        use futures_util::StreamExt;
        world.start_tokd().await;
        let mut refreshed = proxy.receive_token_refreshed().await.expect("signal");
        let mut seen = 0;
        while seen < 2 {
            let signal = refreshed.next().await.expect("TokenRefreshed");
            if signal.args().expect("args").name == "cron" {
                seen += 1;
            }
        }
        assert!(world.emulator.counters().client_credentials >= 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokctl_runs_on_a_single_thread() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        // A waiting login keeps tokctl alive long enough to look at it.
        let mut child = world
            .command(&["login", "a", "--no-browser"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tokctl login");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut url = String::new();
        stdout.read_line(&mut url).await.expect("the login URL");
        let pid = child.id().expect("pid");
        let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("/proc")
            .count();
        assert_eq!(threads, 1, "tokctl started extra threads");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_leave_stdout_empty_with_distinct_statuses() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let cases: [(&[&str], i32, &str); 5] = [
            (&["get", "nosuch"], 3, "tokctl list"),
            (&["get", "a"], 4, "tokctl login a"),
            (&["get", "bad/name"], 2, "installation name"),
            (&["get", "a", "--min-valid", "3d"], 2, "24h"),
            (&["get"], 2, "NAME"),
        ];
        for (args, status, hint) in cases {
            let out = world.tokctl(args).await;
            assert_eq!(out.status, status, "{args:?}: {out:?}");
            assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
            assert!(out.stderr.contains(hint), "{args:?}: {out:?}");
        }
        let out = world.tokctl(&["get", "a"]).await;
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
        // The provider refusing the client: misconfigured.
        world.emulator.register_client(CLIENT_ID, "another-secret");
        let out = world.tokctl(&["get", "bot"]).await;
        assert_eq!(out.status, 6, "{out:?}");
        assert!(out.stdout.is_empty());
        // Once tokd is gone, the daemon is unreachable.
        drop(world.tokd);
        let gone = World::start(Behaviour::wso2()).await;
        drop(gone.tokd);
        let out = tokio::process::Command::new(tokctl_bin())
            .args(["get", "a"])
            .envs(gone.home.env(&gone.bus))
            .output()
            .await
            .expect("tokctl");
        assert_eq!(out.status.code(), Some(7), "{out:?}");
        assert!(out.stdout.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_config_file_tokd_serves_nothing_until_reload() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        drop(world.tokd.take());
        let config = world.config("");
        std::fs::remove_file(world.home.config_path()).expect("remove config");
        world.start_tokd().await;
        let said = format!(
            "tokctl: no installations are configured; add one to {} (see `man tokd.conf`), then run `tokctl reload`\n",
            world.home.config_path().display()
        );
        for args in [&["list"][..], &["status"]] {
            let out = world.tokctl(args).await;
            assert_eq!((out.status, out.stdout.as_str()), (0, ""), "{args:?}: {out:?}");
            assert_eq!(out.stderr, said, "the real path, on stderr");
        }
        let json = world.tokctl(&["list", "--json"]).await;
        assert_eq!(json.stdout.trim(), "[]", "{json:?}");
        assert_eq!(world.tokctl(&["get", "a"]).await.status, 3);
        world.home.write_config(&config);
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        assert_eq!(
            world.tokctl(&["get", "a"]).await.status,
            4,
            "known now, not logged in"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tokd_on_the_same_bus_refuses_to_start() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let output = tokio::process::Command::new(tokd_bin())
            .envs(world.home.env(&world.bus))
            .stdin(Stdio::null())
            .output()
            .await
            .expect("second tokd");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("another tokd already owns org.tokd.tokd1"),
            "{stderr}"
        );
        // The first one is unaffected.
        assert_eq!(world.tokctl(&["status", "a"]).await.status, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokd_stops_when_its_bus_goes_away() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        world.bus.stop();
        let tokd = world.tokd.as_mut().expect("tokd");
        let status = tokd.exited_within(Duration::from_secs(30)).await;
        assert!(
            status.is_some_and(|s| !s.success()),
            "tokd outlived its bus: {status:?}"
        );
        assert!(tokd.log_text().contains("session bus went away"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_interface_matches_the_xml_in_the_repository() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let connection = world.bus.connect().await;
        let introspectable = zbus::fdo::IntrospectableProxy::builder(&connection)
            .destination(tokd_shared::BUS_NAME)
            .path(tokd_shared::OBJECT_PATH)
            .build()
            .await
            .expect("proxy");
        let served = introspectable.introspect().await.expect("introspect");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/dbus/org.tokd.tokd1.Manager.xml"
        );
        let kept = std::fs::read_to_string(path).expect("the kept XML");
        let served_iface = interface_element(&served);
        assert_eq!(
            interface_element(&kept),
            served_iface,
            "{path} is out of date; the daemon serves:\n{served_iface}"
        );
    })
    .await;
}

/// The `org.tokd.tokd1.Manager` element, one trimmed line per tag, without
/// comments.
fn interface_element(xml: &str) -> String {
    let start = xml
        .find("<interface name=\"org.tokd.tokd1.Manager\">")
        .expect("the Manager interface");
    let end = start + xml[start..].find("</interface>").expect("its end") + "</interface>".len();
    let mut out = String::new();
    let mut rest = &xml[start..end];
    while let Some(open) = rest.find('<') {
        let close = rest[open..].find('>').expect("tag end") + open;
        let tag = &rest[open..=close];
        if tag.starts_with("<!--") {
            let end = rest[open..].find("-->").expect("comment end") + open + 3;
            rest = &rest[end..];
            continue;
        }
        out.push_str(tag);
        out.push('\n');
        rest = &rest[close + 1..];
    }
    out
}
