//! `tokctl git-credential NAME OPERATION`: git's credential helper
//! protocol (gitcredentials(7)). git writes `key=value` lines on stdin;
//! for `get` the helper answers with `username=`, `password=` and
//! `password_expiry_utc=`, or with nothing when it cannot help (git then
//! asks its next helper; the reason goes to stderr). `store` is ignored
//! (tokd keeps the token); `erase` (git saw the token refused) makes tokd
//! refresh before the next `get`. Other operations are ignored, as the
//! protocol asks.

use crate::Deadline;
use crate::failure::{Failure, exit};
use std::io::Read;
use std::time::Duration;
use tokd_shared::ManagerProxy;

/// What git says about the credential it wants: at most this much is read.
const MAX_INPUT: u64 = 64 * 1024;
/// The user name sent when the consumer names none and git has none.
const FALLBACK_USERNAME: &str = "oauth2";

/// What tokctl does for git.
#[derive(Debug, PartialEq, Eq)]
pub enum Operation {
    Get,
    Erase,
}

/// The attributes of git's request that matter here.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub protocol: String,
    pub host: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// The operation to carry out, or `None` for one that is ignored
/// (`store`, anything newer). git's input is read either way, so that
/// git never writes into a closed pipe.
pub fn read(operation: &str) -> Result<Option<(Operation, Request)>, Failure> {
    let mut input = String::new();
    std::io::stdin()
        .take(MAX_INPUT)
        .read_to_string(&mut input)
        .map_err(|error| {
            Failure::new(exit::USAGE, format!("cannot read git's request: {error}"))
        })?;
    let operation = match operation {
        "get" => Operation::Get,
        "erase" => Operation::Erase,
        _ => return Ok(None),
    };
    Ok(Some((operation, parse(&input))))
}

/// `key=value` lines up to an empty line; unknown keys are ignored.
pub fn parse(input: &str) -> Request {
    let mut request = Request::default();
    for line in input.lines() {
        if line.is_empty() {
            break;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key {
            "protocol" => request.protocol = value.to_owned(),
            "host" => request.host = value.to_owned(),
            "username" => request.username = Some(value.to_owned()),
            "password" => request.password = Some(value.to_owned()),
            _ => {}
        }
    }
    request
}

/// Carries out `operation`; returns what goes to stdout.
pub async fn answer(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
    name: &str,
    operation: Operation,
    request: Request,
    min_valid: Duration,
) -> Result<String, Failure> {
    if request.protocol.is_empty() || request.host.is_empty() {
        return Err(Failure::new(
            exit::USAGE,
            "git sent no protocol or host; is this run by git as a credential helper?",
        ));
    }
    let min_valid_secs = match operation {
        Operation::Get => u32::try_from(min_valid.as_secs()).unwrap_or(u32::MAX),
        // Only to compare with the refused token: no refresh for it.
        Operation::Erase => 0,
    };
    let (username, password, expires_at, warning) = deadline
        .bound(proxy.get_git_credential(name, &request.protocol, &request.host, min_valid_secs))
        .await??;
    match operation {
        Operation::Get => {
            if password.is_empty() || password.contains(['\n', '\0']) {
                return Err(Failure::new(
                    exit::OTHER,
                    format!(
                        "the token of `{name}` cannot be passed to git (empty, or a line break in it)"
                    ),
                ));
            }
            if !warning.is_empty() {
                crate::say::warning(&warning);
            }
            Ok(credential(
                username,
                request.username,
                &password,
                expires_at,
            ))
        }
        Operation::Erase => {
            match request.password {
                // The token tokd holds was refused: a new one before the
                // next `get`. A token already replaced needs nothing.
                Some(refused) if refused == password => {
                    deadline.bound(proxy.refresh(name)).await??;
                    crate::say::line(&format!(
                        "{}://{} refused the token of `{name}`; tokd refreshed it",
                        request.protocol, request.host
                    ));
                }
                _ => {}
            }
            Ok(String::new())
        }
    }
}

/// The lines git reads: the consumer's user name, else git's own, else
/// [`FALLBACK_USERNAME`].
fn credential(
    consumer_username: String,
    git_username: Option<String>,
    password: &str,
    expires_at: i64,
) -> String {
    // A line break would add lines to git's answer; nothing hidden either.
    let fit = |name: &String| !name.is_empty() && !name.chars().any(tokd_shared::text::hidden);
    let username = Some(consumer_username)
        .filter(fit)
        .or(git_username.filter(fit))
        .unwrap_or_else(|| FALLBACK_USERNAME.to_owned());
    let mut out = format!("username={username}\npassword={password}\n");
    if expires_at > 0 {
        out.push_str(&format!("password_expiry_utc={expires_at}\n"));
    }
    out
}

/// `tokctl git-setup NAME`: makes git ask `tokctl git-credential NAME`,
/// and no other helper, for each remote where NAME's tokens may go, in
/// the user's global git config (`git config --global`, so wherever git
/// keeps it). A general helper (`store`, `cache`) must never see the
/// token: git hands a token to every helper in the list to keep, and
/// `store` writes it to `~/.git-credentials` in plain text. So, for each
/// remote, its section is written anew at the end of the file with an
/// empty `helper` first (which drops the helpers listed above it), and a
/// general `[credential]` section is kept above it, into which `git
/// config --global credential.helper …` puts a helper added later (a
/// new section at the end would come after, and get the token).
pub fn setup(name: &str, remotes: &[String]) -> Result<String, Failure> {
    if remotes.is_empty() {
        return Err(Failure::new(
            exit::MISCONFIGURED,
            format!("`{name}`'s consumer names no git hosts; set `git_hosts` in its table"),
        ));
    }
    let general = git_config(&["--get-regexp", r"^credential\.[^.]+$"])?;
    if general.trim().is_empty() {
        git_config(&[
            "credential.tokd",
            "per-host helpers below are tokctl's; general ones go in this section",
        ])?;
    }
    let helper = format!("!{} git-credential {name}", this_tokctl());
    let mut said = String::new();
    for remote in remotes {
        let section = format!("credential.{remote}");
        // This section's own keys only (not a longer host's), each with its
        // value whole (`-z`: a value may hold line breaks; a key alone is
        // a boolean true).
        let pattern = format!("^{}\\.[^.]+$", regex_escape(&section));
        let kept: Vec<(String, String)> = git_config(&["-z", "--get-regexp", &pattern])?
            .split('\0')
            .filter(|entry| !entry.is_empty())
            .map(|entry| match entry.split_once('\n') {
                Some((key, value)) => (key.to_owned(), value.to_owned()),
                None => (entry.to_owned(), "true".to_owned()),
            })
            .filter(|(key, _)| !key.ends_with(".helper"))
            .collect();
        // Absent is fine; anything else `git config` says is a failure.
        let _ = git_config(&["--remove-section", &section]);
        for (key, value) in &kept {
            git_config(&["--add", key, value])?;
        }
        git_config(&["--add", &format!("{section}.helper"), ""])?;
        git_config(&["--add", &format!("{section}.helper"), &helper])?;
        said.push_str(&format!(
            "git asks `tokctl git-credential {name}` for {remote}, and no other helper\n"
        ));
    }
    Ok(said)
}

/// How git's shell should name this tokctl: `tokctl` when that is what
/// `PATH` finds, else its full path (quoted), so the helper works from
/// wherever tokctl was run.
fn this_tokctl() -> String {
    let exe = std::env::current_exe().and_then(std::fs::canonicalize).ok();
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("tokctl"))
            .find(|candidate| candidate.is_file())
            .and_then(|candidate| std::fs::canonicalize(candidate).ok())
    });
    match exe {
        Some(exe) if found.as_ref() != Some(&exe) => {
            format!("'{}'", exe.display().to_string().replace('\'', "'\\''"))
        }
        _ => "tokctl".to_owned(),
    }
}

