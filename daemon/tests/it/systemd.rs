//! The files in systemd/: the user unit passes `systemd-analyze verify`
//! without a warning, and the D-Bus activation file starts tokd on the
//! first call.

use crate::support::{World, tokctl_bin, within};
use std::path::{Path, PathBuf};
use std::process::Command;
use tokd_testkit::Behaviour;

fn repo_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bindir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tokd"))
        .parent()
        .expect("bin folder")
        .to_path_buf()
}

#[test]
fn the_user_unit_passes_systemd_analyze_verify_without_warnings() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let unit = dir.path().join("tokd.service");
    let text = repo_file("tokd.service").replace("@BINDIR@", &bindir().display().to_string());
    std::fs::write(&unit, text).expect("unit");
    let output = Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .arg(&unit)
        .env("XDG_RUNTIME_DIR", dir.path())
        .output()
        .expect("systemd-analyze must be installed (Debian: systemd); .ci/run installs it");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "warnings:\n{stderr}");
}

#[test]
fn the_unit_and_the_activation_file_name_the_bus_name_and_each_other() {
    let unit = repo_file("tokd.service");
    for line in [
        "Type=dbus",
        "BusName=org.tokd.tokd1",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ReadWritePaths=%S/tokd",
        "RuntimeDirectory=tokd",
        "RuntimeDirectoryMode=0700",
        "LimitCORE=0",
        "TimeoutStopSec=80s",
        "ExecStart=@BINDIR@/tokd",
    ] {
        assert!(unit.lines().any(|l| l == line), "tokd.service lacks {line}");
    }
    let activation = repo_file("org.tokd.tokd1.service");
    for line in [
        "[D-BUS Service]",
        "Name=org.tokd.tokd1",
        "Exec=@BINDIR@/tokd",
        "SystemdService=tokd.service",
    ] {
        assert!(
            activation.lines().any(|l| l == line),
            "activation file lacks {line}"
        );
    }
    assert_eq!(tokd_shared::BUS_NAME, "org.tokd.tokd1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_tokctl_call_starts_tokd_through_the_activation_file() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        drop(world.tokd.take());
        // The repository's activation file, with the environment a login
        // session would give the activated daemon.
        install_the_activation_file(&world);
        let out = world.tokctl(&["get", "bot"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert!(world.emulator.access_token_is_valid(out.stdout.trim()));
        let _ = tokctl_bin();
    })
    .await;
}

/// A config tokd cannot use, found when tokctl's call activates it: tokctl
/// says why, with the file's line, and a status of its own (9), instead of
/// "could not be started"; fixing the file and running the command again,
/// as it says, works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokd_that_cannot_start_says_why_through_tokctl() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        drop(world.tokd.take());
        install_the_activation_file(&world);
        let good = world.config("");
        let broken = good.replacen("client_id = ", "client_idd = ", 1);
        world.home.write_config(&broken);

        let out = world.tokctl(&["get", "bot"]).await;
        assert_eq!(out.status, 9, "{out:?}");
        let config = world.home.path().join("config/tokd/config.toml");
        assert!(
            out.stderr
                .contains(&format!("tokd cannot start: {}:", config.display())),
            "{out:?}"
        );
        assert!(out.stderr.contains("unknown field `client_idd`"), "{out:?}");
        assert!(
            out.stderr.contains("fix that and run the command again"),
            "{out:?}"
        );

        world.home.write_config(&good);
        let out = world.tokctl(&["get", "bot"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert!(
            !world.home.path().join("runtime/tokd/start-error").exists(),
            "a start that works removes the reason"
        );
    })
    .await;
}

/// The repository's activation file on the world's bus, with the
/// environment a login session would give the activated daemon.
fn install_the_activation_file(world: &World) {
    let env: Vec<String> = world
        .home
        .env(&world.bus)
        .into_iter()
        .filter(|(key, _)| key != "DBUS_SESSION_BUS_ADDRESS")
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let exec = format!("/usr/bin/env {} {}/tokd", env.join(" "), bindir().display());
    let text =
        repo_file("org.tokd.tokd1.service").replace("Exec=@BINDIR@/tokd", &format!("Exec={exec}"));
    std::fs::write(world.bus.service_dir().join("org.tokd.tokd1.service"), text)
        .expect("activation file");
}
