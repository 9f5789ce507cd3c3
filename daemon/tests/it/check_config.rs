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
    assert_eq!(
        stderr,
        format!(
            "tokd: warning: consumer `c`: {} holds a client_secret and is readable by other users; run `chmod 600 {}`\n",
            path.display(),
            path.display()
        )
    );
    let everything = text(&output.stdout) + &stderr;
    assert!(!everything.contains("inline-secret-value"), "{everything}");

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let output = tokd(
        home.path(),
        &["--check-config", path.to_str().expect("utf8")],
        &[],
    );
    assert_eq!(text(&output.stderr), "", "no warning at 0600");
}

#[test]
fn secret_files_and_programs_are_checked_without_reading_a_secret() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = home.path().join("config.toml");
    let loose = home.path().join("loose.secret");
    std::fs::write(&loose, "s3cr3t-in-a-loose-file").expect("write");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let tight = home.path().join("tight.secret");
    std::fs::write(&tight, "s3cr3t-in-a-tight-file").expect("write");
    std::fs::set_permissions(&tight, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let table = |name: &str, secret: &str| {
        format!("[consumers.{name}]\nprovider = \"github\"\nclient_id = \"id\"\n{secret}\n")
    };
    let config = [
        table("missing", "client_secret_file = \"absent.secret\""),
        table("loose", "client_secret_file = \"loose.secret\""),
        table("tight", "client_secret_file = \"tight.secret\""),
        table(
            "noprog",
            "client_secret_command = [\"tokd-no-such-program\", \"x\"]",
        ),
        table("badpath", "client_secret_command = [\"/nonexistent/pass\"]"),
        table(
            "prog",
            "client_secret_command = [\"sh\", \"-c\", \"echo s\"]",
        ),
    ]
    .concat();
    std::fs::write(&path, config).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let output = tokd(
        home.path(),
        &["--check-config", path.to_str().expect("utf8")],
        &[],
    );
    assert!(output.status.success(), "warnings do not fail the check");
    let stderr = text(&output.stderr);
    let dir = home.path().display();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            "tokd: warning: consumer `badpath`: the client_secret_command program `/nonexistent/pass` is not found or not executable".to_owned(),
            format!(
                "tokd: warning: consumer `loose`: client_secret_file {dir}/loose.secret is readable by other users; run `chmod 600 {dir}/loose.secret`"
            ),
            format!(
                "tokd: warning: consumer `missing`: client_secret_file {dir}/absent.secret does not exist; requests that need the secret fail until it does"
            ),
            "tokd: warning: consumer `noprog`: the client_secret_command program `tokd-no-such-program` is not found on PATH".to_owned(),
        ]
    );
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}

