//! `tokctl exec [NAME] [--env VAR | --env INSTALLATION=VAR …] -- COMMAND…`:
//! runs COMMAND in tokctl's place (`execvp`) with fresh tokens in its
//! environment, never in its arguments (which every user can read in
//! `ps`). Its exit status is COMMAND's; 126 or 127 when COMMAND cannot
//! be run, as shells do.

use crate::Deadline;
use crate::failure::{Failure, exit};
use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::time::Duration;
use tokd_shared::ManagerProxy;

/// The variable NAME's token goes in unless `--env VAR` names another.
pub const DEFAULT_VAR: &str = "TOKEN";
/// Exit statuses of a command that cannot be run, as POSIX shells use them.
const CANNOT_EXECUTE: u8 = 126;
const NOT_FOUND: u8 = 127;

/// Which installation's token goes in which variable.
#[derive(Debug, PartialEq, Eq)]
pub struct Binding {
    pub installation: String,
    pub var: String,
}

/// The bindings `NAME` and the `--env` values ask for, or a usage error.
pub fn bindings(name: Option<&str>, envs: &[String]) -> Result<Vec<Binding>, Failure> {
    let usage = |message: String| Failure::new(exit::USAGE, message);
    let mut bindings: Vec<Binding> = Vec::new();
    let mut named_var = None;
    for env in envs {
        match env.split_once('=') {
            Some((installation, var)) => bindings.push(Binding {
                installation: installation.to_owned(),
                var: var.to_owned(),
            }),
            None if named_var.is_some() => {
                return Err(usage(format!(
                    "--env {env}: NAME's token goes in one variable; use --env INSTALLATION=VAR for other installations"
                )));
            }
            None => named_var = Some(env.clone()),
        }
    }
    match (name, named_var) {
        (Some(name), var) => bindings.insert(
            0,
            Binding {
                installation: name.to_owned(),
                var: var.unwrap_or_else(|| DEFAULT_VAR.to_owned()),
            },
        ),
        (None, Some(var)) => {
            return Err(usage(format!(
                "--env {var} names the variable for NAME's token, but no NAME was given; e.g. `tokctl exec bitbucket --env {var} -- COMMAND`"
            )));
        }
        (None, None) if bindings.is_empty() => {
            return Err(usage(
                "name an installation (`tokctl exec bitbucket -- COMMAND`) or pairs (`--env bitbucket=BB_TOKEN`)"
                    .to_owned(),
            ));
        }
        (None, None) => {}
    }
    for (index, binding) in bindings.iter().enumerate() {
        if binding.installation.is_empty() {
            return Err(usage(format!(
                "--env ={}: an installation name goes before the '='",
                binding.var
            )));
        }
        if !valid_var(&binding.var) {
            return Err(usage(format!(
                "`{}` is not an environment variable name (letters, digits and '_', not starting with a digit)",
                binding.var
            )));
        }
        if let Some(why) = interpreted_at_start(&binding.var) {
            return Err(usage(format!(
                "`{}` is not given a token: {why}; name another variable",
                binding.var
            )));
        }
        if bindings[..index]
            .iter()
            .any(|other| other.var == binding.var)
        {
            return Err(usage(format!(
                "`{}` is given two tokens; name each variable once",
                binding.var
            )));
        }
    }
    Ok(bindings)
}

/// Why a token may not go in `var`, if it may not: the dynamic loader, a
/// shell or a common runtime reads the variable when the command starts,
/// and could print it, load a file it names, or run it (`LD_PRELOAD` made
/// the loader print the token to stderr).
fn interpreted_at_start(var: &str) -> Option<&'static str> {
    const SHELL: &[&str] = &[
        "BASH_ENV",
        "ENV",
        "PATH",
        "IFS",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PS1",
        "PS2",
        "PROMPT_COMMAND",
        "CDPATH",
        "HOME",
        "SHELL",
        "TMPDIR",
        "GLOBIGNORE",
        "HISTFILE",
        "PS0",
        "ZDOTDIR",
    ];
    const RUNTIMES: &[&str] = &[
        "PERL5OPT",
        "PERL5LIB",
        "PERLLIB",
        "PYTHONSTARTUP",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONWARNINGS",
        "PYTHONINSPECT",
        "RUBYOPT",
        "RUBYLIB",
        "NODE_OPTIONS",
        "NODE_PATH",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "GIT_EXEC_PATH",
        "GIT_SSH_COMMAND",
        "GIT_CONFIG_GLOBAL",
        "GCONV_PATH",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "MALLOC_CHECK_",
        "MALLOC_TRACE",
        "GIT_CONFIG_PARAMETERS",
        "GIT_PAGER",
        "GIT_EDITOR",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "BROWSER",
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ];
    if var.starts_with("LD_") {
        Some("the dynamic loader reads `LD_*` variables when the command starts")
    } else if var.starts_with("BASH_FUNC_") || SHELL.contains(&var) {
        Some("shells read it when they start")
    } else if var.starts_with("GLIBC_")
        || var.starts_with("LC_")
        || var == "LANG"
        || var == "LANGUAGE"
    {
        Some("the C library reads it when the command starts")
    } else if RUNTIMES.contains(&var) || var.starts_with("LUA_INIT") || var.starts_with("GIT_TRACE")
    {
        Some(
            "a language runtime, git or another common tool reads it and may run, load or send what it names",
        )
    } else {
        None
    }
}

