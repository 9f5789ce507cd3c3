//! The credential protocols of other programs, each with the real program
//! against a local server that takes only tokens the emulator honours:
//! mail (msmtp over SMTP with XOAUTH2 and OAUTHBEARER), and the SASL
//! strings `tokctl get --format xoauth2|oauthbearer` prints; kubectl's
//! exec credential plugin against an HTTPS API endpoint; Cargo's
//! credential provider against a sparse registry that requires auth;
//! `docker-credential-tokd` with the real skopeo against a container
//! registry that takes Basic with a live token.

use crate::support::{World, tokctl_bin, within};
use std::os::unix::fs::PermissionsExt as _;
use tokd_testkit::Behaviour;
use tokd_testkit::kube::{self, KubeApi};
use tokd_testkit::oci::{self, OciRegistry};
use tokd_testkit::registry::Registry;
use tokd_testkit::smtp::{SmtpEvent, SmtpServer};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

const ADDRESS: &str = "me@example.com";

/// The README's msmtp recipe, for `mechanism`: msmtp asks tokctl for the
/// token (`passwordeval`) and speaks the SASL mechanism itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msmtp_sends_mail_with_a_live_token_over_xoauth2_and_oauthbearer() {
    within(async {
        let world = World::start(Behaviour::google()).await;
        world.login("a").await;
        let smtp = SmtpServer::start(world.emulator.checker()).await;
        for mechanism in ["xoauth2", "oauthbearer"] {
            // The README's recipe as printed, pointed at the test's server
            // (no TLS on loopback) and installation.
            let readme = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"),
            )
            .expect("README");
            let recipe = readme
                .split("msmtp (`~/.msmtprc`")
                .nth(1)
                .and_then(|rest| rest.split("```\n").nth(1))
                .expect("the README's msmtp recipe");
            let config = world.home.path().join(format!("msmtprc-{mechanism}"));
            std::fs::write(
                &config,
                recipe
                    .replace("host smtp.gmail.com", "host 127.0.0.1")
                    .replace("port 587", &format!("port {}", smtp.port()))
                    .replace("tls on", "tls off")
                    .replace("me@gmail.com", ADDRESS)
                    .replace("auth xoauth2", &format!("auth {mechanism}"))
                    .replace(
                        "tokctl get gmail",
                        &format!("{} get a", tokctl_bin().display()),
                    ),
            )
            .expect("msmtprc");
            // msmtp reads no config another user could read.
            std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))
                .expect("chmod");
            let mut msmtp = tokio::process::Command::new("msmtp")
                .arg(format!("--file={}", config.display()))
                .arg("you@example.com")
                .envs(world.home.env(&world.bus))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("msmtp (Debian: msmtp)");
            let mut stdin = msmtp.stdin.take().expect("stdin");
            stdin
                .write_all(format!("Subject: over {mechanism}\n\nhello\n").as_bytes())
                .await
                .expect("the message");
            drop(stdin);
            let out = msmtp.wait_with_output().await.expect("msmtp ends");
            assert!(
                out.status.success(),
                "msmtp with {mechanism}: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                world.log()
            );
        }
        let token = world.get("a").await;
        let auths: Vec<(String, String, bool)> = smtp
            .events()
            .into_iter()
            .filter_map(|event| match event {
                SmtpEvent::Auth {
                    mechanism,
                    user,
                    token: given,
                    accepted,
                } => Some((mechanism, user, accepted && given == token)),
                SmtpEvent::Message { .. } => None,
            })
            .collect();
        assert_eq!(
            auths,
            [
                ("XOAUTH2".to_owned(), ADDRESS.to_owned(), true),
                ("OAUTHBEARER".to_owned(), ADDRESS.to_owned(), true)
            ]
        );
        let messages = smtp.messages();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[1].1.contains("Subject: over oauthbearer"));
    })
    .await;
}

