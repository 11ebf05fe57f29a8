//! Streamed bytes in both directions: [`DataReader`], the bytes of a
//! streamed reply (`EtcdSnapshot`, `Read`, `Kubeconfig`) as they arrive,
//! with a per-piece timeout and failures that name the call, the node and
//! how far it got; and the upload stream `EtcdRecover` sends a snapshot in.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::{ReaderStream, StreamReader};
use tonic::Streaming;

use super::super::TalosError;
use super::super::proto::common::Data;
use super::TalosClient;

impl TalosClient {
    /// A reader of the streamed reply `stream` of `rpc`.
    pub(super) fn reader(&self, rpc: &'static str, stream: Streaming<Data>) -> DataReader {
        DataReader {
            inner: StreamReader::new(DataStream {
                inner: stream,
                client: self.clone(),
                rpc,
                received: 0,
                idle: Box::pin(tokio::time::sleep(self.timeout)),
            }),
        }
    }
}

/// The bytes of a streamed reply (`EtcdSnapshot`, `Read`) as they arrive.
/// A failure of the stream is a read error of kind `Other` whose inner
/// error is a [`TalosError`] naming the call, the node and the bytes
/// received.
pub struct DataReader {
    inner: StreamReader<DataStream, Bytes>,
}

impl std::fmt::Debug for DataReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stream = self.inner.get_ref();
        f.debug_struct("DataReader")
            .field("rpc", &stream.rpc)
            .field("target", &stream.client.target())
            .field("received", &stream.received)
            .finish()
    }
}

impl AsyncRead for DataReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The pieces of a streamed reply, failures turned into I/O errors.
struct DataStream {
    inner: Streaming<Data>,
    client: TalosClient,
    rpc: &'static str,
    received: u64,
    /// Fires when the next piece is overdue.
    idle: Pin<Box<tokio::time::Sleep>>,
}

impl Stream for DataStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Pending => match this.idle.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(io::Error::other(TalosError::StreamBroken {
                        rpc: this.rpc,
                        target: this.client.target(),
                        received: this.received,
                        detail: format!(
                            "no data for {} (raise the source's `timeout` if the node is \
                             only slow)",
                            humantime::format_duration(this.client.timeout)
                        ),
                    }))))
                }
            },
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Ok(piece))) => {
                let deadline = tokio::time::Instant::now() + this.client.timeout;
                this.idle.as_mut().reset(deadline);
                if let Err(e) = this
                    .client
                    .check_metadata(this.rpc, piece.metadata.as_ref())
                {
                    return Poll::Ready(Some(Err(io::Error::other(e))));
                }
                this.received += piece.bytes.len() as u64;
                Poll::Ready(Some(Ok(piece.bytes)))
            }
            Poll::Ready(Some(Err(status))) => {
                let cause = this.client.status_error(this.rpc, &status);
                let error = match cause {
                    _ if this.received == 0 => cause,
                    // The call and node are named once, by the break.
                    TalosError::Rpc { code, message, .. } => TalosError::StreamBroken {
                        rpc: this.rpc,
                        target: this.client.target(),
                        received: this.received,
                        detail: format!("{code:?}: {message}"),
                    },
                    other => TalosError::StreamBroken {
                        rpc: this.rpc,
                        target: this.client.target(),
                        received: this.received,
                        detail: other.to_string(),
                    },
                };
                Poll::Ready(Some(Err(io::Error::other(error))))
            }
        }
    }
}

/// A reader as a stream of `common.Data` pieces; a read failure ends the
/// stream early and is kept for the caller.
pub(super) struct UploadStream<R> {
    /// The pieces read.
    pub(super) reader: ReaderStream<R>,
    /// The read failure that ended the stream, if one did.
    pub(super) failure: Arc<Mutex<Option<io::Error>>>,
}

impl<R: AsyncRead + Unpin> Stream for UploadStream<R> {
    type Item = Data;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.reader).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Data {
                metadata: None,
                bytes,
            })),
            Poll::Ready(Some(Err(e))) => {
                if let Ok(mut slot) = self.failure.lock() {
                    *slot = Some(e);
                }
                Poll::Ready(None)
            }
        }
    }
}
