//! An installation's `callers` and `unknown_callers` keys, read into its
//! caller policy (see `crate::callers`).

use super::consumer::StringList;
use super::{ConfigError, Source};
use crate::callers::{Policy, Rule, Unknown};
use toml::Spanned;

/// The policy of installation `name`; `None` when it sets neither key
/// (every caller of the user is served, as before policies existed).
pub(super) fn policy(
    source: &Source<'_>,
    name: &str,
    callers: Option<Spanned<StringList>>,
    unknown: Option<Unknown>,
) -> Result<Option<Policy>, ConfigError> {
    if callers.is_none() && unknown.is_none() {
        return Ok(None);
    }
    let mut rules = Vec::new();
    if let Some(callers) = callers {
        let span = callers.span();
        for entry in callers.into_inner().0 {
            let rule: Rule = entry.parse().map_err(|error: String| {
                source.error(
                    Some(span.clone()),
                    format!("installation `{name}`: `callers`: {error}"),
                )
            })?;
            // Its symlinks resolved; what they resolve to must be a rule too.
            let rule = rule.resolved();
            let rule: Rule = rule.to_string().parse().map_err(|error: String| {
                source.error(
                    Some(span.clone()),
                    format!("installation `{name}`: `callers`, resolved: {error}"),
                )
            })?;
            if !rules.contains(&rule) {
                rules.push(rule);
            }
        }
    }
    Ok(Some(Policy {
        rules,
        unknown: unknown.unwrap_or_default(),
    }))
}