/// `--format xoauth2|oauthbearer --user ADDRESS` is the whole SASL initial
/// response: sent as is after `AUTH MECHANISM`, the server takes it. A
/// revoked token is refused the same way, which shows the server checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sasl_formats_are_what_a_mail_server_takes() {
    within(async {
        let world = World::start(Behaviour::google()).await;
        world.login("a").await;
        let smtp = SmtpServer::start(world.emulator.checker()).await;
        for (format, mechanism) in [("xoauth2", "XOAUTH2"), ("oauthbearer", "OAUTHBEARER")] {
            let response = world
                .get_with("a", &["--format", format, "--user", ADDRESS])
                .await;
            assert_eq!(
                authenticate(smtp.port(), mechanism, &response).await,
                "235",
                "{format}"
            );
        }
        let out = world.tokctl(&["get", "a", "--format", "xoauth2"]).await;
        assert_eq!(out.status, 2, "{out:?}");
        assert!(out.stderr.contains("--user ADDRESS"), "{out:?}");
        let out = world.tokctl(&["get", "a", "--user", ADDRESS]).await;
        assert_eq!(out.status, 2, "{out:?}");

        let token = world.get("a").await;
        assert!(world.emulator.revoke_access_token(&token));
        let response = world
            .get_with("a", &["--format", "xoauth2", "--user", ADDRESS])
            .await;
        assert_eq!(authenticate(smtp.port(), "XOAUTH2", &response).await, "535");
    })
    .await;
}

/// Logs in to the SMTP server at `port` with `AUTH MECHANISM RESPONSE`;
/// the final reply's code.
async fn authenticate(port: u16, mechanism: &str, response: &str) -> String {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut reply = async || {
        loop {
            let line = lines.next_line().await.expect("read").expect("a reply");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    };
    assert!(reply().await.starts_with("220"));
    write.write_all(b"EHLO test\r\n").await.expect("write");
    assert!(reply().await.starts_with("250"));
    write
        .write_all(format!("AUTH {mechanism} {}\r\n", response.trim_end()).as_bytes())
        .await
        .expect("write");
    let mut last = reply().await;
    if last.starts_with("334") {
        // The error challenge: answered with an empty line.
        write.write_all(b"\r\n").await.expect("write");
        last = reply().await;
    }
    last[..3].to_owned()
}

/// A kubeconfig for `api` whose user gets its token from
/// `tokctl kube-credential k8s` in ExecCredential `version`, telling the
/// plugin the cluster when `cluster_info`.
fn kubeconfig(
    world: &World,
    api: &KubeApi,
    version: &str,
    interactive: &str,
    cluster_info: bool,
) -> std::path::PathBuf {
    use base64::Engine as _;
    let path = world.home.path().join(format!(
        "kubeconfig-{}-{cluster_info}",
        version.replace('/', "-")
    ));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: tokd\n  user:\n    exec:\n      \
             apiVersion: {version}\n      command: {tokctl}\n      args: [kube-credential, k8s]\n\
             {interactive}{cluster_info}contexts:\n- name: local\n  context:\n    cluster: local\n    \
             user: tokd\ncurrent-context: local\n",
            server = api.url(),
            ca = base64::engine::general_purpose::STANDARD.encode(kube::CERTIFICATE),
            tokctl = tokctl_bin().display(),
            // A v1 field (v1beta1 takes it as IfAvailable).
            interactive = if version.ends_with("/v1") {
                format!("      interactiveMode: {interactive}\n")
            } else {
                String::new()
            },
            cluster_info = if cluster_info {
                "      provideClusterInfo: true\n"
            } else {
                ""
            },
        ),
    )
    .expect("kubeconfig");
    path
}

