//! `tokctl allow`, `disallow`, `callers` and `log`: who may get an
//! installation's tokens, and who got them.

use crate::failure::Failure;
use crate::output::relative_past;
use crate::{Deadline, now};
use tokd_shared::ManagerProxy;

/// What `allow` and `disallow` take.
#[derive(Debug, clap::Args)]
pub struct Change {
    /// The installation.
    #[arg(add = crate::names())]
    pub name: String,
    /// Who: `unit:NAME.service` (a systemd unit, tokctl run by it
    /// included), `exe:/PATH` (a program that calls tokd's D-Bus API
    /// itself), `flatpak:APP.ID` (a Flatpak app), or `any`.
    pub caller: String,
}

/// `tokctl allow NAME CALLER`.
pub async fn allow(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
    change: Change,
) -> Result<String, Failure> {
    let added = deadline
        .bound(proxy.allow_caller(&change.name, &change.caller))
        .await??;
    crate::say::line(&if added {
        format!(
            "{} may now get the tokens of {}",
            change.caller, change.name
        )
    } else {
        format!(
            "{} could already get the tokens of {}",
            change.caller, change.name
        )
    });
    Ok(String::new())
}

/// `tokctl disallow NAME CALLER`.
pub async fn disallow(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
    change: Change,
) -> Result<String, Failure> {
    let removed = deadline
        .bound(proxy.forget_caller(&change.name, &change.caller))
        .await??;
    crate::say::line(&if removed {
        format!(
            "{} may no longer get the tokens of {} (unless the config's `callers` names it)",
            change.caller, change.name
        )
    } else {
        format!(
            "{} was not allowed for {} by tokctl allow (or an \"Always\"); the config's `callers` is changed in the config",
            change.caller, change.name
        )
    });
    Ok(String::new())
}

/// `tokctl callers NAME`: the policy, one line each.
pub async fn show(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
    name: &str,
) -> Result<String, Failure> {
    let (limited, configured, unknown, allowed) = deadline.bound(proxy.callers(name)).await??;
    let mut out = String::new();
    if !limited {
        out.push_str("every caller (no `callers` in the config)\n");
    }
    for rule in &configured {
        out.push_str(&format!("{rule} (config)\n"));
    }
    for rule in &allowed {
        out.push_str(&format!(
            "{rule} (allowed; `tokctl disallow {name} {rule}` takes it back)\n"
        ));
    }
    if limited {
        out.push_str(&format!("others: {unknown}\n"));
    }
    Ok(out)
}

/// `tokctl log [NAME]`: the last tokens handed out, oldest first.
pub async fn log(
    proxy: &ManagerProxy<'_>,
    deadline: &Deadline,
    name: Option<&str>,
) -> Result<String, Failure> {
    if let Some(name) = name {
        // An unknown name is an error, as for every other command.
        deadline.bound(proxy.callers(name)).await??;
    }
    let deliveries = deadline.bound(proxy.deliveries()).await??;
    let now = now();
    let mut out = String::new();
    for (at, installation, how, caller) in deliveries {
        if name.is_some_and(|name| name != installation) {
            continue;
        }
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(at.max(0).unsigned_abs()),
        );
        out.push_str(&format!(
            "{when} ({}) {installation} {how} {caller}\n",
            relative_past(at, now)
        ));
    }
    if out.is_empty() {
        crate::say::line(&match name {
            Some(name) => format!("no token of {name} handed out since tokd started"),
            None => "no token handed out since tokd started".to_owned(),
        });
    }
    Ok(out)
}
