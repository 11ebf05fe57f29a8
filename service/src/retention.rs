//! Retention policies: which snapshots of a job to keep.
//!
//! The usual rules: keep the newest `keep_last`; for each of `keep_hourly`,
//! `keep_daily`, `keep_weekly`, `keep_monthly`, `keep_yearly` keep the newest
//! snapshot of that many distinct periods, newest first; keep everything
//! younger than `keep_within` (measured from the newest snapshot, so a
//! stalled job never loses its last backups). A snapshot kept by any rule
//! is kept. A policy that keeps nothing is refused.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};

/// A job's `retention` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    /// Newest snapshots to keep.
    #[serde(default)]
    pub keep_last: u32,
    /// Hours to keep the newest snapshot of.
    #[serde(default)]
    pub keep_hourly: u32,
    /// Days to keep the newest snapshot of.
    #[serde(default)]
    pub keep_daily: u32,
    /// ISO weeks to keep the newest snapshot of.
    #[serde(default)]
    pub keep_weekly: u32,
    /// Months to keep the newest snapshot of.
    #[serde(default)]
    pub keep_monthly: u32,
    /// Years to keep the newest snapshot of.
    #[serde(default)]
    pub keep_yearly: u32,
    /// Keep every snapshot this much younger than the newest (e.g. "7d").
    #[serde(default, with = "crate::field::optional_duration")]
    pub keep_within: Option<std::time::Duration>,
}

/// Which calendar period a time falls in, as a comparable key.
type Period = fn(&DateTime<Utc>) -> (i32, u32);

/// One snapshot's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot's time.
    pub time: DateTime<Utc>,
    /// Why it is kept (rule names); empty when it is forgotten.
    pub kept_by: Vec<&'static str>,
}

impl RetentionPolicy {
    /// Whether the policy keeps anything at all.
    pub fn keeps_something(&self) -> bool {
        self.keep_last
            + self.keep_hourly
            + self.keep_daily
            + self.keep_weekly
            + self.keep_monthly
            + self.keep_yearly
            > 0
            || self.keep_within.is_some()
    }

