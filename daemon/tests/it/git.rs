//! `tokctl git-credential` with the real `git`: `git credential fill`
//! through the helper, clones and `ls-remote` against the emulator's git
//! server (which takes only the emulator's valid access tokens), a
//! refused token erased and refreshed, and nothing given where a token
//! must not go.

use crate::support::{SECRET, World, tokctl_bin, within};
use std::path::{Path, PathBuf};
use tokd_testkit::Behaviour;

/// A world with a Bitbucket-like consumer `bb` (git user `x-token-auth`)
/// installed and logged in as `repo`, and a bare repository served by the
/// emulator at `/git/team/repo.git`.
struct GitWorld {
    world: World,
    /// Holds the served repository and git's own home.
    dir: tempfile::TempDir,
}

impl GitWorld {
    async fn start() -> Self {
        let world = World::start(Behaviour::bitbucket_2026()).await;
        let secret = world.home.write_secret("bb.secret", SECRET);
        let bb = world.emulator.consumer_table(
            "bb",
            crate::support::CLIENT_ID,
            &secret,
            &format!("http://127.0.0.1:{}/callback", world.port),
        );
        // The emulator's git server is plain HTTP on a loopback port: it
        // must be named with its port.
        let git_host = world.emulator.address();
        world.home.write_config(&world.config(&format!(
            "{bb}git_username = \"x-token-auth\"\ngit_hosts = [\"{git_host}\"]\n\n[installations.repo]\nconsumer = \"bb\"\nscopes = [\"repository\"]\n\n[installations.fresh]\nconsumer = \"bb\"\nscopes = [\"repository\"]\n"
        )));
        let reload = world.tokctl(&["reload"]).await;
        assert_eq!(reload.status, 0, "{reload:?}");
        world.login("repo").await;

        let dir = tempfile::tempdir().expect("a folder for git");
        let served = dir.path().join("served");
        std::fs::create_dir_all(served.join("team")).expect("served folder");
        let work = dir.path().join("work");
        let this = Self { world, dir };
        this.git_ok(&served, &["init", "--bare", "-b", "main", "team/repo.git"]);
        this.git_ok(this.dir.path(), &["init", "-b", "main", "work"]);
        std::fs::write(work.join("README"), "hello from the emulated server\n").expect("a file");
        this.git_ok(&work, &["add", "README"]);
        this.git_ok(&work, &["commit", "-m", "first"]);
        let bare = served.join("team/repo.git");
        this.git_ok(&work, &["push", &bare.display().to_string(), "main"]);
        this.git_ok(&bare, &["update-server-info"]);
        this.world.emulator.serve_git(&served, "x-token-auth");
        this
    }

    fn url(&self) -> String {
        format!("{}/git/team/repo.git", self.world.emulator.base_url())
    }

