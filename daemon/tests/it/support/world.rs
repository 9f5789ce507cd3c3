//! One test's world: the provider emulator, a private bus, a throw-away
//! home and the real `tokd`, with the helpers tests drive them by (tokctl
//! runs, a browser that follows nothing, the state files).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokd_shared::ManagerProxy;
use tokd_testkit::{Behaviour, Emulator, GnomeKeyring, Home, PrivateBus, Tokd, free_port};
use tokio::io::{AsyncBufReadExt, BufReader};

pub const CLIENT_ID: &str = "client-1";
pub const SECRET: &str = "e2e-client-secret-value";

pub fn tokd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tokd"))
}

/// tokctl is built next to tokd by `cargo test --workspace` (its own
/// package has integration tests, so cargo builds the binary).
pub fn tokctl_bin() -> PathBuf {
    let path = tokd_bin().with_file_name("tokctl");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// What a tokctl run printed.
#[derive(Debug)]
pub struct Out {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Where a world's tokd keeps its tokens: its `[daemon] store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenStore {
    File,
    Keyring,
}

impl TokenStore {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenStore::File => "file",
            TokenStore::Keyring => "keyring",
        }
    }
}

/// One test's world: emulator, private bus, home and a running tokd.
pub struct World {
    pub emulator: Emulator,
    pub bus: PrivateBus,
    pub home: Home,
    pub tokd: Option<Tokd>,
    pub port: u16,
    /// The store the config names (`None`: no `store` key, tokd's
    /// default).
    pub store: Option<TokenStore>,
    /// A real GNOME Keyring on the world's bus, for the keyring store.
    pub keyring: Option<GnomeKeyring>,
    log_filter: &'static str,
}

