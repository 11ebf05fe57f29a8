//! A fault-injecting HTTP/1.1 proxy on loopback, in front of a real S3
//! server. It proves that lifeboat rides out a lossy store — retries,
//! idempotent writes, size-scaled timeouts — and that it gives up, naming
//! what it gave up on, when the store cannot be reached.
//!
//! Two modes pick each request's [`Fault`]:
//!
//! - scripted ([`FaultProxy::start`]): the first requests get the faults
//!   given, in order, and every later one is forwarded cleanly;
//! - random ([`FaultProxy::random`]): each request draws its fault from a
//!   seeded generator ([`StdRng::seed_from_u64`]) with a rate per fault.
//!   The sequence of draws is the seed's; which request meets which draw
//!   depends on the order the client's requests arrive in;
//! - first writes ([`FaultProxy::first_puts`]): the first `PUT` of each
//!   path gets the fault, every other request none — with
//!   [`Fault::LostAnswer`], every object lands with its answer lost once.
//!
//! Every client connection carries one request. The proxy reads it whole
//! (a `Content-Length` or chunked body; it answers `Expect: 100-continue`
//! itself), sends it upstream on a new connection with `Connection: close`,
//! reads the answer to its end and relays it, also with `Connection:
//! close`, so that no client reuses a connection the proxy is done with.
//! The `Host` header and the body go upstream byte for byte, so a server
//! that checks signatures (Garage) still accepts them. Resets are real: the
//! socket is closed with a zero linger, which sends a TCP RST.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Largest request or response head the proxy reads.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body the proxy takes in.
const MAX_BODY: usize = 256 * 1024 * 1024;
/// Limit on waiting for a client's next bytes.
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit on the upstream server's whole answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// How many pieces a [`Fault::SlowBody`] answer is cut into.
const SLOW_PIECES: usize = 8;
/// The pause before each piece of a [`Fault::SlowBody`] answer.
const SLOW_PAUSE: Duration = Duration::from_millis(150);

/// One injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// `503 Service Unavailable`, S3 error code `ServiceUnavailable`; not forwarded.
    ServiceUnavailable,
    /// `503` with S3's throttling code `SlowDown`; not forwarded.
    SlowDown,
    /// `429 Too Many Requests` with no body (R2's and proxies' throttling); not forwarded.
    TooManyRequests,
    /// The request is read whole, then the connection closes with no
    /// answer; not forwarded.
    Disconnect,
    /// The connection is reset once the request's head is read, before its
    /// body is taken in or anything is forwarded.
    ResetBeforeForward,
    /// The lost answer: the request is forwarded and the server answers
    /// (a write lands), then the client's connection is reset instead of
    /// getting the answer.
    LostAnswer,
    /// The request is forwarded; the client gets the answer's head and half
    /// its body (half the head when it has none), then a reset.
    ResetInBody,
    /// The request is forwarded; the answer reaches the client whole but
    /// trickled, in pieces with pauses between them.
    SlowBody,
}

impl Fault {
    /// Every fault, for a mix.
    pub const ALL: [Self; 8] = [
        Self::ServiceUnavailable,
        Self::SlowDown,
        Self::TooManyRequests,
        Self::Disconnect,
        Self::ResetBeforeForward,
        Self::LostAnswer,
        Self::ResetInBody,
        Self::SlowBody,
    ];

