//! The README's first command: `cargo run --bin tokd-demo`.
//!
//! Builds tokd and tokctl, then, all inside temporary folders and on
//! loopback: starts a private session bus, the provider emulator (behaving
//! like a WSO2 server with 20-second tokens), and tokd with a generated
//! config; logs two installations of one consumer in headlessly (playing
//! the browser); shows `tokctl list`; gets tokens across a scheduled
//! refresh; and cleans up. Nothing touches your own bus, config or tokens.
#![allow(clippy::print_stdout)] // a demo talks to its user

use futures_util::StreamExt;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Duration;
use tokd_testkit::{Behaviour, Emulator, Home, PrivateBus, Tokd, free_port};
use tokio::io::{AsyncBufReadExt, BufReader};

const CLIENT_ID: &str = "demo-client";
const SECRET: &str = "demo-secret";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match tokio::time::timeout(Duration::from_secs(600), demo()).await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("tokd-demo: {error}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("tokd-demo: gave up after 10 minutes");
            ExitCode::FAILURE
        }
    }
}

async fn demo() -> Result<(), String> {
    let bin = build()?;
    println!(
        "== a provider emulator on loopback (WSO2-like: rotating refresh tokens, 20 s access tokens)"
    );
    let mut behaviour = Behaviour::wso2();
    behaviour.access_lifetime = Duration::from_secs(20);
    let emulator = Emulator::start(behaviour).await;
    emulator.register_client(CLIENT_ID, SECRET);
    println!("   {}", emulator.base_url());

    println!("== a private session bus");
    let bus = PrivateBus::start();
    println!("   {}", bus.address());

    let home = Home::new();
    let secret = home.write_secret("acme.secret", SECRET);
    let port = free_port();
    let acme = emulator.consumer_table(
        "acme",
        CLIENT_ID,
        &secret,
        &format!("http://127.0.0.1:{port}/callback"),
    );
    let config = format!(
        r#"{acme}
[installations.work]
consumer = "acme"
scopes = ["read", "write"]

[installations.personal]
consumer = "acme"
scopes = ["read"]

[installations.bot]
consumer = "acme"
grant = "client_credentials"
"#
    );
    home.write_config(&config);
    println!(
        "== tokd with this config ({}):",
        home.config_path().display()
    );
    for line in config.lines() {
        println!("   | {line}");
    }
    let mut tokd = Tokd::start(&bin.join("tokd"), &home, &bus).await;
    println!(
        "   tokd is running (pid {}) and owns org.tokd.tokd1",
        tokd.pid()
    );

    let tokctl = Tokctl {
        path: bin.join("tokctl"),
        home: &home,
        bus: &bus,
    };
    for name in ["work", "personal"] {
        tokctl.login(name).await?;
    }

    println!("\n$ tokctl list");
    print!("{}", tokctl.ok(&["list"]).await?);
    println!("\n$ tokctl get bot          # client credentials: requested on first use");
    println!("{}", short(&tokctl.ok(&["get", "bot"]).await?));
    println!("$ tokctl get work --min-valid 1s");
    let before = tokctl.ok(&["get", "work", "--min-valid", "1s"]).await?;
    println!("{}", short(&before));

    println!("\n== waiting for the scheduled refresh of `work` (due about 10 s after login)…");
    let connection = bus.connect().await;
    let proxy = tokd_shared::ManagerProxy::new(&connection)
        .await
        .map_err(|e| e.to_string())?;
    let mut refreshed = proxy
        .receive_token_refreshed()
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let signal = refreshed.next().await.ok_or("the bus went away")?;
        if signal.args().is_ok_and(|args| args.name == "work") {
            break;
        }
    }
    println!("   TokenRefreshed signal for `work`");
    println!("$ tokctl get work --min-valid 1s");
    let after = tokctl.ok(&["get", "work", "--min-valid", "1s"]).await?;
    println!("{}", short(&after));
    if before == after {
        return Err("the token did not change across the refresh".into());
    }
    println!("   a new token, without any caller asking; the refresh token rotated too");
    println!("\n$ tokctl list");
    print!("{}", tokctl.ok(&["list"]).await?);
    let counters = emulator.counters();
    println!(
        "\n   the provider saw {} code exchanges, {} refresh(es), {} client-credentials request(s)",
        counters.authorization_code, counters.refresh_token, counters.client_credentials
    );

    println!("\n== cleaning up");
    let status = tokd.terminate();
    println!("   tokd stopped on SIGTERM ({status})");
    drop(bus);
    drop(home);
    println!("   private bus stopped, temporary config and state removed");
    Ok(())
}

