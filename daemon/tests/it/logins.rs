//! Logging in anywhere, to any provider: the device flow (RFC 8628),
//! discovered endpoints (RFC 8414, OpenID Connect Discovery), presets and
//! extra parameters, through the real binaries and the emulator.

use crate::support::{CLIENT_ID, SECRET, World, eventually, mode, tokd_bin, within};
use std::process::Stdio;
use std::time::Duration;
use tokd_testkit::{Behaviour, Emulator, WellKnown};
use tokio::io::{AsyncBufReadExt, BufReader};

const PUBLIC: &str = "public-1";

/// A public client with only a device endpoint, installed as `d`.
fn device_config(world: &World, emulator: &Emulator) -> String {
    world.config(&format!(
        r#"
[consumers.tv]
token_url = "{}"
device_url = "{}"
client_id = "{PUBLIC}"

[installations.d]
consumer = "tv"
scopes = ["read"]
"#,
        emulator.token_url(),
        emulator.device_url()
    ))
}

/// A world whose emulator announces a 1 s polling interval, with `d`.
async fn device_world() -> World {
    let mut behaviour = Behaviour::wso2();
    behaviour.device_interval = Duration::from_secs(1);
    let world = World::start(behaviour).await;
    world.emulator.register_public_client(PUBLIC);
    world
        .home
        .write_config(&device_config(&world, &world.emulator));
    assert_eq!(world.tokctl(&["reload"]).await.status, 0);
    world
}

/// A `tokctl login` that printed where to go: the child, the address on
/// stdout, and the code from stderr.
pub(crate) struct DeviceLogin {
    child: tokio::process::Child,
    address: String,
    pub code: String,
    stderr: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
}

pub(crate) async fn start_device_login(world: &World, args: &[&str]) -> DeviceLogin {
    let mut child = world
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tokctl login");
    let mut address = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut address)
        .await
        .expect("the address");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let code = loop {
        let line = stderr
            .next_line()
            .await
            .expect("stderr")
            .unwrap_or_else(|| panic!("no code was shown\n{}", world.log()));
        if let Some((_, rest)) = line.split_once("enter the code ") {
            break rest.split_whitespace().next().expect("a code").to_owned();
        }
    };
    DeviceLogin {
        child,
        address: address.trim().to_owned(),
        code,
        stderr,
    }
}

impl DeviceLogin {
    /// Waits for tokctl; returns its status and the rest of its stderr.
    pub async fn end(mut self) -> (i32, String) {
        let status = self.child.wait().await.expect("tokctl ends");
        let mut rest = String::new();
        while let Ok(Some(line)) = self.stderr.next_line().await {
            rest.push_str(&line);
            rest.push('\n');
        }
        (status.code().unwrap_or(-1), rest)
    }
}