    /// git with none of this machine's config, no prompts, and its own
    /// home (`~/.gitconfig` and `~/.git-credentials` are in `dir`).
    fn command(&self, dir: &Path) -> std::process::Command {
        let mut command = std::process::Command::new("git");
        command
            .current_dir(dir)
            .envs(self.world.home.env(&self.world.bus))
            .env("HOME", self.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env_remove("GIT_CONFIG_GLOBAL")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("GIT_ASKPASS")
            .env_remove("SSH_ASKPASS")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .stdin(std::process::Stdio::null());
        command
    }

    /// git with `tokctl git-credential repo` as its only helper.
    fn git(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        self.command(dir)
            .args(["-c", "credential.helper=", "-c"])
            .arg(format!("credential.helper={}", self.helper()))
            .args(args)
            .output()
            .expect("run git")
    }

    fn helper(&self) -> String {
        format!("!'{}' git-credential repo", tokctl_bin().display())
    }

    fn git_ok(&self, dir: &Path, args: &[&str]) -> String {
        let output = self.git(dir, args);
        assert!(
            output.status.success(),
            "git {args:?}: {}\nlog:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.world.log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `git credential fill` for `url`: git's answer (stdout), its status
    /// and the helper's stderr.
    fn fill(&self, url: &str) -> (bool, String, String) {
        let mut child = self
            .command(self.dir.path())
            .args(["-c", "credential.helper=", "-c"])
            .arg(format!("credential.helper={}", self.helper()))
            .args(["credential", "fill"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("git credential fill");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("url={url}\n\n").as_bytes())
            .expect("write the request");
        let output = child.wait_with_output().expect("git ends");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

fn line<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clones_with_a_token_the_helper_gave() {
    within(async {
        let git = GitWorld::start().await;
        let token = git.world.get("repo").await;

        let (ok, answer, stderr) = git.fill(&git.url());
        assert!(ok, "{stderr}");
        assert_eq!(line(&answer, "username"), Some("x-token-auth"), "{answer}");
        assert_eq!(line(&answer, "password"), Some(token.as_str()));
        let expiry: i64 = line(&answer, "password_expiry_utc")
            .expect("git >= 2.41 is told when the token expires")
            .parse()
            .expect("Unix seconds");
        let status = git.world.status("repo").await;
        assert_eq!(status["expires_at"].as_i64(), Some(expiry));

        let clone: PathBuf = git.dir.path().join("clone");
        git.git_ok(
            git.dir.path(),
            &["clone", &git.url(), &clone.display().to_string()],
        );
        assert_eq!(
            std::fs::read_to_string(clone.join("README")).expect("the cloned file"),
            "hello from the emulated server\n"
        );
        let heads = git.git_ok(&clone, &["ls-remote", &git.url()]);
        assert!(heads.contains("refs/heads/main"), "{heads}");
        let requests = git.world.emulator.git_requests();
        assert!(
            requests
                .iter()
                .any(|r| r.accepted && r.password.as_deref() == Some(token.as_str())),
            "{requests:?}"
        );
        assert!(
            requests.iter().all(|r| r.username.is_none()
                || (r.accepted && r.username.as_deref() == Some("x-token-auth"))),
            "every credential sent was the helper's: {requests:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_setup_keeps_tokens_out_of_a_general_store_helper() {
    within(async {
        let git = GitWorld::start().await;
        let host = format!("credential.{}.helper", git.world.emulator.base_url());
        // A ~/.gitconfig with git's plain-text `store` helper for every
        // host, then the README's two lines for this host.
        let setup = [
            vec!["config", "--global", "credential.helper", "store"],
            vec!["config", "--global", "--replace-all", &host, ""],
            vec!["config", "--global", "--add", &host],
        ];
        let helper = git.helper();
        for (index, args) in setup.iter().enumerate() {
            let mut command = git.command(git.dir.path());
            command.args(args);
            if index == 2 {
                command.arg(&helper);
            }
            let output = command.output().expect("git config");
            assert!(output.status.success(), "{args:?}: {output:?}");
        }
        let clone = git.dir.path().join("clone");
        let output = git
            .command(git.dir.path())
            .args(["clone", &git.url(), &clone.display().to_string()])
            .output()
            .expect("git clone");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(clone.join("README").exists());
        let stored = git.dir.path().join(".git-credentials");
        assert!(
            !stored.exists(),
            "the token was handed to `store`, which wrote it to ~/.git-credentials"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_erased_and_the_next_get_brings_a_new_one() {
    within(async {
        let git = GitWorld::start().await;
        let old = git.world.get("repo").await;
        let refreshes = git.world.emulator.counters().refresh_token;
        // The provider ends the token's session early; tokd cannot know.
        assert!(git.world.emulator.revoke_access_token(&old));

        let failed = git.git(git.dir.path(), &["ls-remote", &git.url()]);
        assert!(!failed.status.success(), "the refused token got through");
        let stderr = String::from_utf8_lossy(&failed.stderr);
        assert!(
            stderr.contains("refused the token of `repo`; tokd refreshed it"),
            "git ran `erase`, and the helper refreshed: {stderr}"
        );
        assert_eq!(
            git.world.emulator.counters().refresh_token,
            refreshes + 1,
            "one refresh for the refused token"
        );

        let heads = git.git_ok(git.dir.path(), &["ls-remote", &git.url()]);
        assert!(heads.contains("refs/heads/main"), "{heads}");
        let new = git.world.get("repo").await;
        assert_ne!(new, old);
        assert_eq!(
            git.world.emulator.counters().refresh_token,
            refreshes + 1,
            "the new token served the next fetch without another refresh"
        );

        // An erase of a token tokd no longer holds changes nothing.
        let mut reject = std::process::Command::new(tokctl_bin());
        reject
            .envs(git.world.home.env(&git.world.bus))
            .args(["git-credential", "repo", "erase"])
            .stdin(std::process::Stdio::piped());
        let output = feed(
            reject,
            &format!(
                "protocol=http\nhost={}\nusername=x-token-auth\npassword={old}\n",
                git.world.emulator.address()
            ),
        );
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            git.world.emulator.counters().refresh_token,
            refreshes + 1,
            "no refresh for a token already replaced"
        );
    })
    .await;
}

/// Runs `command` with `input` on its stdin.
fn feed(mut command: std::process::Command, input: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    child.wait_with_output().expect("wait")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helper_gives_nothing_where_a_token_must_not_go() {
    within(async {
        let git = GitWorld::start().await;
        let helper = |installation: &str, operation: &str, input: &str| {
            let mut command = std::process::Command::new(tokctl_bin());
            command
                .envs(git.world.home.env(&git.world.bus))
                .args(["git-credential", installation, operation])
                .stdin(std::process::Stdio::piped());
            let output = feed(command, input);
            (
                output.status.code(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        let address = git.world.emulator.address();
        let port = address.port();
        let other_port = if port == 31337 { 31338 } else { 31337 };
        for (input, says) in [
            (
                "protocol=https\nhost=evil.example\n".to_owned(),
                format!("is not for git at evil.example: its git hosts are {address}"),
            ),
            (
                "protocol=http\nhost=bitbucket.org\n".to_owned(),
                "over plain HTTP".to_owned(),
            ),
            (
                "protocol=ssh\nhost=127.0.0.1\n".to_owned(),
                "not `ssh`".to_owned(),
            ),
            (
                "host=127.0.0.1\n".to_owned(),
                "no protocol or host".to_owned(),
            ),
            // Another loopback port (another user's listener, say), or
            // the named one under another loopback name: no.
            (
                format!("protocol=http\nhost=127.0.0.1:{other_port}\n"),
                "any user of this machine can listen there".to_owned(),
            ),
            (
                format!("protocol=http\nhost=localhost:{port}\n"),
                "any user of this machine can listen there".to_owned(),
            ),
            (
                "protocol=http\nhost=127.0.0.1\n".to_owned(),
                "any user of this machine can listen there".to_owned(),
            ),
        ] {
            let (input, says) = (input.as_str(), says.as_str());
            let (status, stdout, stderr) = helper("repo", "get", input);
            assert_eq!(stdout, "", "a token was given for {input:?}");
            assert_eq!(status, Some(2), "{stderr}");
            assert!(stderr.contains(says), "{input:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
        // Never logged in: nothing, and the sentence says what to do.
        let (status, stdout, stderr) = helper(
            "fresh",
            "get",
            &format!("protocol=http\nhost={}\n", git.world.emulator.address()),
        );
        assert_eq!((status, stdout.as_str()), (Some(4), ""), "{stderr}");
        assert!(stderr.contains("tokctl login fresh"), "{stderr}");
        // A consumer whose endpoints are on this machine has no git host
        // by default: not even its own loopback address.
        let (status, stdout, stderr) = helper(
            "a",
            "get",
            &format!("protocol=https\nhost={}\n", git.world.emulator.address()),
        );
        assert_eq!((status, stdout.as_str()), (Some(2), ""), "{stderr}");
        assert!(stderr.contains("its git hosts are none"), "{stderr}");
        // `store` and operations git may add later: nothing, status 0.
        for operation in ["store", "capability-check"] {
            let (status, stdout, stderr) = helper(
                "repo",
                operation,
                "protocol=https\nhost=127.0.0.1\npassword=x\n",
            );
            assert_eq!(
                (status, stdout.as_str(), stderr.as_str()),
                (Some(0), "", "")
            );
        }

        // Through git: it gets nothing for another host and says so.
        let (ok, answer, stderr) = git.fill("https://evil.example/team/repo.git");
        assert!(!ok, "git found a credential: {answer}");
        assert!(!answer.contains("password="), "{answer}");
        assert!(stderr.contains("its git hosts are"), "{stderr}");
        assert!(
            git.world.emulator.git_requests().is_empty(),
            "nothing was fetched"
        );
    })
    .await;
}

/// The attack of the third review: another local user listens on a
/// loopback port and answers `401` with `WWW-Authenticate: Basic`; the
/// victim's git, with the helper configured for every host, runs
/// `ls-remote` against it. Nothing is sent: plain HTTP goes only to the
/// loopback port `git_hosts` names (the emulator's, here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_on_another_loopback_port_gets_no_token() {
    within(async {
        let git = GitWorld::start().await;
        let token = git.world.get("repo").await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let port = listener.local_addr().expect("address").port();
        let heard = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let recorder = heard.clone();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut request = vec![0; 8192];
                let read = stream.read(&mut request).await.unwrap_or(0);
                recorder
                    .lock()
                    .expect("record")
                    .push_str(&String::from_utf8_lossy(&request[..read]));
                let _ = stream
                    .write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        for host in [format!("127.0.0.1:{port}"), format!("localhost:{port}")] {
            let output = git.git(
                git.dir.path(),
                &["ls-remote", &format!("http://{host}/team/repo.git")],
            );
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{stderr}");
            assert!(
                stderr.contains("any user of this machine can listen there"),
                "{stderr}"
            );
        }
        server.abort();
        let heard = heard.lock().expect("heard").clone();
        assert!(heard.contains("GET /team/repo.git"), "git asked: {heard}");
        assert!(!heard.contains(&token), "the token reached the listener");
        assert!(
            !heard.to_ascii_lowercase().contains("authorization:"),
            "{heard}"
        );
        // The named port still works.
        let refs = git.git_ok(git.dir.path(), &["ls-remote", &git.url()]);
        assert!(refs.contains("refs/heads/main"), "{refs}");
    })
    .await;
}

/// `tokctl git-setup`: with a general `store` helper in `~/.gitconfig`
/// before it and another added after it, a clone through tokctl's helper
/// leaves no token in any store file; with the helper line alone (the
/// setup it replaces), `store` kept the token in plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_setup_keeps_the_token_from_general_helpers_before_and_after() {
    within(async {
        let git = GitWorld::start().await;
        let home = git.dir.path().to_owned();
        let path = format!(
            "{}:{}",
            tokctl_bin().parent().expect("bin folder").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let store = |file: &str| format!("store --file={}", home.join(file).display());
        let stored = |file: &str| std::fs::read_to_string(home.join(file)).unwrap_or_default();
        let clone = |into: &str| {
            let output = git
                .command(&home)
                .env("PATH", &path)
                .args(["clone", &git.url(), into])
                .output()
                .expect("git clone");
            assert!(
                output.status.success(),
                "{}\n{}",
                String::from_utf8_lossy(&output.stderr),
                git.world.log()
            );
        };
        let remote = format!("http://{}", git.world.emulator.address());
        let git_setup = async || {
            git.world
                .command(&["git-setup", "repo"])
                .env("HOME", &home)
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env_remove("GIT_CONFIG_GLOBAL")
                .output()
                .await
                .expect("tokctl git-setup")
        };

        // The helper line alone, after a general `store`: git gives `store`
        // the token to keep.
        std::fs::write(
            home.join(".gitconfig"),
            format!(
                "[credential]\n\thelper = {}\n[credential \"{remote}\"]\n\thelper = !tokctl git-credential repo\n",
                store("before-alone")
            ),
        )
        .expect("gitconfig");
        clone("alone");
        let token = git.world.get("repo").await;
        assert!(stored("before-alone").contains(&token), "the hazard the setup removes");

        // With git-setup: a `store` before, and one added after.
        std::fs::write(
            home.join(".gitconfig"),
            format!("[user]\n\tname = t\n[credential]\n\thelper = {}\n", store("before")),
        )
        .expect("gitconfig");
        let out = git_setup().await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains(&format!("for {remote}, and no other helper")), "{stderr}");
        let added = git
            .command(&home)
            .args(["config", "--global", "--add", "credential.helper", &store("after")])
            .output()
            .expect("git config");
        assert!(added.status.success());
        clone("set-up");
        for file in ["before", "after"] {
            assert!(
                !stored(file).contains(&token) && !stored(file).contains(&git.world.get("repo").await),
                "{file} holds the token"
            );
        }

        // The same with no general helper at all before the setup, and
        // one added after it.
        std::fs::write(home.join(".gitconfig"), "[user]\n\tname = t\n").expect("gitconfig");
        let out = git_setup().await;
        assert!(out.status.success());
        let added = git
            .command(&home)
            .args(["config", "--global", "--add", "credential.helper", &store("later")])
            .output()
            .expect("git config");
        assert!(added.status.success());
        clone("set-up-2");
        assert!(stored("later").is_empty(), "a helper added later kept the token");
    })
    .await;
}
