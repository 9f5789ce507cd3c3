//! Shell completion: `tokctl completions SHELL` prints a script that asks
//! tokctl itself for candidates at each Tab (`COMPLETE=SHELL tokctl --
//! WORDS`, clap_complete's dynamic engine), so that installation names
//! come from the running tokd, with their state as the description where
//! the shell shows one (zsh, fish).

use clap::ValueEnum;
use clap_complete::engine::CompletionCandidate;
use clap_complete::env::EnvCompleter as _;
use std::ffi::OsStr;
use std::time::Duration;
use tokd_shared::ManagerProxy;

/// The variable that makes a tokctl run complete instead.
const VAR: &str = "COMPLETE";
/// How long a Tab waits for tokd's list of names.
const NAMES_TIMEOUT: Duration = Duration::from_secs(2);

/// The shells `completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Answers the shell and exits when `COMPLETE` is set; otherwise returns
/// at once (one environment lookup).
pub fn answer_if_asked() {
    clap_complete::CompleteEnv::with_factory(<crate::Cli as clap::CommandFactory>::command)
        .var(VAR)
        .complete();
}

/// The script that registers tokctl's completion in `shell`.
pub fn script(shell: Shell) -> String {
    let mut buf = Vec::new();
    let written =
        match shell {
            Shell::Bash => clap_complete::env::Bash
                .write_registration(VAR, "tokctl", "tokctl", "tokctl", &mut buf),
            Shell::Zsh => clap_complete::env::Zsh
                .write_registration(VAR, "tokctl", "tokctl", "tokctl", &mut buf),
            Shell::Fish => clap_complete::env::Fish
                .write_registration(VAR, "tokctl", "tokctl", "tokctl", &mut buf),
        };
    // Writing to a Vec cannot fail.
    debug_assert!(written.is_ok());
    String::from_utf8_lossy(&buf).into_owned()
}

/// git's operations, for `tokctl git-credential NAME <Tab>`.
pub fn git_operations() -> clap_complete::engine::ArgValueCandidates {
    clap_complete::engine::ArgValueCandidates::new(|| {
        ["get", "store", "erase"]
            .into_iter()
            .map(CompletionCandidate::new)
            .collect()
    })
}

/// `tokctl exec … -- COMMAND ARGS`: a command from `PATH` (or a path) for
/// the first word, paths after it.
pub fn command_line() -> clap_complete::engine::ArgValueCompleter {
    clap_complete::engine::ArgValueCompleter::new(CommandLine)
}

struct CommandLine;

impl clap_complete::engine::ValueCompleter for CommandLine {
    fn complete(&self, current: &OsStr) -> Vec<CompletionCandidate> {
        self.complete_at(0, current)
    }

    fn complete_at(&self, arg_index: usize, current: &OsStr) -> Vec<CompletionCandidate> {
        let paths = clap_complete::engine::PathCompleter::any();
        let Some(prefix) = current.to_str() else {
            return Vec::new();
        };
        if arg_index > 0 || prefix.contains('/') {
            return paths.complete(current);
        }
        let mut names: Vec<String> = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flatten()
            .flatten()
            .filter(|entry| {
                use std::os::unix::fs::PermissionsExt as _;
                entry
                    .metadata()
                    .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            })
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.starts_with(prefix))
            .collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().map(CompletionCandidate::new).collect()
    }
}

/// The configured installations whose names start with `current`, from
/// the running tokd (none when it does not answer within
/// [`NAMES_TIMEOUT`]).
pub fn installation_names(current: &OsStr) -> Vec<CompletionCandidate> {
    let Some(prefix) = current.to_str() else {
        return Vec::new();
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let list = runtime.block_on(async {
        tokio::time::timeout(NAMES_TIMEOUT, async {
            let connection = crate::connect(false).await.ok()?;
            let proxy = ManagerProxy::builder(&connection)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .ok()?;
            proxy.list().await.ok()
        })
        .await
        .ok()
        .flatten()
    });
    list.unwrap_or_default()
        .into_iter()
        .filter(|info| info.name.starts_with(prefix))
        .map(|info| CompletionCandidate::new(info.name).help(Some(info.state.into())))
        .collect()
}
