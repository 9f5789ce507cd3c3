//! `tokd --check-config` as a user runs it: the real binary, real files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

const VALID: &str = r#"
[consumers.bitbucket]
provider = "bitbucket"
client_id = "KEY"
client_secret_command = ["pass", "show", "bitbucket/oauth"]
redirect_uri = "http://127.0.0.1:8765/callback"

[installations.bitbucket]
consumer = "bitbucket"
scopes = ["repository"]

[installations.bitbucket-work]
consumer = "bitbucket"
scopes = ["repository", "pullrequest"]
"#;

/// Runs tokd with a clean environment rooted in `home`.
fn tokd(home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokd"));
    command
        .args(args)
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("run tokd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_valid_config_prints_a_summary_and_exits_zero() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = home.path().join("config.toml");
    std::fs::write(&path, VALID).expect("write");
    let output = tokd(
        home.path(),
        &["--check-config", path.to_str().expect("utf8")],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(
        text(&output.stdout),
        format!(
            "{}: ok: 1 consumer (bitbucket), 2 installations (bitbucket, bitbucket-work)\n",
            path.display()
        )
    );
}

#[test]
fn an_invalid_config_names_file_and_line_and_exits_one() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = home.path().join("config.toml");
    std::fs::write(
        &path,
        VALID.replace(
            "consumer = \"bitbucket\"\nscopes = [\"repository\"]",
            "consumer = \"bitbukcet\"\nscopes = [\"repository\"]",
        ),
    )
    .expect("write");
    let output = tokd(
        home.path(),
        &["--check-config", path.to_str().expect("utf8")],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty(), "stdout stays empty on error");
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(&format!(
            "tokd: {}:9:12: installation `bitbucket` names consumer `bitbukcet`",
            path.display()
        )),
        "{stderr}"
    );
}

#[test]
fn the_default_path_follows_xdg_and_tokd_config_and_config() {
    let home = tempfile::tempdir().expect("tempdir");
    let xdg = home.path().join("xdg");
    std::fs::create_dir_all(xdg.join("tokd")).expect("mkdir");
    std::fs::write(xdg.join("tokd/config.toml"), VALID).expect("write");
    let xdg_text = xdg.to_str().expect("utf8");
    let output = tokd(
        home.path(),
        &["--check-config"],
        &[("XDG_CONFIG_HOME", xdg_text)],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with(&format!("{}/tokd/config.toml: ok", xdg.display())));

    // Without XDG_CONFIG_HOME: ~/.config/tokd/config.toml.
    let output = tokd(home.path(), &["--check-config"], &[]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{}/.config/tokd/config.toml",
            home.path().display()
        )),
        "{stderr}"
    );

    // TOKD_CONFIG overrides XDG; --config overrides both.
    let other = home.path().join("other.toml");
    std::fs::write(&other, "").expect("write");
    let other_text = other.to_str().expect("utf8");
    let output = tokd(
        home.path(),
        &["--check-config"],
        &[("XDG_CONFIG_HOME", xdg_text), ("TOKD_CONFIG", other_text)],
    );
    assert_eq!(
        text(&output.stdout),
        format!("{other_text}: ok: 0 consumers, 0 installations\n")
    );
    let output = tokd(
        home.path(),
        &["--config", other_text, "--check-config"],
        &[("XDG_CONFIG_HOME", xdg_text)],
    );
    assert_eq!(
        text(&output.stdout),
        format!("{other_text}: ok: 0 consumers, 0 installations\n")
    );
}

#[test]
fn an_inline_secret_in_a_readable_file_warns_without_showing_it() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = home.path().join("config.toml");
    std::fs::write(
        &path,
        "[consumers.c]\nprovider = \"github\"\nclient_id = \"id\"\nclient_secret = \"inline-secret-value\"\n",
    )
    .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = tokd(
        home.path(),
        &["--check-config", path.to_str().expect("utf8")],
        &[],
    );
    assert!(output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("WARN") && stderr.contains("chmod 600"),
        "{stderr}"
    );
    let everything = text(&output.stdout) + &stderr;
    assert!(!everything.contains("inline-secret-value"), "{everything}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let output = tokd(
        home.path(),
        &["--check-config", path.to_str().expect("utf8")],
        &[],
    );
    assert!(!text(&output.stderr).contains("WARN"), "no warning at 0600");
}

#[test]
fn bad_usage_exits_two() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = tokd(home.path(), &["--no-such-flag"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
}
