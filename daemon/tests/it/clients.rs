//! The credential protocols of other programs, each with the real program
//! against a local server that takes only tokens the emulator honours:
//! mail (msmtp over SMTP with XOAUTH2 and OAUTHBEARER), and the SASL
//! strings `tokctl get --format xoauth2|oauthbearer` prints.

use crate::support::{World, tokctl_bin, within};
use std::os::unix::fs::PermissionsExt as _;
use tokd_testkit::Behaviour;
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
            let config = world.home.path().join(format!("msmtprc-{mechanism}"));
            std::fs::write(
                &config,
                format!(
                    "defaults\ntls off\n\naccount mail\nhost 127.0.0.1\nport {port}\n\
                     from {ADDRESS}\nuser {ADDRESS}\nauth {mechanism}\n\
                     passwordeval \"{tokctl} get a\"\n\naccount default : mail\n",
                    port = smtp.port(),
                    tokctl = tokctl_bin().display(),
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
