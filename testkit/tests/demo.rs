//! The README's demo runs from start to end and shows what it promises.

use std::path::Path;
use std::process::Command;

#[test]
fn the_demo_logs_in_lists_refreshes_and_cleans_up() {
    let demo = Path::new(env!("CARGO_BIN_EXE_tokd-demo"));
    let bin_dir = demo.parent().expect("target folder");
    for name in ["tokd", "tokctl"] {
        assert!(
            bin_dir.join(name).exists(),
            "{name} is not built next to the demo: run `cargo test --workspace`"
        );
    }
    let output = Command::new(demo)
        .env("TOKD_DEMO_BIN_DIR", bin_dir)
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .output()
        .expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "$ tokctl login work --no-browser",
        "tokctl: logged in: `work` holds a fresh token",
        "tokctl: logged in: `personal` holds a fresh token",
        "NAME      STATE",
        "TokenRefreshed signal for `work`",
        "a new token, without any caller asking",
        "tokd stopped on SIGTERM (exit status: 0)",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    // Its temporary folders are gone.
    let config_line = stdout
        .lines()
        .find(|line| line.starts_with("== tokd with this config ("))
        .expect("config line");
    let path = config_line
        .trim_start_matches("== tokd with this config (")
        .trim_end_matches("):");
    assert!(!Path::new(path).exists(), "{path} was left behind");
}
