//! A fault-injecting HTTP/1.1 proxy on loopback: it answers the first
//! requests with the faults it was given (503, `SlowDown`, 429, a dropped
//! connection) and forwards everything after them, byte for byte, to a real
//! server. It proves that the S3 client retries, and that it gives up.
//!
//! Each fault ends its connection. Once a connection is forwarded, the rest
//! of it is piped through unchanged: the faults come first, so none is left
//! by then. The `Host` header is forwarded as the client sent it, so a
//! server that checks signatures (Garage) still accepts them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;

/// One injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `503 Service Unavailable`, S3 error code `ServiceUnavailable`.
    ServiceUnavailable,
    /// `503` with S3's throttling code `SlowDown`.
    SlowDown,
    /// `429 Too Many Requests` with no body (R2's and proxies' throttling).
    TooManyRequests,
    /// The connection closed after the request, with no answer.
    Disconnect,
}

impl Fault {
    fn response(self) -> Option<String> {
        let (status, code) = match self {
            Self::ServiceUnavailable => ("503 Service Unavailable", Some("ServiceUnavailable")),
            Self::SlowDown => ("503 Slow Down", Some("SlowDown")),
            Self::TooManyRequests => ("429 Too Many Requests", None),
            Self::Disconnect => return None,
        };
        let body = code.map_or_else(String::new, |code| {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                 <Message>injected by the lifeboat test proxy</Message></Error>"
            )
        });
        Some(format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        ))
    }
}

#[derive(Debug, Default)]
struct Counters {
    faults: Mutex<std::collections::VecDeque<Fault>>,
    served: AtomicUsize,
    forwarded: AtomicUsize,
}

/// The proxy; it stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port; answers the first `faults.len()`
    /// requests with `faults`, in order, and forwards the rest to `upstream`.
    pub async fn start(
        upstream: SocketAddr,
        faults: impl IntoIterator<Item = Fault>,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fault proxy")?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters {
            faults: Mutex::new(faults.into_iter().collect()),
            ..Counters::default()
        });
        let shared = Arc::clone(&counters);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counters = Arc::clone(&shared);
                tokio::spawn(async move {
                    // A connection's failure concerns only that connection.
                    let _ = serve(client, upstream, &counters).await;
                });
            }
        });
        Ok(Self {
            addr,
            counters,
            task,
        })
    }

    /// The proxy's URL, to use as an S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many faults were served so far.
    pub fn faults_served(&self) -> usize {
        self.counters.served.load(Ordering::SeqCst)
    }

    /// How many connections were forwarded to the server so far.
    pub fn connections_forwarded(&self) -> usize {
        self.counters.forwarded.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Handles one client connection: faults while there are any, then a pipe.
async fn serve(mut client: TcpStream, upstream: SocketAddr, counters: &Counters) -> Result<()> {
    let mut buffered = Vec::new();
    let head_len = loop {
        if let Some(end) = find(&buffered, b"\r\n\r\n") {
            break end + 4;
        }
        if buffered.len() > MAX_HEAD {
            anyhow::bail!("request head too long");
        }
        let mut chunk = [0; 8192];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buffered.extend_from_slice(&chunk[..n]);
    };
    let fault = counters
        .faults
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .pop_front();
    let Some(fault) = fault else {
        counters.forwarded.fetch_add(1, Ordering::SeqCst);
        let mut server = TcpStream::connect(upstream).await?;
        server.write_all(&buffered).await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        return Ok(());
    };
    counters.served.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&buffered[..head_len]).to_ascii_lowercase();
    let expects_continue = head.contains("\r\nexpect: 100-continue");
    if !expects_continue {
        // Take in the body first, so that closing does not reset the
        // connection under a client still sending.
        let length = header(&head, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut remaining = (head_len + length).saturating_sub(buffered.len());
        let mut chunk = vec![0; 64 * 1024];
        while remaining > 0 {
            let read =
                tokio::time::timeout(Duration::from_secs(10), client.read(&mut chunk)).await??;
            if read == 0 {
                break;
            }
            remaining = remaining.saturating_sub(read);
        }
    }
    if let Some(response) = fault.response() {
        client.write_all(response.as_bytes()).await?;
    }
    client.shutdown().await?;
    Ok(())
}

/// The value of header `name` (lower case) in a lower-cased request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