/// `kubectl --kubeconfig CONFIG get --raw /version`: status, stdout, stderr.
async fn kubectl_version(world: &World, config: &std::path::Path) -> (bool, String, String) {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(config)
        .args(["get", "--raw", "/version"])
        .envs(world.home.env(&world.bus))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The world's config with an installation `k8s` of `acme` and `extra`
/// lines in its table.
fn with_k8s(world: &World, extra: &str) -> String {
    world.config(&format!(
        "\n[installations.k8s]\nconsumer = \"acme\"\nscopes = [\"read\"]\n{extra}"
    ))
}

/// The real kubectl runs `tokctl kube-credential` and sends the token to
/// an HTTPS API endpoint that takes it, in both ExecCredential versions.
/// On the way, each sentence tokctl says is followed and cures: kubectl
/// must tell the plugin the cluster (`provideClusterInfo`); the
/// installation's `kube_servers` must name it (a kubeconfig the user did
/// not write gets no token for its own server); a login is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gets_its_token_from_the_exec_plugin() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        let api = KubeApi::start(world.emulator.checker()).await;
        world.home.write_config(&with_k8s(&world, ""));
        drop(world.tokd.take());
        world.start_tokd().await;
        let versions = kube_versions().await;

        let blind = kubeconfig(&world, &api, versions[0], "Never", false);
        let (ok, _, stderr) = kubectl_version(&world, &blind).await;
        assert!(!ok);
        assert!(
            stderr.contains("add `provideClusterInfo: true` to the exec section"),
            "{stderr}"
        );

        let never = kubeconfig(&world, &api, versions[0], "Never", true);
        let (ok, _, stderr) = kubectl_version(&world, &never).await;
        assert!(!ok);
        let cure = format!(
            "add \"{}\" to `kube_servers` in [installations.k8s] and run `tokctl reload`",
            api.url()
        );
        assert!(stderr.contains(&cure), "{stderr}");
        assert!(api.requests().iter().all(|request| request.token.is_none()));
        world.home.write_config(&with_k8s(
            &world,
            &format!("kube_servers = [\"{}\"]\n", api.url()),
        ));
        let out = world.tokctl(&["reload"]).await;
        assert_eq!(out.status, 0, "{out:?}");

        // No login yet, and kubectl gives the plugin no terminal.
        let (ok, _, stderr) = kubectl_version(&world, &never).await;
        assert!(!ok);
        assert!(stderr.contains("tokctl login k8s"), "{stderr}");

        world.login("k8s").await;
        for version in versions.iter().copied() {
            let config = kubeconfig(&world, &api, version, "IfAvailable", true);
            let (ok, stdout, stderr) = kubectl_version(&world, &config).await;
            assert!(ok, "{version}: {stderr}\n{}", world.log());
            assert!(stdout.contains("v1.32.0-tokd-testkit"), "{stdout}");
        }
        // kubectl may send a request more than once; each carried the
        // token, and the endpoint took it.
        let token = world.get("k8s").await;
        let requests: Vec<_> = api
            .requests()
            .into_iter()
            .filter(|request| request.token.is_some())
            .collect();
        assert!(requests.len() >= versions.len(), "{requests:?}");
        assert!(
            requests.iter().all(|request| request.accepted
                && request.token.as_deref() == Some(token.as_str())),
            "{requests:?}"
        );
    })
    .await;
}

/// The ExecCredential versions this kubectl speaks: v1beta1, and v1 from
/// kubectl 1.22 (Debian 12's kubernetes-client is 1.20).
async fn kube_versions() -> Vec<&'static str> {
    let out = tokio::process::Command::new("kubectl")
        .args(["version", "--client", "-o", "json"])
        .output()
        .await
        .expect("kubectl (Debian: kubernetes-client)");
    let version: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("kubectl's version");
    let minor: u32 = version["clientVersion"]["minor"]
        .as_str()
        .and_then(|minor| minor.trim_end_matches('+').parse().ok())
        .expect("a minor version");
    if minor >= 22 {
        vec![
            "client.authentication.k8s.io/v1",
            "client.authentication.k8s.io/v1beta1",
        ]
    } else {
        vec!["client.authentication.k8s.io/v1beta1"]
    }
}

