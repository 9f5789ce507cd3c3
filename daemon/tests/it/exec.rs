//! `tokctl exec`: tokens in a command's environment, never in its
//! arguments; the command's own exit status; nothing run without a token.

use crate::support::{World, within};
use tokd_testkit::Behaviour;

/// `tokctl ARGS` to its end: status, stdout, stderr, and the pid it ran as.
async fn run(world: &World, args: &[&str]) -> (Option<i32>, String, String, u32) {
    let child = world
        .command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tokctl exec");
    let pid = child.id().expect("a pid");
    let output = child.wait_with_output().await.expect("it ends");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        pid,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_puts_tokens_in_the_environment_and_becomes_the_command() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        let token = world.get("a").await;
        let cmdline = world.home.path().join("cmdline");
        // The command saves its own command line (the process tokctl
        // became), then prints its pid and the token.
        let script = format!(
            "tr '\\0' ' ' < /proc/$$/cmdline > '{}'; printf '%s %s' \"$$\" \"$TOKEN\"",
            cmdline.display()
        );
        let (status, stdout, stderr, pid) =
            run(&world, &["exec", "a", "--", "sh", "-c", &script]).await;
        assert_eq!(status, Some(0), "{stderr}");
        assert_eq!(
            stdout,
            format!("{pid} {token}"),
            "tokctl exec'd: same pid, token in $TOKEN"
        );
        let seen = std::fs::read_to_string(&cmdline).expect("the command line");
        assert!(seen.starts_with("sh -c "), "{seen}");
        assert!(!seen.contains(&token), "the token is in the command line");

        // Several installations at once, each in its own variable; `bot`
        // (client credentials) gets its first token now.
        let (status, stdout, stderr, _) = run(
            &world,
            &[
                "exec",
                "--env",
                "a=A_TOKEN",
                "--env",
                "bot=BOT_TOKEN",
                "--",
                "sh",
                "-c",
                "printf '%s %s %s' \"$A_TOKEN\" \"$BOT_TOKEN\" \"${TOKEN-unset}\"",
            ],
        )
        .await;
        assert_eq!(status, Some(0), "{stderr}");
        let bot = world.get("bot").await;
        assert_eq!(stdout, format!("{token} {bot} unset"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_exits_with_the_commands_status_or_as_a_shell_would() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        let (status, _, stderr, _) = run(&world, &["exec", "a", "--", "sh", "-c", "exit 3"]).await;
        assert_eq!(status, Some(3), "{stderr}");

        let (status, stdout, stderr, _) =
            run(&world, &["exec", "a", "--", "/nonexistent/deploy.sh"]).await;
        assert_eq!((status, stdout.as_str()), (Some(127), ""), "{stderr}");
        assert_eq!(
            stderr,
            "tokctl: /nonexistent/deploy.sh: command not found\n"
        );

        let script = world.home.path().join("not-executable.sh");
        std::fs::write(&script, "#!/bin/sh\necho ran\n").expect("a script");
        let path = script.display().to_string();
        let (status, stdout, stderr, _) = run(&world, &["exec", "a", "--", &path]).await;
        assert_eq!((status, stdout.as_str()), (Some(126), ""), "{stderr}");
        assert!(
            stderr.starts_with(&format!("tokctl: cannot run {path}: ")),
            "{stderr}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_command_is_not_run() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        let ran = world.home.path().join("ran");
        let touch = format!("touch '{}'", ran.display());
        // `b` was never logged in; `a` is fine, but all or nothing.
        let (status, stdout, stderr, _) = run(
            &world,
            &["exec", "a", "--env", "b=B", "--", "sh", "-c", &touch],
        )
        .await;
        assert_eq!((status, stdout.as_str()), (Some(4), ""), "{stderr}");
        assert!(stderr.contains("tokctl login b"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!ran.exists(), "the command ran without its token");

        // Usage errors come before tokd is asked anything.
        for args in [
            &["exec", "--", "true"][..],
            &["exec", "a", "--env", "1X", "--", "true"],
            &["exec", "a"],
        ] {
            let (status, stdout, stderr, _) = run(&world, args).await;
            assert_eq!(
                (status, stdout.as_str()),
                (Some(2), ""),
                "{args:?}: {stderr}"
            );
        }
    })
    .await;
}