/// Waits until tokd has polled at least once (the user is "slow").
async fn polled(world: &World) {
    let polled = eventually(Duration::from_secs(30), async || {
        world.emulator.counters().device_polls > 0
    })
    .await;
    assert!(polled, "tokd never polled\n{}", world.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_by_a_public_client_ends_in_a_refreshed_token() {
    within(async {
        let world = device_world().await;
        let login = start_device_login(&world, &["login", "d", "--device"]).await;
        assert!(
            login.address.starts_with(&format!(
                "{}/activate?user_code=",
                world.emulator.base_url()
            )),
            "the complete address goes to stdout: {}",
            login.address
        );
        polled(&world).await;
        assert!(world.emulator.decide_device(&login.code, true));
        let (status, stderr) = login.end().await;
        assert_eq!(status, 0, "{stderr}\n{}", world.log());
        assert!(stderr.contains("logged in"), "{stderr}");
        let token = world.get("d").await;
        assert!(world.emulator.access_token_is_valid(&token));
        // From here it is an installation like any other.
        assert_eq!(world.tokctl(&["refresh", "d"]).await.status, 0);
        assert!(world.emulator.access_token_is_valid(&world.get("d").await));
        let request = world.emulator.last_request().expect("recorded");
        assert_eq!(
            request.form_value("client_id"),
            Some(PUBLIC),
            "public: id in the body"
        );
        assert_eq!(request.basic, None);
        assert_eq!(world.tokctl(&["revoke", "d"]).await.status, 0);
        assert_eq!(world.emulator.counters().device_polls_too_soon, 0);
    })
    .await;
}

/// A confidential client authenticating with HTTP Basic still names
/// itself in the device request's body: django-oauth-toolkit (oauthlib)
/// refuses the request without it ("Missing client_id parameter."). A
/// refused start is told to tokctl and logged by tokd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confidential_client_names_itself_in_the_device_request_and_a_refused_start_is_logged() {
    within(async {
        let mut behaviour = Behaviour::django_oauth_toolkit();
        behaviour.device_interval = Duration::from_secs(1);
        let world = World::start(behaviour).await;
        let config = world.config("").replacen(
            "[consumers.acme]\n",
            &format!(
                "[consumers.acme]\ndevice_url = \"{}\"\n",
                world.emulator.device_url()
            ),
            1,
        );
        world.home.write_config(&config);
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        let login = start_device_login(&world, &["login", "a", "--device"]).await;
        polled(&world).await;
        assert!(world.emulator.decide_device(&login.code, true));
        let (status, stderr) = login.end().await;
        assert_eq!(status, 0, "{stderr}\n{}", world.log());
        let token = world.get("a").await;
        assert!(world.emulator.access_token_is_valid(&token));

        // The provider refuses the client at the device endpoint.
        world.emulator.register_client(CLIENT_ID, "another secret");
        let out = world.tokctl(&["login", "a", "--device"]).await;
        assert_eq!(out.status, 6, "{out:?}");
        assert!(out.stderr.contains("invalid_client"), "{out:?}");
        let logged = world.log().lines().any(|line| {
            line.contains("the device login could not start") && line.contains("invalid_client")
        });
        assert!(logged, "{}", world.log());
        assert!(!world.log().contains("another secret"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_down_lengthens_the_interval_and_a_refusal_or_the_expiry_ends_the_login() {
    within(async {
        let world = device_world().await;
        // slow_down: 5 s more between polls, kept to.
        world.emulator.slow_down_next(1);
        let login = start_device_login(&world, &["login", "d", "--device"]).await;
        let twice = eventually(Duration::from_secs(30), async || {
            world.emulator.counters().device_polls >= 2
        })
        .await;
        assert!(
            twice,
            "tokd stopped polling after slow_down\n{}",
            world.log()
        );
        assert!(world.emulator.decide_device(&login.code, true));
        let (status, stderr) = login.end().await;
        assert_eq!(status, 0, "{stderr}");
        assert_eq!(
            world.emulator.counters().device_polls_too_soon,
            0,
            "tokd polled sooner than the lengthened interval"
        );

        // The user refuses.
        let login = start_device_login(&world, &["login", "d", "--device"]).await;
        assert!(world.emulator.decide_device(&login.code, false));
        let (status, stderr) = login.end().await;
        assert_eq!(status, 4, "{stderr}");
        assert!(
            stderr.contains("refused at the provider (access_denied)"),
            "{stderr}"
        );
        assert!(stderr.contains("tokctl login d --device"), "{stderr}");

        // Nobody enters the code.
        let mut behaviour = world.emulator.behaviour();
        behaviour.device_expires_in = Duration::from_secs(3);
        world.emulator.set_behaviour(behaviour);
        let login = start_device_login(&world, &["login", "d", "--device"]).await;
        let (status, stderr) = login.end().await;
        assert_eq!(status, 4, "{stderr}");
        assert!(stderr.contains("expired before it was entered"), "{stderr}");
        assert!(
            stderr.contains("run `tokctl login d --device` again"),
            "{stderr}"
        );

        // Each sentence followed: a new device login, entered in time.
        let mut behaviour = world.emulator.behaviour();
        behaviour.device_expires_in = Duration::from_secs(600);
        world.emulator.set_behaviour(behaviour);
        let login = start_device_login(&world, &["login", "d", "--device"]).await;
        assert!(world.emulator.decide_device(&login.code, true));
        let (status, stderr) = login.end().await;
        assert_eq!(status, 0, "{stderr}");

        // `tv` has no auth_url: the browser flow says to use the device
        // flow, which then works.
        let out = world.tokctl(&["login", "d", "--no-browser"]).await;
        assert_eq!(out.status, 2, "{out:?}");
        assert!(
            out.stderr
                .contains("logs in with the device flow: `tokctl login d --device`"),
            "{out:?}"
        );
        let login = start_device_login(&world, &["login", "d", "--device"]).await;
        assert!(world.emulator.decide_device(&login.code, true));
        let (status, stderr) = login.end().await;
        assert_eq!(status, 0, "{stderr}");
        assert!(world.emulator.access_token_is_valid(&world.get("d").await));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_login_goes_on_after_tokctl_is_interrupted() {
    within(async {
        let world = device_world().await;
        let mut login = start_device_login(&world, &["login", "d", "--device"]).await;
        login.child.kill().await.expect("interrupt tokctl");
        polled(&world).await;
        assert!(world.emulator.decide_device(&login.code, true));
        let valid = eventually(Duration::from_secs(30), async || {
            world.status("d").await["state"] == "valid"
        })
        .await;
        assert!(valid, "the login was tokctl's, not tokd's\n{}", world.log());
        assert!(world.emulator.access_token_is_valid(&world.get("d").await));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_display_login_picks_the_device_flow_when_there_is_one() {
    within(async {
        let world = device_world().await;
        // No DISPLAY (the test's environment has none): the device flow.
        let login = start_device_login(&world, &["login", "d"]).await;
        polled(&world).await;
        assert!(world.emulator.decide_device(&login.code, true));
        let (status, stderr) = login.end().await;
        assert_eq!(status, 0, "{stderr}");
        // It said so before the code (the line read while looking for the
        // code); the rest confirms the login.
        assert!(stderr.contains("logged in"), "{stderr}");
        assert_eq!(world.emulator.counters().device_codes, 1);
        // A consumer without one: the browser flow, its URL printed.
        let out = world.tokctl(&["login", "m"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert!(
            out.stdout.starts_with(&world.emulator.auth_url()),
            "{out:?}"
        );
        assert!(out.stderr.contains("tokctl login m --code"), "{out:?}");
        assert_eq!(world.emulator.counters().device_codes, 1);
    })
    .await;
}

/// A consumer `id` whose endpoints come from the emulator's discovery
/// documents, installed as `w` (loopback redirect) and `x` (a redirect
/// elsewhere, so that `login --no-browser` only prints its URL).
fn discovered_config(world: &World) -> String {
    let secret = world.home.write_secret("acme.secret", SECRET);
    world.config(&format!(
        r#"
[consumers.id]
issuer = "{}"
client_id = "{CLIENT_ID}"
client_secret_file = "{}"
redirect_uri = "http://127.0.0.1:{}/callback"

[consumers.id-remote]
issuer = "{}"
client_id = "{CLIENT_ID}"
client_secret_file = "{}"
redirect_uri = "https://app.example.com/callback"

[installations.w]
consumer = "id"
scopes = ["read"]

[installations.x]
consumer = "id-remote"
scopes = ["read"]
"#,
        world.emulator.issuer(),
        secret.display(),
        world.port,
        world.emulator.issuer(),
        secret.display()
    ))
}

async fn discovered_world() -> World {
    let world = World::start(Behaviour::wso2()).await;
    world.home.write_config(&discovered_config(&world));
    assert_eq!(world.tokctl(&["reload"]).await.status, 0);
    assert_eq!(
        world.emulator.counters().discovery,
        0,
        "nothing is fetched before it is needed"
    );
    world
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_consumer_logs_in_refreshes_and_revokes() {
    within(async {
        let world = discovered_world().await;
        world.login("w").await;
        let token = world.get("w").await;
        assert!(world.emulator.access_token_is_valid(&token));
        assert_eq!(world.tokctl(&["refresh", "w"]).await.status, 0);
        let out = world.tokctl(&["revoke", "w"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert!(
            out.stderr.contains("revoked `w` at the provider"),
            "{out:?}"
        );
        assert_eq!(world.emulator.counters().discovery, 1, "fetched once");
        let kept = world.home.state_dir().join("discovery/id.json");
        assert_eq!(mode(&kept), 0o600);
        assert_eq!(mode(&world.home.state_dir().join("discovery")), 0o700);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_discovery_a_restart_needs_no_network() {
    within(async {
        let mut world = discovered_world().await;
        let out = world.tokctl(&["login", "x", "--no-browser"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert_eq!(world.emulator.counters().discovery, 1);
        assert!(world.tokd().terminate().success());
        // The provider's documents are gone now (no network).
        world.emulator.set_well_known(WellKnown {
            rfc8414: false,
            openid: false,
            issuer: None,
        });
        world.start_tokd().await;
        let out = world.tokctl(&["login", "x", "--no-browser"]).await;
        assert_eq!(out.status, 0, "{out:?}\n{}", world.log());
        assert!(
            out.stdout.starts_with(&world.emulator.auth_url()),
            "{out:?}"
        );
        assert_eq!(
            world.emulator.counters().discovery,
            1,
            "read from the state folder"
        );
    })
    .await;
}

/// A kept document is checked again when it is read, as a fetched one is:
/// one edited to name an `ftp://` (or plain-http) endpoint is refused, and
/// the issuer's document is fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_document_edited_to_a_bad_endpoint_is_refused_and_fetched_again() {
    within(async {
        let mut world = discovered_world().await;
        let out = world.tokctl(&["login", "x", "--no-browser"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert_eq!(world.emulator.counters().discovery, 1);
        assert!(world.tokd().terminate().success());
        let kept = world.home.state_dir().join("discovery/id-remote.json");
        for endpoint in ["ftp://127.0.0.1/auth", "http://auth.example/auth"] {
            let mut document: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&kept).expect("kept")).expect("json");
            document["authorization_endpoint"] = endpoint.into();
            std::fs::write(&kept, document.to_string()).expect("edit");
            let fetched = world.emulator.counters().discovery;
            world.start_tokd().await;
            let out = world.tokctl(&["login", "x", "--no-browser"]).await;
            assert_eq!(out.status, 0, "{out:?}\n{}", world.log());
            assert!(
                out.stdout.starts_with(&world.emulator.auth_url()),
                "{endpoint}: {out:?}"
            );
            assert_eq!(world.emulator.counters().discovery, fetched + 1);
            assert!(
                world
                    .log()
                    .contains("the kept discovery document is refused"),
                "{}",
                world.log()
            );
            assert!(world.tokd().terminate().success());
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_for_another_issuer_is_refused() {
    within(async {
        let world = discovered_world().await;
        world.emulator.set_well_known(WellKnown {
            issuer: Some("https://evil.example".to_owned()),
            ..WellKnown::default()
        });
        let out = world.tokctl(&["login", "x", "--no-browser"]).await;
        assert_eq!(out.status, 6, "{out:?}");
        assert!(out.stdout.is_empty());
        assert!(
            out.stderr
                .contains("names the issuer https://evil.example/"),
            "{out:?}"
        );
        assert!(out.stderr.contains("refusing it"), "{out:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_endpoint_is_discovered_again_and_openid_is_the_fallback() {
    within(async {
        let world = discovered_world().await;
        world.emulator.set_well_known(WellKnown {
            rfc8414: false,
            ..WellKnown::default()
        });
        world.login("w").await;
        assert_eq!(
            world.emulator.counters().discovery,
            1,
            "openid-configuration"
        );
        world.emulator.move_token_endpoint("/v2/token");
        let out = world.tokctl(&["refresh", "w"]).await;
        assert_eq!(out.status, 0, "{out:?}\n{}", world.log());
        assert_eq!(world.emulator.counters().discovery, 2, "fetched again");
        assert!(world.emulator.access_token_is_valid(&world.get("w").await));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_fetches_nothing_unless_online() {
    within(async {
        let world = discovered_world().await;
        let config = world.home.config_path();
        let check = |online: bool| {
            let mut command = tokio::process::Command::new(tokd_bin());
            command.arg("--check-config").arg(&config);
            if online {
                command.arg("--online");
            }
            command.envs(world.home.env(&world.bus)).output()
        };
        let offline = check(false).await.expect("tokd");
        assert!(offline.status.success(), "{offline:?}");
        assert_eq!(world.emulator.counters().discovery, 0);
        let online = check(true).await.expect("tokd");
        let stdout = String::from_utf8_lossy(&online.stdout);
        assert!(online.status.success(), "{online:?}");
        assert!(
            stdout.contains(&format!(
                "consumer `id`: discovered from {}/: token {}",
                world.emulator.issuer(),
                world.emulator.token_url()
            )),
            "{stdout}"
        );
        world.emulator.set_well_known(WellKnown {
            issuer: Some("https://evil.example".to_owned()),
            ..WellKnown::default()
        });
        let refused = check(true).await.expect("tokd");
        assert_eq!(refused.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("refusing it"),
            "{refused:?}"
        );
    })
    .await;
}

/// Each preset, with a redirect elsewhere so that `login --no-browser`
/// only prints the URL (no network is needed for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_preset_is_accepted_and_makes_the_documented_authorization_url() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let presets: [(&str, &str, &str, &[&str]); 7] = [
            ("atlassian", "", "https://auth.atlassian.com/authorize?", &["audience=api.atlassian.com", "prompt=consent", "offline_access"]),
            ("bitbucket", "", "https://bitbucket.org/site/oauth2/authorize?", &[]),
            ("github", "", "https://github.com/login/oauth/authorize?", &[]),
            ("gitlab", "", "https://gitlab.com/oauth/authorize?", &[]),
            ("google", "", "https://accounts.google.com/o/oauth2/v2/auth?", &["access_type=offline", "prompt=consent"]),
            ("microsoft", "tenant = \"contoso.onmicrosoft.com\"\n", "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize?", &["offline_access"]),
            ("smartthings", "", "https://api.smartthings.com/oauth/authorize?", &[]),
        ];
        let mut config = String::new();
        for (preset, extra, _, _) in &presets {
            config.push_str(&format!(
                "[consumers.{preset}]\nprovider = \"{preset}\"\nclient_id = \"id\"\nredirect_uri = \"https://app.example.com/cb\"\n{extra}\n[installations.{preset}]\nconsumer = \"{preset}\"\nscopes = [\"read\"]\n\n"
            ));
        }
        world.home.write_config(&config);
        let check = tokio::process::Command::new(tokd_bin())
            .arg("--check-config")
            .arg(world.home.config_path())
            .output()
            .await
            .expect("tokd");
        assert!(check.status.success(), "{check:?}");
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        for (preset, _, authorize, params) in presets {
            let out = world
                .tokctl(&["login", preset, "--no-browser"])
                .await;
            assert_eq!(out.status, 0, "{preset}: {out:?}");
            let url = out.stdout.trim();
            assert!(url.starts_with(authorize), "{preset}: {url}");
            for param in params {
                assert!(url.contains(param), "{preset}: {param} in {url}");
            }
            assert!(url.contains("code_challenge_method=S256"), "{preset}: {url}");
        }
    })
    .await;
}

/// A consumer of a preset whose endpoints point at the emulator instead:
/// the preset's parameters are what make this provider issue a refresh
/// token.
fn preset_on_emulator(world: &World, name: &str, preset: &str, scopes: &str) -> String {
    let secret = world.home.write_secret("acme.secret", SECRET);
    format!(
        r#"
[consumers.{name}]
provider = "{preset}"
auth_url = "{}"
token_url = "{}"
client_id = "{CLIENT_ID}"
client_secret_file = "{}"
redirect_uri = "http://127.0.0.1:{}/callback"

[installations.{name}]
consumer = "{name}"
scopes = [{scopes}]
"#,
        world.emulator.auth_url(),
        world.emulator.token_url(),
        secret.display(),
        world.port
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_google_preset_is_what_gets_a_refresh_token() {
    within(async {
        let world = World::start(Behaviour::google()).await;
        let config = world.config(&preset_on_emulator(&world, "g", "google", "\"email\""));
        world.home.write_config(&config);
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        world.login("g").await;
        assert!(world.stored("g").expect("g")["refresh_token"].is_string());
        assert_eq!(world.tokctl(&["refresh", "g"]).await.status, 0);
        // The same provider without the preset's parameters: no refresh
        // token, so nothing to refresh with.
        world.login("a").await;
        assert!(world.stored("a").expect("a")["refresh_token"].is_null());
        assert_eq!(world.tokctl(&["refresh", "a"]).await.status, 4);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_atlassian_preset_logs_in_and_rides_its_rotation() {
    within(async {
        let world = World::start(Behaviour::atlassian()).await;
        let config = world.config(&preset_on_emulator(
            &world,
            "jira",
            "atlassian",
            "\"read:jira-work\"",
        ));
        world.home.write_config(&config);
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        world.login("jira").await;
        for _ in 0..2 {
            let before = world.stored_refresh_token("jira");
            assert_eq!(world.tokctl(&["refresh", "jira"]).await.status, 0);
            let after = world.stored_refresh_token("jira");
            assert_ne!(before, after, "rotated");
            assert!(!world.emulator.refresh_token_is_valid(&before));
        }
        assert!(
            world
                .emulator
                .access_token_is_valid(&world.get("jira").await)
        );
        // Without the preset (no audience) the provider refuses the login.
        let out = world.tokctl(&["login", "m", "--no-browser"]).await;
        let url = out.stdout.lines().next().unwrap_or_default().to_owned();
        let refused = crate::support::browser()
            .get(&url)
            .send()
            .await
            .expect("authorize");
        assert_eq!(refused.status().as_u16(), 400);
        // The keep-alive schedule: a refresh is due within a week even
        // without a caller.
        let status = world.status("jira").await;
        let next = status["next_refresh"].as_i64().expect("scheduled");
        let now = tokd::schedule::unix_seconds(std::time::SystemTime::now());
        assert!(next - now <= 7 * 24 * 3600, "{status}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_parameters_reach_the_provider() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let secret = world.home.write_secret("acme.secret", SECRET);
        let config = world.config(&format!(
            r#"
[consumers.extra]
token_url = "{}"
auth_url = "{}"
client_id = "{CLIENT_ID}"
client_secret_file = "{}"
redirect_uri = "https://app.example.com/cb"
auth_params = {{ login_hint = "me@example.com" }}
token_params = {{ resource = "https://api.example.com" }}

[installations.e]
consumer = "extra"

[installations.ebot]
consumer = "extra"
grant = "client_credentials"
"#,
            world.emulator.token_url(),
            world.emulator.auth_url(),
            secret.display()
        ));
        world.home.write_config(&config);
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        let out = world.tokctl(&["login", "e", "--no-browser"]).await;
        assert!(
            out.stdout.contains("login_hint=me%40example.com"),
            "{out:?}"
        );
        world.get("ebot").await;
        let request = world.emulator.last_request().expect("recorded");
        assert_eq!(
            request.form_value("resource"),
            Some("https://api.example.com")
        );
    })
    .await;
}