fn valid_var(var: &str) -> bool {
    let mut bytes = var.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Gets every token, then replaces this process with `command`. Returns
/// only on failure: a token that could not be had (nothing is run), or a
/// command that could not be run (126, 127).
pub async fn exec(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
    bindings: Vec<Binding>,
    min_valid: Duration,
    command: Vec<OsString>,
) -> Failure {
    let secs = u32::try_from(min_valid.as_secs()).unwrap_or(u32::MAX);
    let mut env = Vec::with_capacity(bindings.len());
    for binding in bindings {
        let answer = match deadline
            .bound(proxy.get_token(&binding.installation, secs))
            .await
        {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return error.into(),
            Err(failure) => return failure,
        };
        let (token, _, _, warning) = answer;
        if !warning.is_empty() {
            crate::say::warning(&warning);
        }
        env.push((binding.var, token));
    }
    let Some((program, args)) = command.split_first() else {
        return Failure::new(exit::USAGE, "no COMMAND after `--`");
    };
    let error = std::process::Command::new(program)
        .args(args)
        .envs(env)
        .exec();
    let shown = program.to_string_lossy();
    match error.kind() {
        std::io::ErrorKind::NotFound => {
            Failure::new(NOT_FOUND, format!("{shown}: command not found"))
        }
        _ => Failure::new(CANNOT_EXECUTE, format!("cannot run {shown}: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(name: Option<&str>, envs: &[&str]) -> Vec<(String, String)> {
        let envs: Vec<String> = envs.iter().map(|e| (*e).to_owned()).collect();
        bindings(name, &envs)
            .unwrap_or_else(|failure| panic!("{}", failure.message))
            .into_iter()
            .map(|b| (b.installation, b.var))
            .collect()
    }

    fn refused(name: Option<&str>, envs: &[&str]) -> String {
        let envs: Vec<String> = envs.iter().map(|e| (*e).to_owned()).collect();
        let failure = bindings(name, &envs).expect_err("refused");
        assert_eq!(failure.status, exit::USAGE);
        failure.message
    }

    #[test]
    fn names_and_pairs_make_bindings() {
        let pair = |i: &str, v: &str| (i.to_owned(), v.to_owned());
        assert_eq!(ok(Some("bb"), &[]), [pair("bb", "TOKEN")]);
        assert_eq!(ok(Some("bb"), &["BB"]), [pair("bb", "BB")]);
        assert_eq!(
            ok(Some("bb"), &["gh=GH_TOKEN", "BB"]),
            [pair("bb", "BB"), pair("gh", "GH_TOKEN")]
        );
        assert_eq!(
            ok(None, &["bb=BB", "gh=_GH1"]),
            [pair("bb", "BB"), pair("gh", "_GH1")]
        );
    }

    #[test]
    fn bad_bindings_are_usage_errors() {
        assert!(refused(None, &[]).contains("name an installation"));
        assert!(refused(None, &["BB"]).contains("no NAME was given"));
        assert!(refused(Some("bb"), &["A", "B"]).contains("one variable"));
        assert!(refused(Some("bb"), &["gh=TOKEN"]).contains("two tokens"));
        assert!(refused(None, &["bb=1X"]).contains("not an environment variable name"));
        assert!(refused(None, &["bb=A-B"]).contains("not an environment variable name"));
        assert!(refused(None, &["=X"]).contains("goes before the '='"));
    }

    #[test]
    fn variables_read_when_the_command_starts_are_refused() {
        for var in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_DEBUG",
            "BASH_ENV",
            "ENV",
            "PATH",
            "IFS",
            "SHELLOPTS",
            "PS4",
            "PROMPT_COMMAND",
            "BASH_FUNC_x%%",
            "GCONV_PATH",
            "LANG",
            "LC_ALL",
            "PERL5OPT",
            "PYTHONSTARTUP",
            "NODE_OPTIONS",
            "GIT_SSH_COMMAND",
            "PS0",
            "LUA_INIT",
            "GIT_TRACE",
            "https_proxy",
            "EDITOR",
        ] {
            for envs in [vec![var.to_owned()], vec![format!("gh={var}")]] {
                let envs: Vec<&str> = envs.iter().map(String::as_str).collect();
                let message = refused(Some("bb"), &envs);
                // Names that are no variable names at all are refused first.
                assert!(
                    message.contains("is not given a token")
                        || message.contains("not an environment variable name"),
                    "{var}: {message}"
                );
            }
            let message = refused(Some("bb"), &[var]);
            if valid_var(var) {
                assert!(
                    message.contains("name another variable"),
                    "{var}: {message}"
                );
            }
        }
        // Ordinary names still go.
        for var in [
            "TOKEN",
            "GH_TOKEN",
            "PATHFINDER_TOKEN",
            "ENV_TOKEN",
            "LDAP_TOKEN",
        ] {
            assert!(bindings(Some("bb"), &[var.to_owned()]).is_ok(), "{var}");
        }
    }
}