    /// The answer of a fault served without forwarding, if it has one.
    fn local_response(self) -> Option<String> {
        let (status, code) = match self {
            Self::ServiceUnavailable => ("503 Service Unavailable", Some("ServiceUnavailable")),
            Self::SlowDown => ("503 Slow Down", Some("SlowDown")),
            Self::TooManyRequests => ("429 Too Many Requests", None),
            _ => return None,
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

    /// Whether the request goes upstream before the fault strikes.
    fn forwards(self) -> bool {
        matches!(self, Self::LostAnswer | Self::ResetInBody | Self::SlowBody)
    }
}

/// How the proxy picks each request's fault.
#[derive(Debug)]
enum Plan {
    /// The first requests get these, in order; the rest none.
    Scripted(VecDeque<Fault>),
    /// Each request draws: fault `i` with probability `rates[i].1`.
    Random {
        rng: Box<StdRng>,
        rates: Vec<(Fault, f64)>,
    },
    /// The first `PUT` of each path gets the fault; the rest none.
    FirstPuts { fault: Fault, seen: HashSet<String> },
}

impl Plan {
    fn next(&mut self, request: &RequestHead) -> Option<Fault> {
        match self {
            Self::Scripted(faults) => faults.pop_front(),
            Self::FirstPuts { fault, seen } => {
                (request.method == "PUT" && seen.insert(request.target.clone())).then_some(*fault)
            }
            Self::Random { rng, rates } => {
                let mut draw: f64 = rng.r#gen();
                for &(fault, rate) in rates.iter() {
                    if draw < rate {
                        return Some(fault);
                    }
                    draw -= rate;
                }
                None
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    plan: Mutex<Plan>,
    served: Mutex<HashMap<Fault, usize>>,
    forwarded: AtomicUsize,
}

impl Shared {
    fn next_fault(&self, request: &RequestHead) -> Result<Option<Fault>> {
        let fault = self
            .plan
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .next(request);
        if let Some(fault) = fault {
            *self
                .served
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .entry(fault)
                .or_default() += 1;
        }
        Ok(fault)
    }
}

/// The proxy; it stops on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port; answers the first `faults.len()`
    /// requests with `faults`, in order, and forwards the rest to `upstream`.
    ///
    /// Fails when no port can be bound.
    pub async fn start(
        upstream: SocketAddr,
        faults: impl IntoIterator<Item = Fault>,
    ) -> Result<Self> {
        Self::listen(upstream, Plan::Scripted(faults.into_iter().collect())).await
    }

    /// Listens on a free loopback port and gives each request forwarded to
    /// `upstream` a fault drawn from `rates` (fault, probability per
    /// request) with a generator seeded by `seed`.
    ///
    /// Fails when a rate is outside 0..=1, the rates add up to more than 1,
    /// or no port can be bound.
    pub async fn random(upstream: SocketAddr, seed: u64, rates: &[(Fault, f64)]) -> Result<Self> {
        if rates.iter().any(|(_, rate)| !(0.0..=1.0).contains(rate))
            || rates.iter().map(|(_, rate)| rate).sum::<f64>() > 1.0 + 1e-9
        {
            bail!("fault rates must lie in 0..=1 and add up to at most 1: {rates:?}");
        }
        let plan = Plan::Random {
            rng: Box::new(StdRng::seed_from_u64(seed)),
            rates: rates.to_vec(),
        };
        Self::listen(upstream, plan).await
    }

    /// Listens on a free loopback port; gives the first `PUT` of each path
    /// `fault`, and forwards every other request to `upstream` cleanly.
    ///
    /// Fails when no port can be bound.
    pub async fn first_puts(upstream: SocketAddr, fault: Fault) -> Result<Self> {
        let plan = Plan::FirstPuts {
            fault,
            seen: HashSet::new(),
        };
        Self::listen(upstream, plan).await
    }

    async fn listen(upstream: SocketAddr, plan: Plan) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the fault proxy")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            plan: Mutex::new(plan),
            served: Mutex::default(),
            forwarded: AtomicUsize::new(0),
        });
        let accepting = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = Arc::clone(&accepting);
                tokio::spawn(async move {
                    // A connection's failure concerns only that connection.
                    let _ = serve(client, upstream, &shared).await;
                });
            }
        });
        Ok(Self { addr, shared, task })
    }

    /// The proxy's URL, to use as an S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many faults were served so far.
    pub fn faults_served(&self) -> usize {
        self.served().values().sum()
    }

    /// How many times `fault` was served so far.
    pub fn served_of(&self, fault: Fault) -> usize {
        self.served().get(&fault).copied().unwrap_or(0)
    }

    /// How many requests were forwarded to the server so far (the faults
    /// that strike after forwarding included).
    pub fn connections_forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    fn served(&self) -> HashMap<Fault, usize> {
        self.shared
            .served
            .lock()
            .map(|served| served.clone())
            .unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request head, as far as forwarding needs it.
#[derive(Debug)]
struct RequestHead {
    /// The method, e.g. `PUT`.
    method: String,
    /// The request target: path and query.
    target: String,
    /// The head, `Connection`/`Expect` headers replaced by `Connection: close`.
    forwarded: Vec<u8>,
    /// The body's framing.
    body: BodyFraming,
    /// Whether the client waits for `100 Continue` before its body.
    expects_continue: bool,
}

/// How a request's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    /// After this many bytes.
    Length(usize),
    /// At the chunked encoding's last chunk and trailers.
    Chunked,
}

