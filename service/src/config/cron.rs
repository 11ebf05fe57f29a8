//! When things run: cron schedules with seconds and the time zones they
//! are read in.
//!
//! A schedule is parsed exactly as `tokio-cron-scheduler` parses it (six
//! fields, seconds first, day-of-month and day-of-week both required to
//! match when both are given), so a schedule the config accepts is one the
//! scheduler runs. Parsing happens while the TOML is read, so a bad
//! schedule is reported with the file, line and column of its value.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A cron schedule with seconds: `sec min hour day-of-month month day-of-week`.
#[derive(Clone)]
pub struct CronSchedule {
    text: String,
    cron: Cron,
}

impl CronSchedule {
    /// The schedule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first time strictly after `after` that the schedule fires in
    /// `timezone`; `None` when it never fires again.
    pub fn next_after(&self, after: DateTime<Utc>, timezone: Timezone) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&timezone.0), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last time at or before `before` that the schedule fired in
    /// `timezone`; `None` when it never did.
    pub fn last_before(&self, before: DateTime<Utc>, timezone: Timezone) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&before.with_timezone(&timezone.0), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

impl FromStr for CronSchedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .dom_and_dow(true)
            .build()
            .parse(text)
            .map_err(|e| {
                format!(
                    "{text:?} is not a cron schedule with seconds (\"sec min hour day month weekday\", \
                     e.g. \"0 5 * * * *\" for five past every hour): {e}"
                )
            })?;
        Ok(Self {
            text: text.to_owned(),
            cron,
        })
    }
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSchedule({:?})", self.text)
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for CronSchedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// An IANA time zone (`Europe/Berlin`, `UTC`) schedules are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timezone(pub chrono_tz::Tz);

impl Default for Timezone {
    fn default() -> Self {
        Self(chrono_tz::UTC)
    }
}

impl fmt::Display for Timezone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl<'de> Deserialize<'de> for Timezone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse::<chrono_tz::Tz>().map(Self).map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown time zone {text:?}; use an IANA name such as \"UTC\" or \"Europe/Berlin\""
            ))
        })
    }
}

impl Serialize for Timezone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn schedules_need_seconds_and_follow_the_time_zone() -> anyhow::Result<()> {
        let error = "0 5 * * *"
            .parse::<CronSchedule>()
            .err()
            .unwrap_or_default();
        assert!(error.contains("seconds"), "{error}");
        let daily: CronSchedule = "0 0 3 * * *".parse().map_err(anyhow::Error::msg)?;
        let noon = Utc
            .with_ymd_and_hms(2026, 7, 1, 12, 0, 0)
            .single()
            .unwrap_or_default();
        let berlin = Timezone("Europe/Berlin".parse().map_err(anyhow::Error::msg)?);
        // 03:00 in Berlin in summer is 01:00 UTC.
        assert_eq!(
            daily.next_after(noon, berlin).map(|t| t.to_rfc3339()),
            Some("2026-07-02T01:00:00+00:00".to_owned())
        );
        assert_eq!(
            daily
                .last_before(noon, Timezone::default())
                .map(|t| t.to_rfc3339()),
            Some("2026-07-01T03:00:00+00:00".to_owned())
        );
        Ok(())
    }
}