/// "run `chmod 600 FILE`", run as written: the warning goes.
#[test]
fn warnings_that_name_a_fix_go_once_it_is_made() {
    let home = tempfile::tempdir().expect("tempdir");
    let path = home.path().join("config.toml");
    let loose = home.path().join("loose.secret");
    std::fs::write(&loose, "s3cr3t").expect("write");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(
        &path,
        "[consumers.c]\nprovider = \"github\"\nclient_id = \"id\"\nclient_secret_file = \"loose.secret\"\n",
    )
    .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let check = || {
        text(
            &tokd(
                home.path(),
                &["--check-config", path.to_str().expect("utf8")],
                &[],
            )
            .stderr,
        )
    };
    let warned = check();
    let command = warned
        .split("run `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("a command to run in: {warned}"));
    let ran = Command::new("sh")
        .args(["-c", command])
        .status()
        .expect("sh");
    assert!(ran.success(), "{command}");
    assert_eq!(check(), "", "no warning once `{command}` ran");
}

#[test]
fn bad_usage_exits_two() {
    let home = tempfile::tempdir().expect("tempdir");
    let output = tokd(home.path(), &["--no-such-flag"], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
}

/// The repository's root.
fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every key each table accepts, as the parser lists them when it
/// refuses an unknown one: what the docs must cover.
fn accepted_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for table in ["[daemon]", "[consumers.c]", "[installations.i]"] {
        let text = format!("{table}\nzz_not_a_key = 1\n");
        let error = tokd::config::Config::from_str(&text)
            .expect_err("an unknown key is refused")
            .to_string();
        let listed = error
            .split_once("expected")
            .unwrap_or_else(|| panic!("the refusal lists the keys: {error}"))
            .1;
        let found: Vec<String> = listed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect();
        assert!(found.len() >= 2, "{error}");
        keys.extend(found);
    }
    keys
}

#[test]
fn every_key_is_in_the_example_the_man_page_and_the_readme() {
    let keys = accepted_keys();
    assert!(keys.iter().any(|k| k == "git_hosts"), "{keys:?}");
    let example = std::fs::read_to_string(repo().join("examples/config.toml")).expect("example");
    let man = std::fs::read_to_string(repo().join("man/tokd.conf.5")).expect("tokd.conf.5");
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README");
    let mut missing = Vec::new();
    for key in &keys {
        let in_example = example.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.strip_prefix(key.as_str())
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        if !in_example {
            missing.push(format!("{key} in examples/config.toml"));
        }
        // A term of the man page: `.B key` or `.BR key ", " other`.
        let in_man = man.lines().any(|line| {
            (line.starts_with(".B ") || line.starts_with(".BR "))
                && line
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .any(|word| word == key)
        });
        if !in_man {
            missing.push(format!("{key} in man/tokd.conf.5"));
        }
        if !readme.contains(&format!("`{key}`")) {
            missing.push(format!("{key} in README.md"));
        }
    }
    assert!(missing.is_empty(), "undocumented keys: {missing:?}");
}

/// The install section copies the example as the user's config: as
/// copied, it must leave tokd on its defaults (found by a new user, who
/// ended up with `store = "keyring"` forced, so that without a keyring
/// every installation was `locked` instead of using the files).
#[test]
fn the_example_config_keeps_the_daemons_defaults() {
    let example = repo().join("examples/config.toml");
    let config = tokd::config::Config::from_path(&example).expect("the example parses");
    let defaults = tokd::config::Config::from_str("").expect("an empty config");
    assert_eq!(config.daemon.store, defaults.daemon.store, "store");
    assert_eq!(
        config.daemon.refresh_margin, defaults.daemon.refresh_margin,
        "refresh_margin"
    );
    assert_eq!(config.daemon.notify, defaults.daemon.notify, "notify");
}

#[test]
fn the_example_config_passes_the_check() {
    let home = tempfile::tempdir().expect("tempdir");
    let example = repo().join("examples/config.toml");
    let output = tokd(
        home.path(),
        &["--check-config", example.to_str().expect("utf8")],
        &[],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(
        text(&output.stdout).contains(": ok: 4 consumers"),
        "{}",
        text(&output.stdout)
    );
}

/// A cause is said once: a missing file's "(os error 2)" is not repeated
/// after the sentence that already holds it.
#[test]
fn a_missing_config_file_says_its_cause_once() {
    let home = tempfile::tempdir().expect("home");
    let missing = home.path().join("nowhere.toml");
    let out = tokd(
        home.path(),
        &["--check-config", &missing.display().to_string()],
        &[],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cannot read config file"), "{stderr}");
    assert_eq!(stderr.matches("os error 2").count(), 1, "{stderr}");
}

/// A file with several mistakes in different tables gets them all in one
/// run, in the order of their lines, each with its line, and a count:
/// mistakes of meaning, and those the parser stops at (an unknown key, a
/// URL or a cron expression of the wrong form).
#[test]
fn every_table_s_mistake_is_reported_in_one_run() {
    assert_reported(
        r#"[consumers.one]
token_url = "ftp://sso.example.com/token"
client_id = "x"

[consumers.two]
token_url = "https://sso.example.com/token"
client_id = "x"
colour = "blue"

[installations.a]
consumer = "one"

[installations.c]
consumer = "two"
schedule = "not cron"

[installations.d]
consumer = "three"
"#,
        &[
            (2, "invalid URL \"ftp://"),
            (8, "unknown field `colour`"),
            (15, "invalid cron schedule"),
            (
                18,
                "names consumer `three`, which is not defined (defined: one, two)",
            ),
        ],
    );
}

/// Mistakes of meaning only, in several tables: each reported, and an
/// undefined consumer's sentence names those with mistakes too.
#[test]
fn every_table_s_mistake_of_meaning_is_reported_in_one_run() {
    assert_reported(
        r#"[consumers.one]
token_url = "https://sso.example.com/token"

[consumers.two]
token_url = "https://sso.example.com/token"
client_id = "x"
git_username = "a:b"

[installations.a]
consumer = "missing"

[installations.c]
consumer = "one"
"#,
        &[
            (1, "has no `client_id`"),
            (7, "`git_username`"),
            (10, "(defined: one, two)"),
        ],
    );
}

/// `tokd --check-config` on `config` says each of `expected` (a line
/// number and words), in order, then the count.
fn assert_reported(config: &str, expected: &[(usize, &str)]) {
    let home = tempfile::tempdir().expect("home");
    let path = home.path().join("config.toml");
    std::fs::write(&path, config).expect("config");
    let out = tokd(
        home.path(),
        &["--check-config", &path.display().to_string()],
        &[],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    let shown = path.display().to_string();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), expected.len() + 1, "{stderr}");
    for (line, (number, words)) in lines.iter().zip(expected) {
        assert!(
            line.starts_with(&format!("tokd: {shown}:{number}:")) && line.contains(words),
            "{line:?} is not line {number} saying {words:?}:\n{stderr}"
        );
    }
    assert_eq!(
        lines[expected.len()],
        format!("tokd: {} problems", expected.len())
    );
}