impl RequestHead {
    fn parse(head: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(head).context("request head is not UTF-8")?;
        let mut lines = text.trim_end_matches("\r\n").split("\r\n");
        let request_line = lines.next().context("empty request head")?;
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts
            .next()
            .context("request line without a target")?
            .to_owned();
        let mut forwarded = format!("{request_line}\r\n");
        let mut body = BodyFraming::Length(0);
        let mut expects_continue = false;
        for line in lines {
            let (name, value) = line.split_once(':').context("malformed header line")?;
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => {
                    let length: usize = value.parse().context("bad Content-Length")?;
                    if length > MAX_BODY {
                        bail!("request body of {length} bytes is too large");
                    }
                    body = BodyFraming::Length(length);
                }
                "transfer-encoding" if value.to_ascii_lowercase().contains("chunked") => {
                    body = BodyFraming::Chunked;
                }
                "expect" => {
                    expects_continue = value.eq_ignore_ascii_case("100-continue");
                    continue;
                }
                "connection" | "keep-alive" | "proxy-connection" => continue,
                _ => {}
            }
            forwarded.push_str(line);
            forwarded.push_str("\r\n");
        }
        forwarded.push_str("Connection: close\r\n\r\n");
        Ok(Self {
            method,
            target,
            forwarded: forwarded.into_bytes(),
            body,
            expects_continue,
        })
    }
}

/// Handles one client connection: one request, its fault, its answer.
async fn serve(mut client: TcpStream, upstream: SocketAddr, shared: &Shared) -> Result<()> {
    let Some((head, mut body)) = read_head(&mut client).await? else {
        return Ok(());
    };
    let request = RequestHead::parse(&head)?;
    let fault = shared.next_fault(&request)?;
    if fault == Some(Fault::ResetBeforeForward) {
        return reset(client);
    }
    if request.expects_continue {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    read_body(&mut client, request.body, &mut body).await?;
    if let Some(fault) = fault.filter(|f| !f.forwards()) {
        if let Some(response) = fault.local_response() {
            client.write_all(response.as_bytes()).await?;
        }
        client.shutdown().await?;
        return Ok(());
    }

    shared.forwarded.fetch_add(1, Ordering::SeqCst);
    let response = tokio::time::timeout(UPSTREAM_TIMEOUT, async {
        let mut server = TcpStream::connect(upstream).await?;
        server.write_all(&request.forwarded).await?;
        server.write_all(&body).await?;
        let mut response = Vec::new();
        server.read_to_end(&mut response).await?;
        anyhow::Ok(response)
    })
    .await
    .context("the server did not answer in time")??;
    let response = closing(&response)?;
    let head_len = find(&response, b"\r\n\r\n").map_or(response.len(), |end| end + 4);
    match fault {
        Some(Fault::LostAnswer) => return reset(client),
        Some(Fault::ResetInBody) => {
            let cut = if response.len() > head_len {
                head_len + (response.len() - head_len) / 2
            } else {
                head_len / 2
            };
            client.write_all(&response[..cut]).await?;
            client.flush().await?;
            return reset(client);
        }
        Some(Fault::SlowBody) => {
            let piece = response.len().div_ceil(SLOW_PIECES).max(1);
            for part in response.chunks(piece) {
                tokio::time::sleep(SLOW_PAUSE).await;
                client.write_all(part).await?;
                client.flush().await?;
            }
        }
        _ => client.write_all(&response).await?,
    }
    client.shutdown().await?;
    Ok(())
}

/// Reads a request head; returns it and the bytes read past it, or `None`
/// when the client closed without sending one.
async fn read_head(client: &mut TcpStream) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buffered = Vec::new();
    loop {
        if let Some(end) = find(&buffered, b"\r\n\r\n") {
            let rest = buffered.split_off(end + 4);
            return Ok(Some((buffered, rest)));
        }
        if buffered.len() > MAX_HEAD {
            bail!("request head too long");
        }
        if read_some(client, &mut buffered).await? == 0 {
            return Ok(None);
        }
    }
}

/// Reads the rest of a request body framed by `framing` into `body`, which
/// holds its first bytes.
async fn read_body(client: &mut TcpStream, framing: BodyFraming, body: &mut Vec<u8>) -> Result<()> {
    loop {
        let complete = match framing {
            BodyFraming::Length(length) => {
                if body.len() > length {
                    bail!("the client sent more than its Content-Length (pipelining)");
                }
                body.len() == length
            }
            BodyFraming::Chunked => chunked_end(body)?.is_some_and(|end| end == body.len()),
        };
        if complete {
            return Ok(());
        }
        if body.len() > MAX_BODY {
            bail!("request body too large");
        }
        if read_some(client, body).await? == 0 {
            bail!("the client closed its connection inside the request body");
        }
    }
}

