//! An S3 answer's body read as a blocking [`Read`] while it arrives.

use std::io::{self, Read};

use aws_sdk_s3::primitives::ByteStream;
use bytes::{Buf, Bytes};
use tokio::runtime::Handle;
use tokio::time::Instant;

/// Reads a `GetObject` body from a blocking thread, one received piece at a
/// time, failing a read once the whole body is past its deadline (a trickle
/// cannot hold a restore forever; the SDK's stalled-stream protection fails
/// one that stops).
pub(super) struct BodyReader {
    body: ByteStream,
    piece: Bytes,
    deadline: Instant,
    runtime: Handle,
}

impl BodyReader {
    /// Reads `body` until `deadline`. Must be made inside the runtime, and
    /// read outside it.
    pub(super) fn new(body: ByteStream, deadline: Instant) -> Self {
        Self {
            body,
            piece: Bytes::new(),
            deadline,
            runtime: Handle::current(),
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.piece.is_empty() {
            let next = self
                .runtime
                .block_on(tokio::time::timeout_at(self.deadline, self.body.next()));
            match next {
                Ok(Some(Ok(piece))) => self.piece = piece,
                Ok(Some(Err(e))) => return Err(io::Error::other(e)),
                Ok(None) => return Ok(0),
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the body did not arrive in the time its size allows",
                    ));
                }
            }
        }
        let n = buf.len().min(self.piece.len());
        buf[..n].copy_from_slice(&self.piece[..n]);
        self.piece.advance(n);
        Ok(n)
    }
}