/// `git config --global ARGS`: its stdout; no match (status 1) is empty.
fn git_config(args: &[&str]) -> Result<String, Failure> {
    let output = std::process::Command::new("git")
        .args(["config", "--global"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|error| Failure::new(exit::OTHER, format!("cannot run git: {error}")))?;
    match output.status.code() {
        Some(0) => Ok(String::from_utf8_lossy(&output.stdout).into_owned()),
        Some(1) if args.contains(&"--get-regexp") => Ok(String::new()),
        _ => Err(Failure::new(
            exit::OTHER,
            format!(
                "git config --global {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        )),
    }
}

/// `text` with the characters a regular expression gives meaning escaped.
fn regex_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gits_request_is_read_up_to_the_empty_line() {
        let request = parse(
            "capability[]=authtype\nprotocol=https\nhost=bitbucket.org\nwwwauth[]=Basic realm=\"x\"\nusername=me\n\nhost=evil.example\n",
        );
        assert_eq!(
            request,
            Request {
                protocol: "https".into(),
                host: "bitbucket.org".into(),
                username: Some("me".into()),
                password: None,
            }
        );
    }

    #[test]
    fn the_consumers_user_name_wins_then_gits_then_the_fallback() {
        assert_eq!(
            credential(
                "x-token-auth".into(),
                Some("me".into()),
                "t0k",
                1_700_000_000
            ),
            "username=x-token-auth\npassword=t0k\npassword_expiry_utc=1700000000\n"
        );
        assert_eq!(
            credential(String::new(), Some("me".into()), "t0k", 0),
            "username=me\npassword=t0k\n",
            "no expiry line for a token that does not expire"
        );
        assert_eq!(
            credential(String::new(), None, "t0k", 0),
            "username=oauth2\npassword=t0k\n"
        );
    }
}
