//! What a new user meets in the first hour, through the real binaries:
//! scopes shown before the first login, short notes with the detail in
//! `status`, a login that could not reach the provider told as such, and
//! one login timeout shared by tokctl and tokd.

use crate::support::{SECRET, World, eventually, within};
use std::time::Duration;
use tokd_testkit::{Behaviour, free_port};

/// A consumer whose token endpoint nothing listens on, installed as
/// `dead` (client credentials) and `far` (a login finished by hand).
fn unreachable_config(world: &World) -> String {
    let secret = world.home.write_secret("dead.secret", SECRET);
    world.config(&format!(
        r#"
[consumers.dead]
token_url = "http://127.0.0.1:{}/token"
auth_url = "{}"
client_id = "{}"
client_secret_file = "{}"
redirect_uri = "https://app.example.com/callback"

[installations.dead]
consumer = "dead"
grant = "client_credentials"

[installations.far]
consumer = "dead"
scopes = ["read"]
"#,
        free_port(),
        world.emulator.auth_url(),
        crate::support::CLIENT_ID,
        secret.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_are_shown_before_the_first_login() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let status = world.status("a").await;
        assert_eq!(status["state"], "empty");
        assert_eq!(status["scopes"], serde_json::json!(["read"]), "{status}");
        let text = world.tokctl(&["status", "a"]).await;
        assert!(
            text.stdout
                .lines()
                .any(|l| l.trim() == "scopes        read"),
            "{}",
            text.stdout
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_failure_is_short_in_list_and_whole_once_in_status() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.home.write_config(&unreachable_config(&world));
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        let get = world.tokctl(&["get", "dead"]).await;
        assert_eq!(get.status, 5, "{get:?}");
        assert!(get.stderr.contains("tries again in"), "{get:?}");

        let list = world.tokctl(&["list"]).await;
        let row = list
            .stdout
            .lines()
            .find(|l| l.starts_with("dead "))
            .expect("a row for dead");
        assert!(
            row.contains("the provider is failing; tokd tries again in"),
            "{row}"
        );
        assert!(row.chars().count() < 120, "the NOTE stays short: {row}");

        let status = world.tokctl(&["status", "dead"]).await.stdout;
        let message = status
            .lines()
            .find(|l| l.trim_start().starts_with("message"))
            .expect("a message row");
        let last_error = status
            .lines()
            .find(|l| l.trim_start().starts_with("last error"))
            .expect("a last error row");
        assert!(message.contains("tries again in"), "{status}");
        assert!(
            !message.contains("127.0.0.1"),
            "the detail is not repeated: {status}"
        );
        assert!(
            last_error.contains("127.0.0.1") && !last_error.contains("tries again"),
            "the detail, without a wait that goes stale: {status}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_that_could_not_be_sent_is_not_called_refused() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.home.write_config(&unreachable_config(&world));
        assert_eq!(world.tokctl(&["reload"]).await.status, 0);
        let out = world.tokctl(&["login", "far", "--code", "a-code"]).await;
        assert_eq!(out.status, 5, "a transient failure: {out:?}");
        assert!(
            out.stderr
                .contains("the login of `far` could not be finished")
                && !out.stderr.contains("provider refused"),
            "{out:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokctl_and_tokd_give_up_on_a_login_together() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let too_long = world.tokctl(&["login", "a", "--timeout", "30d"]).await;
        assert_eq!(too_long.status, 2, "{too_long:?}");
        assert!(too_long.stderr.contains("at most 10m"), "{too_long:?}");

        let out = world
            .tokctl(&["login", "a", "--no-browser", "--timeout", "2s"])
            .await;
        assert_eq!(out.status, 1, "{out:?}");
        assert!(
            out.stderr.contains("no answer from the browser within 2s"),
            "{out:?}"
        );
        // tokd stops listening too, rather than for ten more minutes.
        let callback = format!("127.0.0.1:{}", world.port);
        assert!(
            eventually(Duration::from_secs(10), async || {
                tokio::net::TcpStream::connect(&callback).await.is_err()
            })
            .await,
            "the login listener still listens\n{}",
            world.log()
        );

        // Each sentence, followed: "use --timeout 10m or less" and "run
        // `tokctl login a` again".
        let mut child = world
            .command(&["login", "a", "--no-browser", "--timeout", "10m"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tokctl login");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut url = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut url)
            .await
            .expect("the URL");
        world.finish_login(child, url.trim()).await;
        // A D-Bus client asking tokd itself for too long a login: "ask for
        // 10m or less".
        let (_connection, proxy) = world.proxy().await;
        let refused = proxy.begin_login_within("b", 3600).await;
        assert!(
            matches!(&refused, Err(tokd_shared::Error::InvalidArgument(m)) if m.contains("ask for 10m or less")),
            "{refused:?}"
        );
        proxy.begin_login_within("b", 600).await.expect("accepted");
    })
    .await;
}

/// The README's "Try it" with `tokd-provider`: the emulator runs as a
/// program of its own, and the config it prints, pasted into tokd's
/// config, logs in (its login page approves at once) and serves a token.
/// (The printed redirect port, 8765, is swapped for a free one: tests run
/// side by side.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_emulator_runs_alone_and_the_config_it_prints_works() {
    use tokio::io::AsyncBufReadExt as _;
    within(async {
        let mut world = World::prepare(Behaviour::wso2()).await;
        let program = crate::support::tokd_bin().with_file_name("tokd-provider");
        let mut provider = tokio::process::Command::new(&program)
            .args(["--port", "0", "--access-lifetime", "1h", "--secret-file"])
            .arg(world.home.path().join("provider.secret"))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("{}: {error}", program.display()));
        let mut lines = tokio::io::BufReader::new(provider.stdout.take().expect("stdout")).lines();
        let mut pasted = String::new();
        let mut copying = false;
        while let Some(line) = lines.next_line().await.expect("read") {
            if line.starts_with("then run") {
                break;
            }
            if copying {
                pasted.push_str(&line);
                pasted.push('\n');
            }
            copying |= line.starts_with("Add to tokd's config");
        }
        assert!(pasted.contains("[installations.try]"), "{pasted}");
        let port = free_port();
        let pasted = pasted.replace("127.0.0.1:8765", &format!("127.0.0.1:{port}"));
        world.home.write_config(&world.config(&pasted));
        world.start_tokd().await;

        let mut child = world
            .command(&["login", "try", "--no-browser"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tokctl login");
        let mut url = String::new();
        tokio::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut url)
            .await
            .expect("the login URL");
        let url = url.trim().to_owned();
        let location = crate::support::browse(&url).await;
        assert!(
            location.starts_with(&format!("http://127.0.0.1:{port}/callback?")),
            "{location}"
        );
        let page = crate::support::browser()
            .get(&location)
            .send()
            .await
            .expect("tokd's listener answers")
            .text()
            .await
            .expect("page");
        assert!(page.contains("Logged in"), "{page}");
        let output = child.wait_with_output().await.expect("login ends");
        assert!(output.status.success());
        let token = world.get("try").await;
        assert!(!token.is_empty());
        assert_eq!(world.status("try").await["state"], "valid");
    })
    .await;
}

/// The README's "Install for one user" steps, run by bash as written with
/// `XDG_CONFIG_HOME` and `XDG_DATA_HOME` pointing elsewhere: every file
/// lands where systemd, D-Bus, man and tokd look, nothing in `~/.config`
/// or `~/.local/share`, and `tokd --check-config` finds the config. (The
/// `cargo install` lines are played by links to the binaries the tests
/// built; `systemctl`, `$EDITOR` and the login are left out: no systemd
/// user manager, editor or provider here.)
#[test]
fn the_install_steps_honour_xdg_folders() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(repo.join("README.md")).expect("README");
    let section = readme
        .split("## Install for one user\n\n```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the install steps");
    let mut script = String::new();
    let mut continued = false;
    for line in section.lines() {
        let skipped = continued
            || line.starts_with("cargo install")
            || line.starts_with("RUSTFLAGS=")
            || line.starts_with("systemctl ")
            || line.starts_with("$EDITOR")
            || line.starts_with("tokctl login");
        continued = skipped && line.ends_with('\\');
        if !skipped {
            script.push_str(line);
            script.push('\n');
        }
    }
    let home = tempfile::tempdir().expect("home");
    let bin = home.path().join(".local/bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let tokd = crate::support::tokd_bin();
    std::os::unix::fs::symlink(&tokd, bin.join("tokd")).expect("link");
    std::os::unix::fs::symlink(crate::support::tokctl_bin(), bin.join("tokctl")).expect("link");
    let (config, data) = (
        home.path().join("elsewhere/config"),
        home.path().join("elsewhere/data"),
    );
    let out = std::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-euo", "pipefail", "-c", &script])
        .current_dir(&repo)
        .env_clear()
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", &config)
        .env("XDG_DATA_HOME", &data)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{}\n{}\n{script}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let checked = format!("{}: ok", config.join("tokd/config.toml").display());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&checked),
        "tokd --check-config found the config: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for file in [
        config.join("systemd/user/tokd.service"),
        config.join("tokd/config.toml"),
        data.join("dbus-1/services/org.tokd.tokd1.service"),
        data.join("man/man1/tokctl.1"),
        data.join("man/man5/tokd.conf.5"),
        bin.join("docker-credential-tokd"),
    ] {
        assert!(file.exists(), "{} is missing", file.display());
    }
    for default in [".config", ".local/share"] {
        assert!(
            !home.path().join(default).exists(),
            "~/{default} was written though XDG folders are set elsewhere"
        );
    }
    let unit = std::fs::read_to_string(config.join("systemd/user/tokd.service")).expect("unit");
    assert!(unit.contains(&format!("{}/tokd", bin.display())), "{unit}");
}

/// `tokctl add NAME … --client-secret-stdin`: the consumer and the
/// installation are appended to the config (its own lines kept as they
/// were), the secret goes into a 0600 file beside it and never into the
/// config, tokd reloads, and the login works. A name already there is a
/// usage error, and a config tokd refuses is put back as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokctl_add_writes_the_config_and_the_login_works() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        let config = world.home.config_path();
        let own = format!("# my own notes, kept\n{}", world.config(""));
        world.home.write_config(&own);
        let add = |args: Vec<String>| {
            let mut child = world
                .command(&args.iter().map(String::as_str).collect::<Vec<_>>())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("tokctl add");
            let mut stdin = child.stdin.take().expect("stdin");
            async move {
                use tokio::io::AsyncWriteExt as _;
                stdin
                    .write_all(format!("{SECRET}\n").as_bytes())
                    .await
                    .expect("the secret");
                drop(stdin);
                child.wait_with_output().await.expect("tokctl add ends")
            }
        };
        let args = |name: &str| -> Vec<String> {
            [
                "add",
                name,
                "--token-url",
                &world.emulator.token_url(),
                "--auth-url",
                &world.emulator.auth_url(),
                "--client-id",
                crate::support::CLIENT_ID,
                "--client-secret-stdin",
                "--scope",
                "read",
                "--redirect-port",
                &world.port.to_string(),
                "--no-login",
            ]
            .into_iter()
            .map(str::to_owned)
            .collect()
        };
        let out = add(args("try")).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}\n{}", world.log());
        assert!(stderr.contains("added `try`"), "{stderr}");
        assert!(
            stderr.contains("log in with `tokctl login try`"),
            "{stderr}"
        );
        let text = std::fs::read_to_string(&config).expect("config");
        assert!(
            text.starts_with(&own),
            "the file's own lines are kept:\n{text}"
        );
        assert!(text.contains("[installations.try]"), "{text}");
        assert!(!text.contains(SECRET), "the secret is not in the config");
        let secret = config.with_file_name("try.secret");
        assert_eq!(
            std::fs::read_to_string(&secret).expect("secret file"),
            SECRET
        );
        assert_eq!(crate::support::mode(&secret), 0o600);
        world.login("try").await;
        world.get("try").await;

        // Again: the name is taken.
        let before = std::fs::read_to_string(&config).expect("config");
        let out = add(args("try")).await;
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_eq!(std::fs::read_to_string(&config).expect("config"), before);

        // A preset tokd does not know: tokd refuses the reload, and the
        // file and the secret are as they were.
        let mut refused = args("odd");
        let at = refused
            .iter()
            .position(|a| a == "--token-url")
            .expect("flag");
        refused.splice(
            at..at + 4,
            ["--provider".to_owned(), "nosuchpreset".to_owned()],
        );
        let out = add(refused).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(6), "{stderr}");
        assert!(stderr.contains("is as it was"), "{stderr}");
        assert!(stderr.contains("run `tokctl add` again"), "{stderr}");
        assert_eq!(std::fs::read_to_string(&config).expect("config"), before);
        assert!(!config.with_file_name("odd.secret").exists());
        // Fixing the flags and running it again, as it says.
        let out = add(args("odd")).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
}

