//! Splitting byte streams into chunks.
//!
//! Two chunkers, chosen per source: FastCDC (v2020) for files and dumps,
//! where content shifts; fixed-size chunks for page-structured files such as
//! etcd's bbolt database, where pages are rewritten in place and a freed
//! page is reused anywhere in the file (DESIGN.md, measured figures).

use std::io::{self, Read};

use serde::{Deserialize, Serialize};

/// How a stream is cut into chunks; fixed per repository at init.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Chunking {
    /// FastCDC v2020 with these minimum, average and maximum sizes.
    FastCdc {
        /// Smallest chunk, except a stream's last.
        min: u32,
        /// Target average.
        avg: u32,
        /// Largest chunk.
        max: u32,
    },
    /// Chunks of exactly `size` bytes (the last may be shorter).
    Fixed {
        /// The chunk size.
        size: u32,
    },
}

impl Chunking {
    /// The default for files: 512 KiB / 1 MiB / 8 MiB.
    pub const FILES: Self = Self::FastCdc {
        min: 512 * 1024,
        avg: 1024 * 1024,
        max: 8 * 1024 * 1024,
    };

    /// The default for page files (etcd): 16 KiB, four bbolt pages.
    pub const PAGES: Self = Self::Fixed { size: 16 * 1024 };