impl World {
    /// A config with a loopback consumer `acme` installed as `a` and `b`,
    /// a consumer `manual` whose redirect is not on this machine, installed
    /// as `m`, and a client-credentials installation `bot`.
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_with_log(behaviour, "debug").await
    }

    /// As `start`, with tokd's `TOKD_LOG` set to `filter`.
    pub async fn start_with_log(behaviour: Behaviour, filter: &'static str) -> Self {
        let mut world = Self::prepare_with_log(behaviour, filter).await;
        world.start_tokd().await;
        world
    }

    /// As `start`, without starting tokd (`start_tokd` does).
    pub async fn prepare(behaviour: Behaviour) -> Self {
        Self::prepare_with_log(behaviour, "debug").await
    }

    /// As `start`, with the tokens kept in `store` (named in the config;
    /// for the keyring, a GNOME Keyring runs on the world's bus first).
    pub async fn start_in(store: TokenStore, behaviour: Behaviour) -> Self {
        let mut world = Self::prepare_in(store, behaviour).await;
        world.start_tokd().await;
        world
    }

    /// As `start_in`, without starting tokd.
    pub async fn prepare_in(store: TokenStore, behaviour: Behaviour) -> Self {
        let mut world = Self::prepare(behaviour).await;
        if store == TokenStore::Keyring {
            world.keyring = Some(GnomeKeyring::start(&world.bus).await);
        }
        world.store = Some(store);
        world.home.write_config(&world.config(""));
        world
    }

    /// The keyring of a world that keeps its tokens there.
    pub fn gnome(&mut self) -> &mut GnomeKeyring {
        self.keyring.as_mut().expect("a keyring runs in this world")
    }

    async fn prepare_with_log(behaviour: Behaviour, filter: &'static str) -> Self {
        let emulator = Emulator::start(behaviour).await;
        emulator.register_client(CLIENT_ID, SECRET);
        let bus = PrivateBus::start();
        let home = Home::new();
        let port = free_port();
        let world = Self {
            emulator,
            bus,
            home,
            tokd: None,
            port,
            store: None,
            keyring: None,
            log_filter: filter,
        };
        world.home.write_config(&world.config(""));
        world
    }

    /// The world's config (see `start`) with `extra` appended, and the
    /// world's `store` in its `[daemon]` table.
    pub fn config(&self, extra: &str) -> String {
        let Some(store) = self.store else {
            return self.config_text(extra);
        };
        let line = format!("store = \"{}\"\n", store.as_str());
        match extra.find("[daemon]\n") {
            Some(at) => {
                let mut extra = extra.to_owned();
                extra.insert_str(at + "[daemon]\n".len(), &line);
                self.config_text(&extra)
            }
            None => self.config_text(&format!("{extra}\n[daemon]\n{line}")),
        }
    }

    fn config_text(&self, extra: &str) -> String {
        let secret = self.home.write_secret("acme.secret", SECRET);
        let acme = self.emulator.consumer_table(
            "acme",
            CLIENT_ID,
            &secret,
            &format!("http://127.0.0.1:{}/callback", self.port),
        );
        let manual = self.emulator.consumer_table(
            "manual",
            CLIENT_ID,
            &secret,
            "https://app.example.com/callback",
        );
        format!(
            r#"{acme}
{manual}
[installations.a]
consumer = "acme"
scopes = ["read"]

[installations.b]
consumer = "acme"
scopes = ["read"]

[installations.m]
consumer = "manual"
scopes = ["read"]

[installations.bot]
consumer = "acme"
grant = "client_credentials"
{extra}"#
        )
    }

    pub async fn start_tokd(&mut self) {
        self.tokd = Some(
            Tokd::start_with_env(
                &tokd_bin(),
                &self.home,
                &self.bus,
                &[("TOKD_LOG", self.log_filter)],
            )
            .await,
        );
    }

    /// Replaces the running tokd (killed) by one run through `wrapper`.
    pub async fn restart_tokd_wrapped(&mut self, wrapper: &[&str]) {
        self.tokd = None;
        self.tokd = Some(
            Tokd::start_wrapped(
                wrapper,
                &tokd_bin(),
                &self.home,
                &self.bus,
                &[("TOKD_LOG", self.log_filter)],
            )
            .await,
        );
    }

    pub fn tokd(&mut self) -> &mut Tokd {
        self.tokd.as_mut().expect("tokd runs")
    }

    /// The JSON record of `name` in the state folder, if there is one.
    pub fn stored(&self, name: &str) -> Option<serde_json::Value> {
        let text =
            std::fs::read_to_string(self.home.state_dir().join(format!("{name}.json"))).ok()?;
        Some(serde_json::from_str(&text).expect("a parseable state file"))
    }

    /// The refresh token in `name`'s state file.
    pub fn stored_refresh_token(&self, name: &str) -> String {
        self.stored(name)
            .and_then(|record| record["refresh_token"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("{name} has a stored refresh token"))
    }

    /// The refresh token kept for `name` where the world keeps tokens:
    /// its state file, or its keyring item.
    pub async fn kept_refresh_token(&self, name: &str) -> Option<String> {
        self.kept(name, "refresh_token").await
    }

    async fn kept(&self, name: &str, field: &str) -> Option<String> {
        let record = match &self.keyring {
            Some(gnome) if self.store == Some(TokenStore::Keyring) => gnome
                .items()
                .await
                .into_iter()
                .find(|item| item.attributes.get("installation").map(String::as_str) == Some(name))
                .and_then(|item| serde_json::from_str::<serde_json::Value>(&item.secret).ok())?,
            _ => self.stored(name)?,
        };
        record[field].as_str().map(str::to_owned)
    }

    /// Checks that `name`'s tokens are kept as the world's store promises:
    /// in a 0600 state file in a 0700 folder, or in the keyring with none
    /// of `secrets` in any file of the state folder.
    pub async fn assert_kept_privately(&self, name: &str, secrets: &[&str]) {
        // A client-credentials installation keeps an access token only.
        let kept = match self.kept_refresh_token(name).await {
            Some(refresh) => refresh,
            None => self
                .kept(name, "access_token")
                .await
                .unwrap_or_else(|| panic!("{name} keeps a token")),
        };
        let state = self.home.state_dir();
        assert_eq!(super::mode(&state), 0o700, "the state folder");
        match self.store {
            Some(TokenStore::Keyring) => {
                for (path, text) in everything_in(&state) {
                    for secret in secrets.iter().chain([&kept.as_str()]) {
                        assert!(
                            !text.contains(secret),
                            "{} holds a token in plain text",
                            path.display()
                        );
                    }
                }
            }
            _ => {
                let file = state.join(format!("{name}.json"));
                assert_eq!(super::mode(&file), 0o600, "{}", file.display());
            }
        }
    }

    /// `tokctl status NAME --json`, parsed.
    pub async fn status(&self, name: &str) -> serde_json::Value {
        let out = self.tokctl(&["status", name, "--json"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        serde_json::from_str(&out.stdout).expect("status JSON")
    }

    pub fn log(&self) -> String {
        self.tokd.as_ref().map(Tokd::log_text).unwrap_or_default()
    }

    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        self.home.tokctl(&tokctl_bin(), &self.bus, args)
    }

    pub async fn tokctl(&self, args: &[&str]) -> Out {
        let output = self.command(args).output().await.expect("run tokctl");
        Out {
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `tokctl get NAME`, which must succeed; returns the token.
    pub async fn get(&self, name: &str) -> String {
        self.get_with(name, &[]).await
    }

    /// `tokctl get NAME ARGS…`, which must succeed; returns the token.
    pub async fn get_with(&self, name: &str, args: &[&str]) -> String {
        let mut all = vec!["get", name];
        all.extend_from_slice(args);
        let out = self.tokctl(&all).await;
        assert_eq!(out.status, 0, "get {name}: {out:?}\nlog:\n{}", self.log());
        assert!(out.stderr.is_empty(), "{out:?}");
        let token = out.stdout.strip_suffix('\n').expect("a newline").to_owned();
        assert!(!token.is_empty() && !token.contains('\n'), "{out:?}");
        token
    }

    /// Starts `tokctl login NAME --no-browser` and returns it with the URL
    /// it printed.
    pub async fn begin_login(&self, name: &str) -> (tokio::process::Child, String) {
        let mut child = self
            .command(&["login", name, "--no-browser"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tokctl login");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut url = String::new();
        stdout.read_line(&mut url).await.expect("the login URL");
        let url = url.trim().to_owned();
        assert!(url.starts_with(&self.emulator.auth_url()), "{url}");
        assert!(url.contains("code_challenge_method=S256"), "{url}");
        (child, url)
    }

    /// Logs in through the daemon's loopback listener, playing the browser.
    pub async fn login(&self, name: &str) {
        let (child, url) = self.begin_login(name).await;
        self.finish_login(child, &url).await;
    }

    /// Plays the browser at a login URL tokd made: the provider sends it
    /// back to tokd's loopback listener, whose page must say it is done.
    pub async fn play_browser(&self, url: &str) {
        assert!(url.starts_with(&self.emulator.auth_url()), "{url}");
        let location = browse(url).await;
        let callback = format!("http://127.0.0.1:{}/callback?", self.port);
        assert!(location.starts_with(&callback), "{location}");
        let page = browser()
            .get(&location)
            .send()
            .await
            .expect("the daemon's listener answers")
            .text()
            .await
            .expect("page");
        assert!(page.contains("Logged in"), "{page}\nlog:\n{}", self.log());
    }

    /// Plays the browser for a login `begin_login` started, and checks
    /// that tokctl says it is done.
    pub async fn finish_login(&self, child: tokio::process::Child, url: &str) {
        self.play_browser(url).await;
        let output = child.wait_with_output().await.expect("tokctl login ends");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("logged in"), "{stderr}");
    }

    pub async fn proxy(&self) -> (zbus::Connection, ManagerProxy<'static>) {
        let connection = self.bus.connect().await;
        let proxy = ManagerProxy::new(&connection).await.expect("proxy");
        (connection, proxy)
    }
}

/// Every file under `dir`, read whole.
pub fn everything_in(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(everything_in(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            found.push((path, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    found
}

/// Plays the browser at the provider: opens `url`, follows nothing, and
/// returns where the provider sends the browser back to.
pub async fn browse(url: &str) -> String {
    let response = browser().get(url).send().await.expect("authorize");
    assert_eq!(
        response.status().as_u16(),
        302,
        "the provider redirects back"
    );
    response.headers()[reqwest::header::LOCATION]
        .to_str()
        .expect("location")
        .to_owned()
}

/// An HTTP client that follows no redirect, as a browser seen step by step.
pub fn browser() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("browser")
}

pub fn query_value(url: &str, key: &str) -> String {
    url::Url::parse(url)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{key} in {url}"))
}
