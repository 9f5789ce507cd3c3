//! The typed values a config file holds beside plain strings: cron
//! schedules, durations and URLs, each checked as it is read.

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use url::Url;

/// Why a value in the config was refused: one sentence with an example of
/// what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidValue(String);

impl fmt::Display for InvalidValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidValue {}

/// A cron expression with seconds (`"0 0 */6 * * *"`), in UTC. It is
/// read by tokio-cron-scheduler's own parser (six fields, seconds first);
/// its times go into the same queue as expiry-driven refreshes.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    text: String,
    /// Boxed: a parsed expression is over 300 bytes, and every configured
    /// installation holds an `Option` of one (10,000 installations, most
    /// without a schedule, would carry 3 MB of `None`s).
    cron: Box<croner::Cron>,
}

impl CronSchedule {
    pub fn parse(text: &str) -> Result<Self, InvalidValue> {
        let trimmed = text.trim();
        let invalid = || {
            InvalidValue(format!(
                "invalid cron schedule {text:?}: expected six fields with seconds first \
                 (\"sec min hour day-of-month month day-of-week\"), e.g. \"0 0 */6 * * *\""
            ))
        };
        let mut job = tokio_cron_scheduler::Job::new_async(trimmed, |_, _| Box::pin(async {}))
            .map_err(|_| invalid())?;
        let cron = job
            .job_data()
            .ok()
            .and_then(|data| data.schedule())
            .ok_or_else(invalid)?;
        Ok(Self {
            text: trimmed.to_owned(),
            cron: Box::new(cron),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time strictly after `after` that the expression names;
    /// `None` when it names none (or the time is out of range).
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        // Whole seconds: the expression names seconds, and the next one
        // strictly after `10.5` is `11`, as it is after `10`.
        let since = after.duration_since(UNIX_EPOCH).ok()?;
        let start = chrono::DateTime::<chrono::Utc>::from_timestamp(
            i64::try_from(since.as_secs()).ok()?,
            0,
        )?;
        let next = self.cron.find_next_occurrence(&start, false).ok()?;
        Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(next.timestamp()).ok()?))
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CronSchedule {}

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses `"90s"`, `"5m"`, `"1h"`, `"1500ms"`, `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    humantime::parse_duration(text.trim()).map_err(|error| {
        InvalidValue(format!(
            "invalid duration {text:?} ({error}); write e.g. \"90s\", \"5m\", \"1h\" or \"1500ms\""
        ))
    })
}

/// A duration written as a string in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(ConfigDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// An absolute http(s) URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HttpUrl(pub Url);

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let url = Url::parse(&text)
            .map_err(|error| serde::de::Error::custom(format!("invalid URL {text:?}: {error}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(serde::de::Error::custom(format!(
                "invalid URL {text:?}: expected an http:// or https:// URL with a host"
            )));
        }
        Ok(HttpUrl(url))
    }
}

/// Whether `url` points at this machine (plain http is tolerated only there).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}
