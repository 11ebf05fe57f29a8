//! WAL positions and file names, as PostgreSQL writes them.
//!
//! A log sequence number (LSN) is a 64-bit byte position, written `X/Y`
//! (high and low 32 bits in hex). The WAL is cut into segments of
//! [`SEGMENT_SIZE`] bytes; segment `n` of timeline `t` is the file
//! `TTTTTTTTXXXXXXXXYYYYYYYY` (`t`, then `n / 256` and `n % 256`, each eight
//! upper-case hex digits). `pg_receivewal` keeps the segment it is writing
//! as `<segment>.partial`, and each timeline switch leaves a history file
//! `TTTTTTTT.history`. Every name here comes from a repository or a folder
//! and is parsed, never trusted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The WAL segment size lifeboat archives (PostgreSQL's default; a server
/// built or initialised with another size is refused).
pub const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;

/// Segments per 4 GiB "log id" (the middle part of a segment name).
const SEGMENTS_PER_ID: u64 = 0x1_0000_0000 / SEGMENT_SIZE;

/// The suffix `pg_receivewal` gives the segment it is writing.
pub const PARTIAL_SUFFIX: &str = ".partial";

/// A position in the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The number of the segment holding this position.
    pub fn segment(self) -> u64 {
        self.0 / SEGMENT_SIZE
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a text is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a WAL position (write it as PostgreSQL does, e.g. 0/16B3748)")]
pub struct NotAnLsn(pub String);

impl FromStr for Lsn {
    type Err = NotAnLsn;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = || NotAnLsn(text.chars().take(40).collect());
        let (high, low) = text.trim().split_once('/').ok_or_else(fail)?;
        let part = |s: &str| {
            (!s.is_empty() && s.len() <= 8)
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
                .ok_or_else(fail)
        };
        Ok(Self(u64::from(part(high)?) << 32 | u64::from(part(low)?)))
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One segment of one timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    /// The timeline.
    pub timeline: u32,
    /// The segment number.
    pub number: u64,
}

impl Segment {
    /// The segment's file name.
    pub fn name(&self) -> String {
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / SEGMENTS_PER_ID,
            self.number % SEGMENTS_PER_ID
        )
    }
}

/// A file of a WAL archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFile {
    /// A complete segment.
    Segment(Segment),
    /// A segment still being written: its start, zeros after what arrived.
    Partial(Segment),
    /// A timeline's history file.
    History(u32),
}

impl WalFile {
    /// Reads a file name; `None` for anything that is not a WAL file name.
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(timeline) = name.strip_suffix(".history") {
            return (timeline.len() == 8)
                .then(|| hex_u32(timeline))
                .flatten()
                .map(Self::History);
        }
        let (segment, partial) = match name.strip_suffix(PARTIAL_SUFFIX) {
            Some(segment) => (segment, true),
            None => (name, false),
        };
        if segment.len() != 24 {
            return None;
        }
        let timeline = hex_u32(&segment[..8])?;
        let id = u64::from(hex_u32(&segment[8..16])?);
        let within = u64::from(hex_u32(&segment[16..])?);
        if timeline == 0 || within >= SEGMENTS_PER_ID {
            return None;
        }
        let segment = Segment {
            timeline,
            number: id * SEGMENTS_PER_ID + within,
        };
        Some(if partial {
            Self::Partial(segment)
        } else {
            Self::Segment(segment)
        })
    }

    /// The file's name.
    pub fn name(&self) -> String {
        match self {
            Self::Segment(segment) => segment.name(),
            Self::Partial(segment) => format!("{}{PARTIAL_SUFFIX}", segment.name()),
            Self::History(timeline) => format!("{timeline:08X}.history"),
        }
    }

    /// The segment, for a complete or partial one.
    pub fn segment(&self) -> Option<Segment> {
        match self {
            Self::Segment(segment) | Self::Partial(segment) => Some(*segment),
            Self::History(_) => None,
        }
    }
}

/// Eight upper-case hex digits, as PostgreSQL writes them.
fn hex_u32(text: &str) -> Option<u32> {
    let upper = text
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    (upper && !text.is_empty() && text.len() <= 8)
        .then(|| u32::from_str_radix(text, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_and_print_as_postgresql_writes_them() {
        let lsn: Lsn = "0/16B3748".parse().expect("an LSN");
        assert_eq!(lsn, Lsn(0x16B_3748));
        assert_eq!(lsn.to_string(), "0/16B3748");
        let high: Lsn = "1A/FF000028".parse().expect("an LSN");
        assert_eq!(high.0, 0x1A_FF00_0028);
        assert_eq!(high.to_string(), "1A/FF000028");
        assert_eq!(high.segment(), 0x1A * 256 + 0xFF);
        for bad in ["", "0", "/1", "1/", "g/1", "123456789/0", "0/-1", "0/1/2"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} is not an LSN");
        }
    }

    #[test]
    fn segment_names_round_trip_and_foreign_names_are_refused() {
        let segment = Segment {
            timeline: 2,
            number: 0x1A * 256 + 0x3F,
        };
        assert_eq!(segment.name(), "000000020000001A0000003F");
        assert_eq!(
            WalFile::parse("000000020000001A0000003F"),
            Some(WalFile::Segment(segment))
        );
        assert_eq!(
            WalFile::parse("000000020000001A0000003F.partial"),
            Some(WalFile::Partial(segment))
        );
        assert_eq!(
            WalFile::parse("00000003.history"),
            Some(WalFile::History(3))
        );
        for file in [
            WalFile::Segment(segment),
            WalFile::Partial(segment),
            WalFile::History(3),
        ] {
            assert_eq!(WalFile::parse(&file.name()), Some(file));
        }
        for bad in [
            "",
            "../000000010000000000000001",
            "000000010000000000000001.gz",
            "00000001000000000000001",
            "000000010000000000000100",
            "000000000000000000000001",
            "00000001000000000000000a",
            "+0000001000000000000000A",
            "0000001.history",
            "backup_label",
        ] {
            assert_eq!(WalFile::parse(bad), None, "{bad:?}");
        }
    }
}