/// When kubectl says the plugin may interact and the installation needs a
/// login, the login runs with everything it says on stderr (here the
/// browser's URL, played by the test), and stdout holds only the
/// credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_plugin_logs_in_and_keeps_stdout_for_the_credential() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        world
            .home
            .write_config(&with_k8s(&world, "kube_servers = [\"https://k8s.example.com:6443\"]\n"));
        drop(world.tokd.take());
        world.start_tokd().await;
        let mut child = world
            .command(&["kube-credential", "k8s"])
            .env(
                "KUBERNETES_EXEC_INFO",
                r#"{"kind":"ExecCredential","apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":true,"cluster":{"server":"https://K8s.example.com:6443/"}}}"#,
            )
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tokctl kube-credential");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let url = loop {
            let line = lines
                .next_line()
                .await
                .expect("read")
                .expect("the login URL on stderr");
            if let Some(at) = line.find("http://") {
                break line[at..].split_whitespace().next().unwrap_or("").to_owned();
            }
        };
        world.play_browser(&url).await;
        let out = child.wait_with_output().await.expect("it ends");
        assert!(out.status.success());
        let credential: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("only the credential on stdout");
        assert_eq!(credential["kind"], "ExecCredential");
        assert_eq!(credential["status"]["token"], world.get("k8s").await.as_str());
        assert!(credential["status"]["expirationTimestamp"].is_string());

        // Another cluster, named by a kubeconfig the user did not write:
        // no token, and no login started for it.
        let out = world
            .command(&["kube-credential", "k8s"])
            .env(
                "KUBERNETES_EXEC_INFO",
                r#"{"apiVersion":"client.authentication.k8s.io/v1","spec":{"interactive":true,"cluster":{"server":"https://evil.example"}}}"#,
            )
            .output()
            .await
            .expect("tokctl kube-credential");
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty());
    })
    .await;
}

/// A `.crate` file for `hello` 0.1.0, made with `tar` as `cargo package`
/// would (the gzipped tar of `hello-0.1.0/`).
fn hello_crate(dir: &std::path::Path) -> Vec<u8> {
    let root = dir.join("hello-0.1.0");
    std::fs::create_dir_all(root.join("src")).expect("mkdir");
    std::fs::write(
        root.join("Cargo.toml"),
        "[package]\nname = \"hello\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .expect("Cargo.toml");
    std::fs::write(root.join("src/lib.rs"), "pub fn hello() {}\n").expect("lib.rs");
    let file = dir.join("hello-0.1.0.crate");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&file)
        .arg("-C")
        .arg(dir)
        .arg("hello-0.1.0")
        .status()
        .expect("tar");
    assert!(status.success());
    std::fs::read(&file).expect("the .crate")
}

