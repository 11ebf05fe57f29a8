//! A TCP proxy in front of a plaintext (h2c) etcd that damages the first
//! long gRPC server stream — the snapshot — in a way neither HTTP/2 nor
//! gRPC can notice (neither has a checksum): it flips one byte inside the
//! data of a snapshot piece, or cuts the connection mid-stream. Only the
//! snapshot's SHA-256 trailer can tell.
//!
//! It reads the server's HTTP/2 frames, follows the gRPC length prefixes
//! of each stream's DATA, and acts inside the third message of a stream
//! (unary answers have one), 100 bytes before its end: inside the `blob`
//! field, which ends every `SnapshotResponse`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does to the snapshot stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Inverts one byte of snapshot data.
    FlipByte,
    /// Closes both connections there.
    Cut,
}

/// The proxy; stops listening on drop.
#[derive(Debug)]
pub struct TamperProxy {
    addr: SocketAddr,
    done: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl TamperProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    ///
    /// Fails when it cannot listen.
    pub async fn start(upstream: SocketAddr, tamper: Tamper) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("tamper proxy: listening")?;
        let addr = listener.local_addr()?;
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        let _ = relay(client, server, tamper, flag).await;
                    }
                });
            }
        });
        Ok(Self { addr, done, task })
    }

    /// The `http://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether it has tampered with a stream yet.
    pub fn tampered(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}

impl Drop for TamperProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a stream's gRPC parser is.
#[derive(Debug, Default)]
struct GrpcStream {
    /// Bytes of the current 5-byte message prefix seen.
    prefix: Vec<u8>,
    /// Bytes left of the current message's body.
    remaining: u64,
    /// Messages begun so far.
    messages: u32,
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    tamper: Tamper,
    done: Arc<AtomicBool>,
) -> Result<()> {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    let mut pending: Vec<u8> = Vec::new();
    let mut streams: HashMap<u32, GrpcStream> = HashMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = server_read.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        // Forward whole frames only, each after looking at it.
        while pending.len() >= 9 {
            let len = usize::from(pending[0]) << 16
                | usize::from(pending[1]) << 8
                | usize::from(pending[2]);
            if pending.len() < 9 + len {
                break;
            }
            let mut frame: Vec<u8> = pending.drain(..9 + len).collect();
            let (kind, flags) = (frame[3], frame[4]);
            let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
            let padded = flags & 0x8 != 0;
            if kind == 0 && !padded && !done.load(Ordering::SeqCst) {
                let state = streams.entry(stream).or_default();
                if let Some(at) = look(state, &frame[9..]) {
                    match tamper {
                        Tamper::FlipByte => frame[9 + at] ^= 0xff,
                        Tamper::Cut => {
                            done.store(true, Ordering::SeqCst);
                            upstream.abort();
                            return Ok(());
                        }
                    }
                    done.store(true, Ordering::SeqCst);
                }
            }
            client_write.write_all(&frame).await?;
        }
    }
    client_write.write_all(&pending).await?;
    let _ = client_write.shutdown().await;
    let _ = upstream.await;
    Ok(())
}

/// Feeds one DATA payload to the stream's parser; returns the offset in
/// `payload` of the byte to damage, if it is in this frame.
fn look(state: &mut GrpcStream, payload: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut target = None;
    while at < payload.len() {
        if state.remaining == 0 {
            state.prefix.push(payload[at]);
            at += 1;
            if state.prefix.len() == 5 {
                let p = &state.prefix;
                state.remaining = u64::from(u32::from_be_bytes([p[1], p[2], p[3], p[4]]));
                state.prefix.clear();
                state.messages += 1;
            }
            continue;
        }
        let take = (state.remaining as usize).min(payload.len() - at);
        if state.messages == 3 && state.remaining > 100 && state.remaining - (take as u64) <= 100 {
            // The byte 100 before the end of the third message's body.
            target = Some(at + (state.remaining - 101) as usize);
        }
        state.remaining -= take as u64;
        at += take;
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_100_bytes_before_the_end_of_the_third_message() {
        let mut wire = Vec::new();
        for body_len in [10u32, 500, 1000, 50] {
            wire.push(0);
            wire.extend_from_slice(&body_len.to_be_bytes());
            wire.extend(std::iter::repeat_n(0xaa, body_len as usize));
        }
        let third_end = (5 + 10) + (5 + 500) + (5 + 1000);
        for piece in [1, 7, 300, wire.len()] {
            let mut state = GrpcStream::default();
            let mut found = None;
            for (i, chunk) in wire.chunks(piece).enumerate() {
                if let Some(at) = look(&mut state, chunk) {
                    assert!(found.is_none(), "one target only");
                    found = Some(i * piece + at);
                }
            }
            assert_eq!(found, Some(third_end - 101), "piece size {piece}");
        }
    }
}
