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

/// The units a duration may use: seconds to hours. Longer units make no
/// sense for tokd's durations, and humantime's `M` (months) beside `m`
/// (minutes) turns a typo into five months.
const UNITS: &[&str] = &[
    "ns", "us", "µs", "ms", "msec", "s", "sec", "secs", "second", "seconds", "m", "min", "mins",
    "minute", "minutes", "h", "hr", "hrs", "hour", "hours",
];

/// Parses plain seconds (`"90"`) or `"90s"`, `"5m"`, `"1h"`, `"1500ms"`,
/// `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidValue> {
    let trimmed = text.trim();
    if let Ok(secs) = trimmed.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let example = "write e.g. \"90s\", \"5m\", \"1h\", \"1500ms\" or seconds (90)";
    for unit in trimmed
        .split(|c: char| c.is_ascii_digit() || c.is_whitespace())
        .filter(|unit| !unit.is_empty())
    {
        if !UNITS.contains(&unit) && humantime::parse_duration(&format!("1{unit}")).is_ok() {
            let hint = if unit == "M" {
                " (\"M\" is months; minutes are \"m\")"
            } else {
                ""
            };
            return Err(InvalidValue(format!(
                "invalid duration {text:?}: the unit {unit:?} is longer than tokd takes{hint}; {example}"
            )));
        }
    }
    humantime::parse_duration(trimmed)
        .map_err(|error| InvalidValue(format!("invalid duration {text:?} ({error}); {example}")))
}

/// A duration in the config: a string with units, or whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"90s\", \"5m\" or \"1h\", or whole seconds")
            }
            fn visit_i64<E: serde::de::Error>(self, secs: i64) -> Result<Self::Value, E> {
                u64::try_from(secs)
                    .map(|secs| ConfigDuration(Duration::from_secs(secs)))
                    .map_err(|_| {
                        E::custom(format!("invalid duration {secs}: it may not be negative"))
                    })
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                parse_duration(text).map(ConfigDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A list of strings, each with its place in the file, that answers a
/// plain string with an example of the list form.
#[derive(Debug)]
pub(super) struct SpannedList {
    pub items: Vec<toml::Spanned<String>>,
}

impl<'de> Deserialize<'de> for SpannedList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SpannedList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of strings, e.g. [\"repository\", \"pullrequest\"]")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<toml::Spanned<String>>()? {
                    items.push(item);
                }
                Ok(SpannedList { items })
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                let example: Vec<String> = text
                    .split([' ', ','])
                    .filter(|word| !word.is_empty())
                    .map(|word| format!("{word:?}"))
                    .collect();
                Err(E::custom(format!(
                    "expected a list of strings, one per item, e.g. [{}]",
                    example.join(", ")
                )))
            }
        }
        deserializer.deserialize_any(Visitor)
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