/// With the keyring store, `tokctl add` keeps the client secret in the
/// keyring (through secret-tool), and tokd reads it back from there for a
/// client-credentials token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokctl_add_keeps_the_secret_in_the_keyring_when_tokens_go_there() {
    within(async {
        let mut world =
            World::start_in(crate::support::TokenStore::Keyring, Behaviour::wso2()).await;
        let add = async |world: &World| {
            let mut child = world
                .command(&[
                    "add",
                    "ci",
                    "--token-url",
                    &world.emulator.token_url(),
                    "--client-id",
                    crate::support::CLIENT_ID,
                    "--client-secret-stdin",
                    "--client-credentials",
                ])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("tokctl add");
            {
                use tokio::io::AsyncWriteExt as _;
                let mut stdin = child.stdin.take().expect("stdin");
                stdin.write_all(SECRET.as_bytes()).await.expect("secret");
            }
            child.wait_with_output().await.expect("ends")
        };
        // A locked keyring: nothing is written, and the sentence says what
        // to do; doing it works.
        let before = std::fs::read_to_string(world.home.config_path()).expect("config");
        world.gnome().lock().await;
        let out = add(&world).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(8), "{stderr}");
        assert!(
            stderr.contains("unlock the keyring and run the command again"),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read_to_string(world.home.config_path()).expect("config"),
            before
        );
        world.gnome().unlock().await;
        let out = add(&world).await;
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            world.log()
        );
        let text = std::fs::read_to_string(world.home.config_path()).expect("config");
        assert!(
            text.contains("client_secret_command = [\"secret-tool\", \"lookup\""),
            "{text}"
        );
        assert!(!text.contains(SECRET));
        assert!(
            !world
                .home
                .config_path()
                .with_file_name("ci.secret")
                .exists()
        );
        let token = world.get("ci").await;
        assert!(world.emulator.access_token_is_valid(&token));
    })
    .await;
}

/// tokd-provider writes its client secret only into a folder of this
/// user's alone: one that is open to others (as another user could have
/// made it first in a shared temporary folder) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_emulator_keeps_its_secret_in_a_folder_of_the_user_s_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().expect("tmp");
    let folder = tmp
        .path()
        .join(format!("tokd-provider-{}", crate::support::uid()));
    std::fs::create_dir(&folder).expect("folder");
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let program = crate::support::tokd_bin().with_file_name("tokd-provider");
    let out = tokio::process::Command::new(&program)
        .args(["--port", "0"])
        .env_remove("XDG_RUNTIME_DIR")
        .env("TMPDIR", tmp.path())
        .kill_on_drop(true)
        .output()
        .await
        .expect("tokd-provider");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("is not a folder of this user's alone"),
        "{stderr}"
    );
    assert!(!folder.join("client.secret").exists());
}
