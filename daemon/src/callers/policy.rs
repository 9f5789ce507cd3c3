//! Which callers may get an installation's tokens: the rules of its
//! `callers` key, and what happens to a caller no rule names (its
//! `unknown_callers`). Pure: no I/O.

use super::identity::{Caller, valid_app_id};
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// One entry of `callers`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rule {
    /// `any`: every caller, identified or not.
    Any,
    /// `unit:NAME`: a process (tokctl included) in that systemd unit.
    Unit(String),
    /// `exe:/PATH`: a process running that program (for tokctl calls,
    /// that is tokctl itself: see the README).
    Exe(PathBuf),
    /// `flatpak:APP.ID`: a process in that Flatpak app's sandbox.
    Flatpak(String),
}

/// The longest rule (a path's limit on Linux).
pub const MAX_RULE: usize = 4096;

/// The sentence for an entry that is not a rule.
pub const RULE_FORMS: &str = "a caller is `any`, `unit:NAME.service` (or `.scope`, or `.slice` for every unit in it), `exe:/absolute/path` or `flatpak:APP.ID`";

impl std::str::FromStr for Rule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.len() > MAX_RULE {
            return Err(format!(
                "a caller is at most {MAX_RULE} bytes: {RULE_FORMS}"
            ));
        }
        let bad = || format!("`{text}` is not a caller: {RULE_FORMS}");
        if text == "any" {
            return Ok(Self::Any);
        }
        let (kind, value) = text.split_once(':').ok_or_else(bad)?;
        match kind {
            "unit"
                if [".service", ".scope", ".slice"]
                    .iter()
                    .any(|end| value.len() > end.len() && value.ends_with(end))
                    && !value.contains('/')
                    && !value.chars().any(char::is_whitespace) =>
            {
                Ok(Self::Unit(value.to_owned()))
            }
            "exe" if value.starts_with('/') && !value.chars().any(char::is_control) => {
                Ok(Self::Exe(PathBuf::from(value)))
            }
            "flatpak" if valid_app_id(value) => Ok(Self::Flatpak(value.to_owned())),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::Unit(unit) => write!(f, "unit:{unit}"),
            Self::Exe(path) => write!(f, "exe:{}", path.display()),
            Self::Flatpak(app) => write!(f, "flatpak:{app}"),
        }
    }
}

impl Rule {
    /// The rule with an `exe:` path's symlinks resolved, as the kernel
    /// names a running program (`/usr/bin/python3` is
    /// `/usr/bin/python3.11`); a path that does not resolve stays as
    /// written. Blocking file-system calls.
    pub fn resolved(self) -> Self {
        match self {
            Self::Exe(path) => Self::Exe(std::fs::canonicalize(&path).unwrap_or(path)),
            other => other,
        }
    }

    /// Whether this rule names `caller`. A sandboxed caller is named by
    /// its Flatpak app id only: its unit and program are the sandbox's. A
    /// unit or a program names only a caller known to run on the host. A
    /// slice names every unit inside it.
    pub fn matches(&self, caller: &Caller) -> bool {
        match self {
            Self::Any => true,
            Self::Flatpak(app) => {
                caller.host == Some(false) && caller.flatpak.as_ref() == Some(app)
            }
            Self::Unit(unit) if unit.ends_with(".slice") => {
                caller.on_the_host()
                    && caller
                        .cgroup
                        .as_deref()
                        .is_some_and(|path| path.split('/').any(|part| part == unit))
            }
            Self::Unit(unit) => caller.on_the_host() && caller.unit.as_ref() == Some(unit),
            Self::Exe(path) => caller.on_the_host() && caller.exe.as_ref() == Some(path),
        }
    }

    /// The rule a sentence (or "Always allow") proposes for `caller`: its
    /// Flatpak app id; else, on the host, its unit when that is a service
    /// of its own, else its program unless that program runs anything
    /// (tokctl, a shell, an interpreter: allowing it would allow every
    /// program of the user). `None`: nothing names it narrowly.
    pub fn proposed_for(caller: &Caller) -> Option<Self> {
        if caller.host == Some(false) {
            return caller.flatpak.clone().map(Self::Flatpak);
        }
        let service = caller.unit.as_ref().filter(|unit| {
            unit.ends_with(".service")
                && !unit.starts_with("user@")
                && format!("unit:{unit}").parse::<Rule>().is_ok()
        });
        if let Some(unit) = service {
            return Some(Self::Unit(unit.clone()));
        }
        caller
            .exe
            .as_ref()
            .filter(|exe| !runs_anything(exe))
            .and_then(|exe| format!("exe:{}", exe.to_str()?).parse().ok())
    }
}