    /// Decides for snapshots given by their times (any order); returns one
    /// decision per input, in input order.
    pub fn apply(&self, times: &[DateTime<Utc>]) -> Vec<Decision> {
        let mut order: Vec<usize> = (0..times.len()).collect();
        order.sort_by(|&a, &b| times[b].cmp(&times[a]));
        let mut decisions: Vec<Decision> = times
            .iter()
            .map(|&time| Decision {
                time,
                kept_by: Vec::new(),
            })
            .collect();
        for (rank, &i) in order.iter().enumerate() {
            if rank < self.keep_last as usize {
                decisions[i].kept_by.push("last");
            }
        }
        let buckets: [(&'static str, u32, Period); 5] = [
            ("hourly", self.keep_hourly, |t| {
                (t.year(), t.ordinal() * 24 + t.hour())
            }),
            ("daily", self.keep_daily, |t| (t.year(), t.ordinal())),
            ("weekly", self.keep_weekly, |t| {
                let week = t.iso_week();
                (week.year(), week.week())
            }),
            ("monthly", self.keep_monthly, |t| (t.year(), t.month())),
            ("yearly", self.keep_yearly, |t| (t.year(), 0)),
        ];
        for (rule, count, period) in buckets {
            let mut seen = HashSet::new();
            for &i in &order {
                if seen.len() >= count as usize {
                    break;
                }
                if seen.insert(period(&times[i])) {
                    decisions[i].kept_by.push(rule);
                }
            }
        }
        if let (Some(within), Some(&newest)) = (self.keep_within, order.first()) {
            let horizon =
                times[newest] - chrono::Duration::from_std(within).unwrap_or(chrono::Duration::MAX);
            for &i in &order {
                if times[i] >= horizon {
                    decisions[i].kept_by.push("within");
                }
            }
        }
        decisions
    }

    /// Decides for snapshots of which only some can be restored alone
    /// (`anchors`: a WAL archive's base backups), given by time and
    /// whether each is one: the policy decides among the anchors, and every
    /// other snapshot is kept from the oldest kept anchor on (`"needed"`),
    /// since an anchor is restored with all that follows it. With no anchor
    /// yet, everything is kept.
    pub fn apply_anchored(&self, snapshots: &[(DateTime<Utc>, bool)]) -> Vec<Decision> {
        let anchors: Vec<DateTime<Utc>> = snapshots
            .iter()
            .filter(|(_, anchor)| *anchor)
            .map(|(time, _)| *time)
            .collect();
        let decisions = self.apply(&anchors);
        let oldest_kept = anchors
            .iter()
            .zip(&decisions)
            .filter(|(_, d)| !d.kept_by.is_empty())
            .map(|(time, _)| *time)
            .min();
        let mut decided = decisions.into_iter();
        snapshots
            .iter()
            .map(|&(time, anchor)| {
                if anchor {
                    return decided.next().unwrap_or(Decision {
                        time,
                        kept_by: Vec::new(),
                    });
                }
                let needed = oldest_kept.is_none_or(|oldest| time >= oldest);
                Decision {
                    time,
                    kept_by: if needed { vec!["needed"] } else { Vec::new() },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn hours_ago(hours: &[i64]) -> Vec<DateTime<Utc>> {
        let now = Utc
            .with_ymd_and_hms(2026, 11, 26, 12, 30, 0)
            .single()
            .unwrap_or_default();
        hours
            .iter()
            .map(|h| now - chrono::Duration::hours(*h))
            .collect()
    }

    #[test]
    fn wal_between_kept_base_backups_is_kept_and_older_wal_goes() {
        let policy = RetentionPolicy {
            keep_last: 2,
            ..RetentionPolicy::default()
        };
        // Base backups 30, 20 and 10 hours ago, WAL between and after.
        let times = hours_ago(&[31, 30, 25, 20, 15, 10, 5, 1]);
        let anchors = [false, true, false, true, false, true, false, false];
        let snapshots: Vec<_> = times.iter().copied().zip(anchors).collect();
        let kept: Vec<bool> = policy
            .apply_anchored(&snapshots)
            .iter()
            .map(|d| !d.kept_by.is_empty())
            .collect();
        assert_eq!(kept, [false, false, false, true, true, true, true, true]);
        let no_base: Vec<_> = times.iter().map(|t| (*t, false)).collect();
        assert!(
            policy
                .apply_anchored(&no_base)
                .iter()
                .all(|d| !d.kept_by.is_empty()),
            "WAL without a base backup yet is kept"
        );
    }

    fn kept(policy: &RetentionPolicy, times: &[DateTime<Utc>]) -> Vec<bool> {
        policy
            .apply(times)
            .iter()
            .map(|d| !d.kept_by.is_empty())
            .collect()
    }

    #[test]
    fn last_and_daily_keep_the_newest_of_each_day() {
        // Hourly snapshots over three days, newest first.
        let times = hours_ago(&(0..72).collect::<Vec<_>>());
        let policy = RetentionPolicy {
            keep_last: 2,
            keep_daily: 3,
            ..RetentionPolicy::default()
        };
        let kept = kept(&policy, &times);
        // The two newest, and the newest of each of the three days
        // (12:30 today is the newest of today; 23:30 of the two days before).
        let expected: Vec<usize> = vec![0, 1, 13, 37];
        let got: Vec<usize> = kept
            .iter()
            .enumerate()
            .filter(|(_, k)| **k)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn within_counts_from_the_newest_snapshot() {
        let times = hours_ago(&[100, 101, 130, 200]);
        let policy = RetentionPolicy {
            keep_within: Some(std::time::Duration::from_secs(36 * 3600)),
            ..RetentionPolicy::default()
        };
        assert_eq!(kept(&policy, &times), vec![true, true, true, false]);
        assert!(policy.keeps_something());
        assert!(!RetentionPolicy::default().keeps_something());
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut times = hours_ago(&[0, 5, 30, 60]);
        let policy = RetentionPolicy {
            keep_daily: 2,
            ..RetentionPolicy::default()
        };
        let before = kept(&policy, &times);
        times.reverse();
        let mut after = kept(&policy, &times);
        after.reverse();
        assert_eq!(before, after);
    }
}