    /// Whether the parameters are usable.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Self::FastCdc { min, avg, max } => {
                let bounds = (64..=1 << 20).contains(&min)
                    && (256..=4 << 20).contains(&avg)
                    && (1024..=16 << 20).contains(&max);
                if bounds && min <= avg && avg <= max {
                    Ok(())
                } else {
                    Err(format!(
                        "FastCDC sizes min {min} / avg {avg} / max {max} must satisfy \
                         64 ≤ min ≤ 1 MiB, 256 ≤ avg ≤ 4 MiB, 1 KiB ≤ max ≤ 16 MiB and min ≤ avg ≤ max"
                    ))
                }
            }
            Self::Fixed { size } if (512..=16 << 20).contains(&size) => Ok(()),
            Self::Fixed { size } => Err(format!("fixed chunk size {size} must be 512 B … 16 MiB")),
        }
    }

    /// Calls `each` with every chunk of `input`, in order, and returns the
    /// number of bytes read.
    ///
    /// Fails with the first error of `input` or of `each`.
    pub fn split<R, E>(
        &self,
        input: R,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<u64, E>
    where
        R: Read,
        E: From<io::Error>,
    {
        let mut total = 0u64;
        match *self {
            Self::FastCdc { min, avg, max } => {
                // The window is this thread's, taken out while in use (a
                // nested split makes its own), so a backup does not allocate
                // and free one per file.
                let mut window = WINDOW.take();
                let cut = split_window(&mut window, input, (min, avg, max), &mut each);
                WINDOW.set(window);
                total = cut?;
            }
            Self::Fixed { size } => {
                let mut input = input;
                let mut buf = vec![0; size as usize];
                loop {
                    let n = read_full(&mut input, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    each(&buf[..n])?;
                    if n < buf.len() {
                        break;
                    }
                }
            }
        }
        Ok(total)
    }
}

impl Chunking {
    /// Calls `each` with every chunk of `data`, in order: the same cuts as
    /// [`Chunking::split`] gives for the same bytes, without a stream buffer.
    ///
    /// Fails with the first error of `each`.
    pub fn split_bytes<E>(
        &self,
        data: &[u8],
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        match *self {
            Self::FastCdc { min, avg, max } => {
                for chunk in
                    fastcdc::v2020::FastCDC::new(data, min as usize, avg as usize, max as usize)
                {
                    each(&data[chunk.offset..chunk.offset + chunk.length])?;
                }
            }
            Self::Fixed { size } => {
                for chunk in data.chunks(size as usize) {
                    each(chunk)?;
                }
            }
        }
        Ok(())
    }

    /// The largest chunk this chunking cuts.
    pub fn max_chunk(&self) -> usize {
        match *self {
            Self::FastCdc { max, .. } => max as usize,
            Self::Fixed { size } => size as usize,
        }
    }
}

thread_local! {
    /// The window a thread's FastCDC streams are cut in, kept across streams.
    static WINDOW: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Cuts `input` with FastCDC in `window`, holding at most `max` bytes of it:
/// while the input lasts, the window is filled, its first chunk cut off and
/// handed to `each`, the rest moved to its front and filled again; once the
/// input has ended, what the window holds is cut in place (a file smaller
/// than the window is never moved). The cuts are those of
/// [`Chunking::split_bytes`] on the same bytes. Returns the bytes read.
fn split_window<R: Read, E: From<io::Error>>(
    window: &mut Vec<u8>,
    mut input: R,
    (min, avg, max): (u32, u32, u32),
    each: &mut impl FnMut(&[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let (min, avg, max) = (min as usize, avg as usize, max as usize);
    window.resize(max, 0);
    let (mut held, mut total) = (0, 0u64);
    loop {
        let read = read_full(&mut input, &mut window[held..max])?;
        let ended = held + read < max;
        held += read;
        if ended {
            for chunk in fastcdc::v2020::FastCDC::new(&window[..held], min, avg, max) {
                each(&window[chunk.offset..chunk.offset + chunk.length])?;
            }
            return Ok(total + held as u64);
        }
        let (_, end) = fastcdc::v2020::FastCDC::new(&window[..held], min, avg, max).cut(0, held);
        each(&window[..end])?;
        total += end as u64;
        window.copy_within(end..held, 0);
        held -= end;
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut(chunking: Chunking, data: &[u8]) -> Vec<Vec<u8>> {
        cut_stream(chunking, data, data.len())
    }

    /// The chunks [`Chunking::split`] cuts `input`, of `length` bytes, into.
    fn cut_stream(chunking: Chunking, input: impl Read, length: usize) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        let total = chunking
            .split(input, |c| {
                chunks.push(c.to_vec());
                Ok::<_, io::Error>(())
            })
            .unwrap_or_default();
        assert_eq!(total, length as u64);
        chunks
    }

    /// The chunks [`Chunking::split_bytes`] cuts `data` into.
    fn cut_in_memory(chunking: Chunking, data: &[u8]) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        chunking
            .split_bytes(data, |c| {
                chunks.push(c.to_vec());
                Ok::<_, io::Error>(())
            })
            .unwrap_or_default();
        chunks
    }

    /// Gives at most 1,000 bytes per read.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn chunks_cover_the_input_and_resync_after_an_insert() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let small = Chunking::FastCdc {
            min: 4096,
            avg: 16384,
            max: 65536,
        };
        let chunks = cut(small, &data);
        assert_eq!(chunks.concat(), data);
        let mut shifted = b"inserted".to_vec();
        shifted.extend_from_slice(&data);
        let again = cut(small, &shifted);
        let shared = again.iter().filter(|c| chunks.contains(c)).count();
        assert!(
            shared + 3 >= chunks.len(),
            "{shared} of {} chunks shared",
            chunks.len()
        );

        assert_eq!(cut_in_memory(small, &data), chunks);

        // Short reads, and a second stream in the same thread's window, cut
        // the same way.
        let trickled = cut_stream(small, Trickle(&data[..]), data.len());
        assert_eq!(trickled, chunks);

        // Inputs shorter than the window, as long as it, and one byte
        // longer: cut in place, at the same points.
        for length in [0, 5_000, 50_000, 65_536, 65_537] {
            let part = &data[..length];
            assert_eq!(
                cut(small, part),
                cut_in_memory(small, part),
                "{length} bytes"
            );
        }

        let fixed = cut(Chunking::Fixed { size: 4096 }, &data);
        assert!(fixed.iter().rev().skip(1).all(|c| c.len() == 4096));
        assert_eq!(fixed.concat(), data);
        assert!(Chunking::Fixed { size: 3 }.validate().is_err());
        assert!(Chunking::FILES.validate().is_ok());
    }
}