/// Programs that run whatever they are told: a rule naming one names every
/// program of the user.
fn runs_anything(exe: &std::path::Path) -> bool {
    const RUNNERS: [&str; 36] = [
        "tokctl",
        "docker-credential-tokd",
        "sh",
        "bash",
        "dash",
        "zsh",
        "fish",
        "ksh",
        "mksh",
        "busybox",
        "env",
        "python",
        "perl",
        "ruby",
        "node",
        "nodejs",
        "java",
        "php",
        "lua",
        "tclsh",
        "pwsh",
        "deno",
        "bun",
        "guile",
        // General D-Bus clients and socket relays: they ask for whoever
        // runs them.
        "dbus-send",
        "busctl",
        "gdbus",
        "qdbus",
        "dbus-run-session",
        "socat",
        "nc",
        "ncat",
        "netcat",
        "curl",
        "wget",
        "xargs",
    ];
    let Some(name) = exe.file_name().and_then(|name| name.to_str()) else {
        return true;
    };
    // The dynamic loader runs any program given to it.
    if name.starts_with("ld-linux") || name.starts_with("ld.so") || name.starts_with("ld-musl") {
        return true;
    }
    // python3.11, lua5.4, perl5.36: the version is not the program.
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    RUNNERS.contains(&stem)
}

/// `unknown_callers`: what happens to a caller no rule names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    /// Refused, with the sentence that names the command to allow it.
    #[default]
    Deny,
    /// A desktop notification asks the user (allow once, always, deny);
    /// without a notification server, as `deny`.
    Ask,
}

impl Unknown {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deny => "deny",
            Self::Ask => "ask",
        }
    }
}

/// An installation's policy. An installation without one (no `callers`,
/// no `unknown_callers`) serves every caller of the user, as before.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub unknown: Unknown,
}

/// What the policy says of one caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Ask,
    Denied,
}

impl Policy {
    /// The verdict for `caller`, given the rules the user allowed since
    /// (`remembered`: "Always" answers and `tokctl allow`).
    pub fn judge(&self, caller: &Caller, remembered: &[Rule]) -> Verdict {
        if self
            .rules
            .iter()
            .chain(remembered)
            .any(|rule| rule.matches(caller))
        {
            Verdict::Allowed
        } else if self.unknown == Unknown::Ask {
            Verdict::Ask
        } else {
            Verdict::Denied
        }
    }
}

