//! tokctl on its own: usage errors and an absent daemon. (The tests with a
//! running tokd are in the daemon crate's `it::e2e`; this file also makes
//! `cargo test --workspace` build the tokctl binary they run.)

use std::process::{Command, Output, Stdio};

fn tokctl(args: &[&str], bus: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokctl"))
        .args(args)
        .env("DBUS_SESSION_BUS_ADDRESS", bus)
        // Never the private socket of a tokd the developer runs.
        .env("XDG_RUNTIME_DIR", "/nonexistent/tokd-test/runtime")
        .stdin(Stdio::null())
        .output()
        .expect("run tokctl")
}

const NO_BUS: &str = "unix:path=/nonexistent/tokd-test/bus";

#[test]
fn bad_usage_exits_2_with_nothing_on_stdout() {
    for args in [
        &["get"][..],
        &["frobnicate"],
        &["get", "x", "--format", "yaml"],
        &["get", "x", "--min-valid", "soon"],
        &["exec", "x", "--env", "LD_PRELOAD", "--", "true"],
        &["exec", "--env", "x=BASH_ENV", "--", "true"],
        &["get", "x", "--format", "xoauth2"],
        &["get", "x", "--user", "me@example.com"],
        &[],
    ] {
        let out = tokctl(args, NO_BUS);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.lines().count(),
            1,
            "one line, as the README says: {stderr}"
        );
        assert!(stderr.starts_with("tokctl: "), "{stderr}");
    }
    let out = tokctl(&["get"], NO_BUS);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "tokctl: the following required arguments were not provided: <NAME> (usage: tokctl get <NAME>)\n"
    );
}

#[test]
fn help_describes_names_and_json_fields() {
    let out = tokctl(&["get", "--help"], NO_BUS);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("The installation, as named in the config"),
        "{help}"
    );
    let out = tokctl(&["list", "--help"], NO_BUS);
    let help = String::from_utf8_lossy(&out.stdout);
    for field in ["expires_at", "next_refresh", "last_error", "needs-login"] {
        assert!(help.contains(field), "{field} missing from:\n{help}");
    }
}

#[test]
fn help_documents_the_exit_statuses() {
    let out = tokctl(&["--help"], NO_BUS);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for line in [
        "3  no installation",
        "4  a login is needed",
        "7  tokd cannot be reached",
    ] {
        assert!(help.contains(line), "{line:?} missing from:\n{help}");
    }
}

#[test]
fn no_session_bus_exits_7_with_one_line() {
    let out = tokctl(&["get", "x"], NO_BUS);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("session bus"), "{stderr}");
}
