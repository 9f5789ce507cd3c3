//! Shell completion through the real tokctl: bash sources the script
//! `tokctl completions bash` prints and completes a command line as a Tab
//! would, installation names coming from the running tokd; fish's and
//! zsh's protocol answer the same (with each name's state for fish).

use crate::support::{World, tokctl_bin, within};
use tokd_testkit::Behaviour;

/// What bash completes for `words` (the last one being completed),
/// without the options clap offers beside values.
async fn bash_values(world: &World, words: &[&str]) -> Vec<String> {
    bash_completes(world, words)
        .await
        .into_iter()
        .filter(|word| !word.starts_with('-'))
        .collect()
}

/// What bash completes for `words` (the last one being completed).
async fn bash_completes(world: &World, words: &[&str]) -> Vec<String> {
    let bin = tokctl_bin();
    let dir = bin.parent().expect("the binaries' folder");
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let current = words.last().copied().unwrap_or_default();
    let previous = words.len().checked_sub(2).map_or("tokctl", |i| words[i]);
    let script = format!(
        r#"eval "$(tokctl completions bash)" || exit 9
COMP_WORDS=({words})
COMP_CWORD={cword}
COMP_TYPE=9
_clap_complete_tokctl tokctl '{current}' '{previous}'
printf '%s\n' "${{COMPREPLY[@]}}""#,
        words = quoted.join(" "),
        cword = words.len() - 1,
    );
    let output = tokio::process::Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &script])
        .envs(world.home.env(&world.bus))
        .env("PATH", path)
        .output()
        .await
        .expect("bash");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.trim_end().to_owned())
        .filter(|line| !line.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_complete_from_the_running_daemon() {
    within(async {
        let world = World::start(Behaviour::wso2()).await;
        world.login("a").await;
        assert_eq!(
            bash_values(&world, &["tokctl", "get", ""]).await,
            ["a", "b", "bot", "m"]
        );
        assert_eq!(
            bash_completes(&world, &["tokctl", "refresh", "b"]).await,
            ["b", "bot"]
        );
        assert_eq!(
            bash_completes(&world, &["tokctl", "git-credential", "m"]).await,
            ["m"]
        );
        assert_eq!(
            bash_values(&world, &["tokctl", "git-credential", "a", ""]).await,
            ["get", "store", "erase"]
        );
        // After `exec NAME --`: commands from PATH, then paths.
        let commands = bash_completes(&world, &["tokctl", "exec", "a", "--", "bas"]).await;
        assert!(commands.iter().any(|c| c == "bash"), "{commands:?}");
        assert!(
            commands.iter().all(|c| c.starts_with("bas")),
            "{commands:?}"
        );
        let dir = world.home.path().display().to_string();
        let paths = bash_completes(
            &world,
            &["tokctl", "exec", "a", "--", "bash", &format!("{dir}/conf")],
        )
        .await;
        assert!(
            paths
                .iter()
                .any(|p| p.starts_with(&format!("{dir}/config"))),
            "{paths:?}"
        );

        let commands = bash_completes(&world, &["tokctl", "re"]).await;
        assert_eq!(commands, ["refresh", "revoke", "reload"]);
        let options = bash_completes(&world, &["tokctl", "get", "a", "--f"]).await;
        assert_eq!(options, ["--format"]);

        // fish's protocol: each name with its state.
        let output = world
            .command(&["--", "tokctl", "status", ""])
            .env("COMPLETE", "fish")
            .output()
            .await
            .expect("tokctl");
        let answer = String::from_utf8_lossy(&output.stdout);
        assert!(answer.lines().any(|l| l == "a\tvalid"), "{answer}");
        assert!(answer.lines().any(|l| l == "b\tempty"), "{answer}");
        // zsh's: the names.
        let output = world
            .command(&["--", "tokctl", "login", ""])
            .env("COMPLETE", "zsh")
            .env("_CLAP_COMPLETE_INDEX", "2")
            .output()
            .await
            .expect("tokctl");
        let answer = String::from_utf8_lossy(&output.stdout);
        assert!(answer.lines().any(|l| l.starts_with("bot")), "{answer}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_daemon_commands_still_complete_and_names_are_empty() {
    within(async {
        let mut world = World::start(Behaviour::wso2()).await;
        world.tokd = None;
        world.bus.stop();
        assert_eq!(
            bash_values(&world, &["tokctl", "get", ""]).await,
            Vec::<String>::new()
        );
        assert_eq!(
            bash_completes(&world, &["tokctl", "comp"]).await,
            ["completions"]
        );
    })
    .await;
}