/// The sentence a refused caller gets: who, which installation, and the
/// command that allows it.
pub fn refusal(name: &str, caller: &Caller) -> String {
    match Rule::proposed_for(caller) {
        Some(rule) => format!(
            "{caller} may not get the tokens of `{name}`; to allow it, run: tokctl allow {name} {rule}"
        ),
        None if caller.on_the_host() && !caller.unknown() => format!(
            "{caller} may not get the tokens of `{name}`, and tokd cannot tell it from other programs of yours (a shell, an interpreter or tokctl, outside a service of its own): run it under a systemd unit and allow that unit (tokctl allow {name} unit:NAME.service), or let every caller in with `callers = [\"any\"]`"
        ),
        None => format!(
            "{caller} may not get the tokens of `{name}`; only `callers = [\"any\"]` in its config lets such a caller in"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(unit: Option<&str>, exe: Option<&str>, flatpak: Option<&str>) -> Caller {
        Caller {
            pid: Some(42),
            unit: unit.map(str::to_owned),
            cgroup: unit.map(|unit| {
                format!("/user.slice/user-1000.slice/user@1000.service/app.slice/{unit}")
            }),
            host: Some(flatpak.is_none()),
            exe: exe.map(PathBuf::from),
            flatpak: flatpak.map(str::to_owned),
        }
    }

    #[test]
    fn rules_read_and_print_the_same() {
        for text in [
            "any",
            "unit:backup.service",
            "unit:session-2.scope",
            "exe:/usr/bin/evolution",
            "flatpak:org.gnome.Evolution",
        ] {
            let rule: Rule = text.parse().expect(text);
            assert_eq!(rule.to_string(), text);
        }
        for bad in [
            "",
            "anyone",
            "unit:backup",
            "unit:a/b.service",
            "exe:relative/path",
            "flatpak:org.example",
            "pid:42",
        ] {
            let error = bad.parse::<Rule>().expect_err(bad);
            assert!(error.contains(RULE_FORMS), "{error}");
        }
    }

    #[test]
    fn a_sandboxed_caller_is_named_by_its_app_only() {
        let sandboxed = caller(
            Some("app-flatpak-org.example.App-1.scope"),
            Some("/usr/bin/python3"),
            Some("org.example.App"),
        );
        assert!(Rule::Flatpak("org.example.App".into()).matches(&sandboxed));
        assert!(!Rule::Exe("/usr/bin/python3".into()).matches(&sandboxed));
        assert!(!Rule::Unit("app-flatpak-org.example.App-1.scope".into()).matches(&sandboxed));
        let host = caller(Some("backup.service"), Some("/usr/bin/python3"), None);
        assert!(!Rule::Flatpak("org.example.App".into()).matches(&host));
        assert!(Rule::Unit("backup.service".into()).matches(&host));
        assert!(Rule::Exe("/usr/bin/python3".into()).matches(&host));
    }

    #[test]
    fn an_unidentified_caller_gets_in_only_by_any() {
        let nobody = Caller::default();
        let policy = Policy {
            rules: vec![Rule::Unit("backup.service".into())],
            unknown: Unknown::Deny,
        };
        assert_eq!(policy.judge(&nobody, &[]), Verdict::Denied);
        assert_eq!(policy.judge(&nobody, &[Rule::Any]), Verdict::Allowed);
        assert!(refusal("work", &nobody).contains("callers = [\"any\"]"));
    }

    #[test]
    fn remembered_rules_allow_and_ask_is_asked() {
        let host = caller(Some("session-2.scope"), Some("/usr/bin/evolution"), None);
        assert!(
            Rule::Unit("app.slice".into()).matches(&host),
            "a slice names what is in it"
        );
        let policy = Policy {
            rules: vec![],
            unknown: Unknown::Ask,
        };
        assert_eq!(policy.judge(&host, &[]), Verdict::Ask);
        assert_eq!(
            policy.judge(&host, &[Rule::Exe("/usr/bin/evolution".into())]),
            Verdict::Allowed
        );
        let sentence = refusal("work", &host);
        assert!(
            sentence.ends_with("to allow it, run: tokctl allow work exe:/usr/bin/evolution"),
            "{sentence}"
        );
        let service = caller(Some("backup.service"), Some("/usr/bin/tokctl"), None);
        assert!(refusal("work", &service).ends_with("tokctl allow work unit:backup.service"));
    }

    #[test]
    fn a_program_that_runs_anything_is_never_proposed() {
        for exe in [
            "/usr/local/bin/tokctl",
            "/usr/bin/python3.11",
            "/bin/bash",
            "/usr/bin/env",
            "/usr/bin/dbus-send",
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        ] {
            let terminal = caller(Some("session-2.scope"), Some(exe), None);
            assert_eq!(Rule::proposed_for(&terminal), None, "{exe}");
            assert!(
                refusal("work", &terminal)
                    .contains("run it under a systemd unit and allow that unit"),
                "{exe}"
            );
        }
        // A sandbox that is not a Flatpak app has no narrow name.
        let mut boxed = caller(None, Some("/usr/bin/curl"), None);
        boxed.host = Some(false);
        assert_eq!(Rule::proposed_for(&boxed), None);
        assert!(!Rule::Exe("/usr/bin/curl".into()).matches(&boxed));
        // Nor does a caller whose root could not be read match a program.
        let mut unsure = caller(None, Some("/usr/bin/curl"), None);
        unsure.host = None;
        assert!(!Rule::Exe("/usr/bin/curl".into()).matches(&unsure));
    }
}
