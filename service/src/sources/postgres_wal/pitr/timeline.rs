//! The timeline history a recovery follows: which timeline's file holds
//! each segment, from the newest timeline's history file.

use std::collections::BTreeMap;

use super::PitrError;
use crate::repo::reader::BlobReader;
use crate::repo::tree::Node;
use crate::sources::postgres_wal::names::{Lsn, SEGMENT_SIZE, Segment, WalFile};

/// Which timeline the recovery follows where: the newest timeline's
/// history file lists each ancestor and where the next one branched off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    /// The timeline recovery ends on.
    pub newest: u32,
    /// Its ancestors, oldest first, each with the position where it ended.
    pub ancestors: Vec<(u32, Lsn)>,
}

impl TimelineHistory {
    /// Reads the history file of `newest` (none needed when it is the base
    /// backup's own timeline).
    ///
    /// Fails when it is missing, unreadable, or not a history file.
    pub(super) async fn read(
        reader: &BlobReader,
        histories: &BTreeMap<u32, Node>,
        newest: u32,
        base_timeline: u32,
    ) -> Result<Self, PitrError> {
        let history = || WalFile::History(newest).name();
        if newest <= base_timeline {
            return Ok(Self {
                newest,
                ancestors: Vec::new(),
            });
        }
        let node = histories
            .get(&newest)
            .ok_or_else(|| PitrError::BadHistory {
                file: history(),
                problem: "it is not in the archive".into(),
            })?;
        let text = crate::restore::contents::read_small(reader, node).await?;
        Self::parse(newest, &String::from_utf8_lossy(&text)).map_err(|problem| {
            PitrError::BadHistory {
                file: history(),
                problem,
            }
        })
    }

    /// Parses a history file's lines (`parent<TAB>switch LSN<TAB>reason`).
    pub fn parse(newest: u32, text: &str) -> Result<Self, String> {
        let mut ancestors = Vec::new();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let mut fields = line.split_whitespace();
            let parsed = match (fields.next(), fields.next()) {
                (Some(timeline), Some(lsn)) => {
                    timeline.parse::<u32>().ok().zip(lsn.parse::<Lsn>().ok())
                }
                _ => None,
            };
            let Some((timeline, switch)) = parsed else {
                return Err(format!(
                    "the line {:?} is not `timeline<TAB>LSN`",
                    line.chars().take(80).collect::<String>()
                ));
            };
            let ordered = ancestors
                .last()
                .is_none_or(|&(t, l): &(u32, Lsn)| timeline > t && switch >= l);
            if !ordered || timeline >= newest {
                return Err(format!("the line {line:?} does not continue the history"));
            }
            ancestors.push((timeline, switch));
        }
        Ok(Self { newest, ancestors })
    }

    /// Where the timeline after `ancestor` begins: its file of the segment
    /// holding the switch, which starts with `ancestor`'s WAL up to it.
    /// None when `ancestor` is not one of this history's.
    pub fn branch_segment(&self, ancestor: u32) -> Option<Segment> {
        let at = self.ancestors.iter().position(|&(t, _)| t == ancestor)?;
        let next = self.ancestors.get(at + 1).map_or(self.newest, |&(t, _)| t);
        Some(Segment {
            timeline: next,
            number: self.ancestors[at].1.segment(),
        })
    }

    /// The timeline whose file of segment `number` recovery reads: the one
    /// that was current at the segment's last byte.
    pub fn timeline_of(&self, number: u64) -> u32 {
        let last_byte = Lsn((number + 1) * SEGMENT_SIZE - 1);
        self.ancestors
            .iter()
            .find(|(_, switch)| last_byte < *switch)
            .map_or(self.newest, |(timeline, _)| *timeline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_says_which_timeline_holds_each_segment() {
        let text =
            "1\t0/F000100\tno recovery target specified\n\n2\t0/13000000\tat restore point\n";
        let history = TimelineHistory::parse(3, text).expect("a history");
        assert_eq!(
            history.ancestors,
            [(1, Lsn(0xF00_0100)), (2, Lsn(0x1300_0000))]
        );
        assert_eq!(history.timeline_of(0xE), 1);
        assert_eq!(
            history.timeline_of(0xF),
            2,
            "the switch segment is the new timeline's"
        );
        assert_eq!(history.timeline_of(0x12), 2);
        assert_eq!(history.timeline_of(0x13), 3);
        let segment = |timeline, number| Some(Segment { timeline, number });
        assert_eq!(history.branch_segment(1), segment(2, 0xF));
        assert_eq!(history.branch_segment(2), segment(3, 0x13));
        assert_eq!(history.branch_segment(3), None, "the newest has no end");
        for bad in ["x\t0/1", "2\t0/1\n1\t0/2", "3\t0/1", "1"] {
            assert!(TimelineHistory::parse(3, bad).is_err(), "{bad:?}");
        }
    }
}