/// Where a chunked body in `data` ends, once it is complete.
///
/// Fails on a malformed chunk size line.
fn chunked_end(data: &[u8]) -> Result<Option<usize>> {
    let mut at = 0;
    loop {
        let Some(line_len) = find(&data[at..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[at..at + line_len]).context("chunk size line")?;
        let digits = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(digits, 16).context("chunk size")?;
        at += line_len + 2;
        if size == 0 {
            // Trailers, each ended by CRLF, then an empty line.
            loop {
                let Some(len) = find(&data[at..], b"\r\n") else {
                    return Ok(None);
                };
                at += len + 2;
                if len == 0 {
                    return Ok(Some(at));
                }
            }
        }
        at = at.checked_add(size + 2).context("chunk size overflows")?;
        if at > data.len() {
            return Ok(None);
        }
    }
}

/// `response` with its `Connection` headers replaced by `Connection: close`.
fn closing(response: &[u8]) -> Result<Vec<u8>> {
    let end = find(response, b"\r\n\r\n").context("the server's answer has no complete head")?;
    let head = std::str::from_utf8(&response[..end]).context("answer head is not UTF-8")?;
    let mut out = String::new();
    for (i, line) in head.split("\r\n").enumerate() {
        let name = line.split(':').next().unwrap_or_default().trim();
        if i > 0
            && (name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive"))
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&response[end + 4..]);
    Ok(bytes)
}

/// Reads what the client sends next onto `into`; returns how much.
async fn read_some(client: &mut TcpStream, into: &mut Vec<u8>) -> Result<usize> {
    let mut chunk = vec![0; 64 * 1024];
    let n = tokio::time::timeout(CLIENT_READ_TIMEOUT, client.read(&mut chunk))
        .await
        .context("the client went quiet")??;
    into.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Closes `stream` with a TCP RST rather than an orderly FIN.
fn reset(stream: TcpStream) -> Result<()> {
    socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
    drop(stream);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_do() -> Result<()> {
        let body = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n";
        assert_eq!(chunked_end(body)?, Some(body.len()));
        assert_eq!(chunked_end(&body[..body.len() - 1])?, None);
        assert_eq!(chunked_end(b"0\r\n\r\n")?, Some(5));
        assert_eq!(chunked_end(b"5\r\nhel")?, None);
        assert!(chunked_end(b"zz\r\n").is_err());
        Ok(())
    }

    #[test]
    fn heads_are_rewritten_to_close_their_connection() -> Result<()> {
        let head = b"PUT /b/k HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\
                     Expect: 100-continue\r\nContent-Length: 3\r\n\r\n";
        let request = RequestHead::parse(head)?;
        assert_eq!(
            (request.method.as_str(), request.target.as_str()),
            ("PUT", "/b/k")
        );
        assert_eq!(request.body, BodyFraming::Length(3));
        assert!(request.expects_continue);
        assert_eq!(
            String::from_utf8_lossy(&request.forwarded),
            "PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        let answer = closing(b"HTTP/1.1 200 OK\r\nkeep-alive: 5\r\nContent-Length: 2\r\n\r\nok")?;
        assert_eq!(
            String::from_utf8_lossy(&answer),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        );
        Ok(())
    }

    #[test]
    fn a_seed_gives_one_sequence_of_faults() -> Result<()> {
        let get = RequestHead::parse(b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let rates = vec![(Fault::LostAnswer, 0.3), (Fault::ServiceUnavailable, 0.2)];
        let draws = |seed| {
            let mut plan = Plan::Random {
                rng: Box::new(StdRng::seed_from_u64(seed)),
                rates: rates.clone(),
            };
            (0..200).map(|_| plan.next(&get)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
        let lost = draws(7)
            .iter()
            .filter(|f| **f == Some(Fault::LostAnswer))
            .count();
        assert!((30..90).contains(&lost), "{lost} lost answers of 200");

        let mut first = Plan::FirstPuts {
            fault: Fault::LostAnswer,
            seen: HashSet::new(),
        };
        let put =
            |key: &str| RequestHead::parse(format!("PUT /b/{key} HTTP/1.1\r\n\r\n").as_bytes());
        assert_eq!(first.next(&put("a")?), Some(Fault::LostAnswer));
        assert_eq!(first.next(&put("a")?), None);
        assert_eq!(first.next(&get), None);
        assert_eq!(first.next(&put("b")?), Some(Fault::LostAnswer));
        Ok(())
    }
}