/// Builds tokd and tokctl with the same profile as this binary and returns
/// the folder they are in. `TOKD_DEMO_BIN_DIR` names a folder where they
/// are built already (the test of this demo uses it).
fn build() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("TOKD_DEMO_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe.parent().ok_or("no folder")?.to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("== building tokd and tokctl (cargo's progress below)");
    let mut command = std::process::Command::new(cargo);
    // The whole workspace, as `cargo run --bin tokd-demo` at its root
    // resolved it: the same features, so every crate the outer build made
    // is reused (with `-p` lists that differ, cargo resolves features
    // anew and builds most crates a second time).
    command.args(["build", "--workspace", "--bins"]);
    // What `cargo run` set for this binary would otherwise reach the
    // build scripts of the inner build, which then builds ring, rustls
    // and tokd again (and the next plain `cargo build` once more).
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str()
            && set_by_cargo_run(name)
        {
            command.env_remove(name);
        }
    }
    if dir.file_name().is_some_and(|name| name == "release") {
        command.arg("--release");
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build failed ({status})"));
    }
    for name in ["tokd", "tokctl"] {
        if !dir.join(name).exists() {
            return Err(format!("{} was not built", dir.join(name).display()));
        }
    }
    Ok(dir)
}

/// Whether `name` is one of the variables `cargo run` sets for the
/// program it runs (as opposed to the user's own cargo settings, such as
/// `CARGO_HOME` or `CARGO_TARGET_DIR`, which the inner build must keep).
fn set_by_cargo_run(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_RUSTC_CURRENT_DIR"
        )
}

/// The first characters of a token: enough to see it change.
fn short(token: &str) -> String {
    let token = token.trim();
    format!(
        "{}… ({} characters)",
        &token[..token.len().min(12)],
        token.len()
    )
}

struct Tokctl<'a> {
    path: PathBuf,
    home: &'a Home,
    bus: &'a PrivateBus,
}

impl Tokctl<'_> {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        self.home.tokctl(&self.path, self.bus, args)
    }

    async fn ok(&self, args: &[&str]) -> Result<String, String> {
        let output = self
            .command(args)
            .output()
            .await
            .map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            return Err(format!("tokctl {}: {stderr}", args.join(" ")));
        }
        for line in stderr.lines() {
            println!("   {line}");
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `tokctl login NAME --no-browser`, with this program as the browser.
    async fn login(&self, name: &str) -> Result<(), String> {
        println!("\n$ tokctl login {name} --no-browser");
        let mut child = self
            .command(&["login", name, "--no-browser"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut url = String::new();
        stdout
            .read_line(&mut url)
            .await
            .map_err(|e| e.to_string())?;
        let url = url.trim().to_owned();
        println!("{url}");
        println!(
            "   (the demo plays the browser: the emulator approves at once and redirects to tokd's loopback listener)"
        );
        let callback = browse(&url).await?;
        let page = browse(&callback).await?;
        if !page.contains("Logged in") {
            return Err(format!("the listener answered: {page}"));
        }
        let output = child.wait_with_output().await.map_err(|e| e.to_string())?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in stderr.lines() {
            println!("   {line}");
        }
        if !output.status.success() {
            return Err(format!("tokctl login {name} failed"));
        }
        Ok(())
    }
}

/// One GET without following redirects: the `Location` of a redirect, or
/// the body otherwise.
async fn browse(url: &str) -> Result<String, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    if let Some(location) = response.headers().get(reqwest::header::LOCATION) {
        return Ok(location.to_str().map_err(|e| e.to_string())?.to_owned());
    }
    response.text().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::set_by_cargo_run;

    #[test]
    fn the_inner_build_loses_what_cargo_run_set_and_keeps_the_users_settings() {
        for name in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_NAME",
        ] {
            assert!(set_by_cargo_run(name), "{name}");
        }
        for name in [
            "CARGO",
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_JOBS",
            "CARGO_TERM_COLOR",
            "CARGO_PROFILE_RELEASE_LTO",
        ] {
            assert!(!set_by_cargo_run(name), "{name}");
        }
    }
}