/// `cargo fetch` in a project that depends on `hello` from `registry`,
/// whose credential provider is `tokctl` with `provider_args`.
async fn cargo_fetch(world: &World, registry: &Registry, provider_args: &str) -> (bool, String) {
    let project = tempfile::tempdir().expect("project");
    std::fs::create_dir_all(project.path().join("src")).expect("mkdir");
    std::fs::create_dir_all(project.path().join(".cargo")).expect("mkdir");
    std::fs::write(
        project.path().join("Cargo.toml"),
        "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nhello = { version = \"0.1\", registry = \"company\" }\n",
    )
    .expect("Cargo.toml");
    std::fs::write(project.path().join("src/main.rs"), "fn main() {}\n").expect("main.rs");
    std::fs::write(
        project.path().join(".cargo/config.toml"),
        format!(
            "[registries.company]\nindex = \"{}\"\ncredential-provider = [\"{}\", {provider_args}]\n",
            registry.index_url(),
            tokctl_bin().display()
        ),
    )
    .expect("config.toml");
    let cargo_home = tempfile::tempdir().expect("CARGO_HOME");
    let out =
        tokio::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .arg("fetch")
            .current_dir(project.path())
            .envs(world.home.env(&world.bus))
            .env("CARGO_HOME", cargo_home.path())
            .env("CARGO_NET_OFFLINE", "false")
            .env("CARGO_TERM_COLOR", "never")
            .env_remove("CARGO_REGISTRIES_CRATES_IO_PROTOCOL")
            .output()
            .await
            .expect("cargo");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The real cargo fetches a crate from a registry that requires auth, with
/// tokctl as its credential provider: every request carries `Bearer` and
/// a token the emulator honours. A registry the installation's
/// `registries` does not name gets nothing, and the sentence's cure (add
/// it, reload) works; before a login, cargo shows tokctl's sentence;
/// arguments that name no installation say how to name one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cargo_fetches_from_a_registry_that_requires_auth() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        let registry = Registry::start(world.emulator.checker()).await;
        let files = tempfile::tempdir().expect("crate files");
        registry.publish("hello", "0.1.0", hello_crate(files.path()));
        let crates = |world: &World, registries: &str| {
            world.config(&format!(
                "\n[installations.crates]\nconsumer = \"acme\"\nscopes = [\"read\"]\n{registries}"
            ))
        };
        world.home.write_config(&crates(&world, ""));
        drop(world.tokd.take());
        world.start_tokd().await;
        let args = "\"cargo-credential\", \"crates\"";

        // A project's own .cargo/config.toml names the registry and the
        // provider: the installation's config must name the registry too.
        let (ok, stderr) = cargo_fetch(&world, &registry, args).await;
        assert!(!ok);
        let cure = format!(
            "add \"{}\" to `registries` in [installations.crates] and run `tokctl reload`",
            registry.host()
        );
        assert!(stderr.contains(&cure), "{stderr}");
        assert!(
            registry.requests().iter().all(|request| request.authorization.is_none()),
            "no token went to an unnamed registry"
        );
        world
            .home
            .write_config(&crates(&world, &format!("registries = [\"{}\"]\n", registry.host())));
        let out = world.tokctl(&["reload"]).await;
        assert_eq!(out.status, 0, "{out:?}");

        let (ok, stderr) = cargo_fetch(&world, &registry, args).await;
        assert!(!ok);
        assert!(stderr.contains("tokctl login crates"), "{stderr}");

        world.login("crates").await;
        let (ok, stderr) = cargo_fetch(&world, &registry, args).await;
        assert!(ok, "{stderr}\n{}", world.log());
        let token = world.get("crates").await;
        let requests = registry.requests();
        let bearer = format!("Bearer {token}");
        let with_token: Vec<_> = requests
            .iter()
            .filter(|request| request.authorization.is_some())
            .collect();
        assert!(
            with_token.iter().any(|request| request.path.ends_with("/download")),
            "the crate was downloaded with the token: {requests:?}"
        );
        assert!(
            with_token
                .iter()
                .all(|request| request.accepted && request.authorization.as_deref() == Some(bearer.as_str())),
            "{requests:?}"
        );

        let (ok, stderr) = cargo_fetch(&world, &registry, "\"cargo-credential\"").await;
        assert!(!ok);
        assert!(stderr.contains("tokctl needs the installation"), "{stderr}");

        // `cargo login` and `cargo logout` have nothing to do: tokd holds
        // the token. The answers, as the protocol has them.
        let mut provider = world
            .command(&["--cargo-plugin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("tokctl --cargo-plugin");
        let mut stdin = provider.stdin.take().expect("stdin");
        let registry_info = format!(r#"{{"index-url":"{}","name":"company"}}"#, registry.index_url());
        for kind in ["login", "logout"] {
            stdin
                .write_all(
                    format!(r#"{{"v":1,"registry":{registry_info},"kind":"{kind}","token":"x","args":["cargo-credential","a"]}}"#)
                        .as_bytes(),
                )
                .await
                .expect("write");
            stdin.write_all(b"\n").await.expect("write");
        }
        drop(stdin);
        let out = provider.wait_with_output().await.expect("it ends");
        assert!(out.status.success());
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON message a line"))
            .collect();
        assert_eq!(
            lines,
            [
                serde_json::json!({"v": [1]}),
                serde_json::json!({"Err": {"kind": "operation-not-supported"}}),
                serde_json::json!({"Err": {"kind": "operation-not-supported"}}),
            ]
        );
    })
    .await;
}

/// `docker-credential-tokd OPERATION` with `input` on stdin, run through
/// a link named so, as the container tools run it: status, stdout.
async fn credential_helper(
    world: &World,
    bin: &std::path::Path,
    operation: &str,
    input: &str,
) -> (i32, String) {
    let mut child = tokio::process::Command::new(bin.join("docker-credential-tokd"))
        .arg(operation)
        .envs(world.home.env(&world.bus))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("docker-credential-tokd");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("it ends");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The real skopeo reads a manifest from a registry that takes only Basic
/// with the consumer's user name and a live token, asking
/// `docker-credential-tokd` (its `credHelpers`); before a login it shows
/// the sentence that says to log in. The helper's other operations:
/// `list`, `store` ignored, `erase` refreshes, and "credentials not found"
/// for a registry no installation names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_reads_from_a_registry_through_the_credential_helper() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        let registry = OciRegistry::start(world.emulator.checker(), "oauth2").await;
        let config = world.config(&format!(
            "\n[installations.reg]\nconsumer = \"acme\"\nscopes = [\"read\"]\nregistries = [\"{}\"]\n",
            registry.host()
        ));
        world.home.write_config(&config);
        drop(world.tokd.take());
        world.start_tokd().await;

        // The link the README's install section makes.
        let bin = world.home.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        std::os::unix::fs::symlink(tokctl_bin(), bin.join("docker-credential-tokd")).expect("link");
        let auth = world.home.path().join("auth.json");
        std::fs::write(
            &auth,
            format!(r#"{{"credHelpers": {{"{}": "tokd"}}}}"#, registry.host()),
        )
        .expect("auth.json");
        let skopeo = async || {
            let path = format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            );
            let out = tokio::process::Command::new("skopeo")
                .args(["inspect", "--raw", "--tls-verify=false", "--authfile"])
                .arg(&auth)
                .arg(format!("docker://{}/team/app:latest", registry.host()))
                .envs(world.home.env(&world.bus))
                .env("PATH", path)
                .output()
                .await
                .expect("skopeo (Debian: skopeo)");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };

        let (ok, _, stderr) = skopeo().await;
        assert!(!ok);
        assert!(stderr.contains("tokctl login reg"), "{stderr}");

        world.login("reg").await;
        let (ok, stdout, stderr) = skopeo().await;
        assert!(ok, "{stderr}\n{}", world.log());
        assert_eq!(stdout.trim_end(), oci::MANIFEST);
        let token = world.get("reg").await;
        let requests = registry.requests();
        assert!(
            requests.iter().any(|request| request.accepted && request.path.contains("/manifests/")),
            "{requests:?}"
        );
        assert!(
            requests
                .iter()
                .filter_map(|request| request.credentials.as_ref())
                .all(|credentials| *credentials == ("oauth2".to_owned(), token.clone())),
            "{requests:?}"
        );

        let (status, listed) = credential_helper(&world, &bin, "list", "").await;
        assert_eq!(status, 0);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&listed).expect("json"),
            serde_json::json!({ registry.host(): "oauth2" })
        );
        let stored = format!(
            r#"{{"ServerURL":"{}","Username":"u","Secret":"s"}}"#,
            registry.host()
        );
        let (status, said) = credential_helper(&world, &bin, "store", &stored).await;
        assert_eq!((status, said.as_str()), (0, ""), "ignored for a registry tokd serves");
        let (status, said) = credential_helper(
            &world,
            &bin,
            "store",
            r#"{"ServerURL":"other.example","Username":"u","Secret":"s"}"#,
        )
        .await;
        assert_eq!(status, 1, "not lost in silence elsewhere: {said}");
        assert!(said.contains("tokd keeps no credentials for other.example"), "{said}");
        let (status, missing) = credential_helper(&world, &bin, "get", "registry.example.com").await;
        assert_eq!(status, 1);
        assert_eq!(missing.trim_end(), "credentials not found in native keychain");

        let (status, _) =
            credential_helper(&world, &bin, "erase", &format!("http://{}/", registry.host())).await;
        assert_eq!(status, 0);
        assert_ne!(world.get("reg").await, token, "erase refreshed the token");

        // A reload takes the registries of the new config.
        world.home.write_config(&world.config(""));
        let out = world.tokctl(&["reload"]).await;
        assert_eq!(out.status, 0, "{out:?}");
        assert_eq!(credential_helper(&world, &bin, "list", "").await, (0, "{}\n".to_owned()));
        let (status, missing) =
            credential_helper(&world, &bin, "get", &registry.host()).await;
        assert_eq!((status, missing.trim_end()), (1, "credentials not found in native keychain"));
    })
    .await;
}
