//! Zero-copy downloads: a file's bytes go from the page cache to the socket with `sendfile`,
//! never through this process's memory.
//!
//! hyper writes a response body from the buffers the body yields, handing them to the
//! connection's `writev` as they are (a body with a `Content-Length` is not re-framed). A
//! zero-copy body yields *marks* instead of bytes: slices of one static region no other buffer
//! points into, each one frame long. For each mark it queues the file span the frame stands
//! for on its connection; the connection, handed a mark to write, sends that span with
//! `sendfile` instead. hyper writes a connection's frames in the order it polled them, so the
//! queue and the marks stay in step. A mark with no span behind it fails the connection: a
//! client never receives a mark's own bytes.
//!
//! Only for HTTP/1 connections of [`crate::http::serve`] on Linux; everywhere else (and for
//! object storage) downloads stream through user space as before.

use std::{
    collections::VecDeque,
    io,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncWrite, Interest},
    net::TcpStream,
};

use crate::storage::FileSpan;

/// The longest frame a zero-copy body yields (and so the most one `sendfile` call sends): like
/// nginx's `sendfile_max_chunk`, it bounds how long one call can hold a worker thread when the
/// file is not in the page cache.
const FRAME_BYTES: usize = 512 * 1024;

/// The region marks are cut from: allocated once, zeroed and never written or read (its pages
/// are never touched, so it costs no memory).
fn region() -> &'static [u8] {
    static REGION: OnceLock<&'static [u8]> = OnceLock::new();
    REGION.get_or_init(|| Box::leak(vec![0u8; FRAME_BYTES].into_boxed_slice()))
}

/// Whether `buf` is (part of) a mark.
fn is_mark(buf: &[u8]) -> bool {
    let region = region().as_ptr_range();
    !buf.is_empty() && region.contains(&buf.as_ptr())
}

/// One connection's queue of file spans its marks stand for. A request on a connection that can
/// send files finds it in its extensions.
#[derive(Debug, Clone, Default)]
pub struct ZeroCopy(Arc<Mutex<VecDeque<FileSpan>>>);

impl ZeroCopy {
    /// A connection's queue, when this platform can send files (Linux).
    pub(super) fn for_connection() -> Option<Self> {
        cfg!(target_os = "linux").then(Self::default)
    }

    /// A new request begins: every earlier response on the connection is written, so no span
    /// may be left (one would be a mark polled and never written).
    pub(super) fn begin_request(&self) {
        let mut queue = self.0.lock().expect("not poisoned");
        if !queue.is_empty() {
            tracing::warn!(left = queue.len(), "zero-copy spans left from an earlier response were dropped");
            queue.clear();
        }
    }

    /// A body of `spans`, one after the other, sent with `sendfile`; `hold` is dropped once
    /// the body is sent or dropped.
    pub fn body(&self, spans: Vec<FileSpan>, hold: impl Send + Sync + 'static) -> poem::Body {
        use futures::StreamExt as _;
        let queue = self.0.clone();
        let frames = spans.into_iter().flat_map(|span| {
            let (file, end) = (span.file, span.offset + span.len);
            (span.offset..end).step_by(FRAME_BYTES).map(move |offset| FileSpan {
                file: file.clone(),
                offset,
                len: (end - offset).min(FRAME_BYTES as u64),
            })
        });
        poem::Body::from_bytes_stream(futures::stream::iter(frames).map(move |frame| {
            let _held = &hold;
            let mark = Bytes::from_static(&region()[..frame.len as usize]);
            queue.lock().expect("not poisoned").push_back(frame);
            Ok::<_, io::Error>(mark)
        }))
    }

    /// Writes `bufs` to `stream`: the plain buffers before the first mark with `writev`, or,
    /// when a mark comes first, its file span with `sendfile`. Returns the bytes written.
    pub(super) fn poll_write_vectored(
        &self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().position(|b| !b.is_empty()).unwrap_or(bufs.len());
        match bufs.get(first) {
            Some(mark) if is_mark(mark) => self.poll_send_file(stream, cx, mark.len()),
            _ => {
                let plain = first + bufs[first..].iter().position(|b| is_mark(b)).unwrap_or(bufs.len() - first);
                std::pin::Pin::new(stream).poll_write_vectored(cx, &bufs[..plain])
            }
        }
    }

    /// Writes `buf` to `stream` (a mark: its file span with `sendfile`).
    pub(super) fn poll_write(
        &self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(stream, cx, &[io::IoSlice::new(buf)])
    }

    /// Sends up to `most` bytes of the span at the queue's front; the span advances by what was
    /// sent and leaves the queue once sent.
    fn poll_send_file(&self, stream: &mut TcpStream, cx: &mut Context<'_>, most: usize) -> Poll<io::Result<usize>> {
        let mut queue = self.0.lock().expect("not poisoned");
        let Some(span) = queue.front_mut() else {
            return Poll::Ready(Err(io::Error::other("zero-copy: a marked frame has no file span behind it")));
        };
        let count = (span.len.min(most as u64)) as usize;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_io(Interest::WRITABLE, || send_file(stream_fd(stream), span, count)) {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("zero-copy: the file ended before offset {}", span.offset),
                    )));
                }
                Ok(sent) => {
                    crate::telemetry::metrics::download_bytes("sendfile", sent);
                    span.offset += sent as u64;
                    span.len -= sent as u64;
                    if span.len == 0 {
                        queue.pop_front();
                    }
                    return Poll::Ready(Ok(sent));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The socket's descriptor.
fn stream_fd(stream: &TcpStream) -> std::os::fd::RawFd {
    std::os::fd::AsRawFd::as_raw_fd(stream)
}

/// One `sendfile` of up to `count` bytes of `span` to `socket`.
#[cfg(target_os = "linux")]
fn send_file(socket: std::os::fd::RawFd, span: &FileSpan, count: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    let mut offset = libc::off_t::try_from(span.offset).map_err(io::Error::other)?;
    // SAFETY: both descriptors are open for the call (the span holds its file); the kernel
    // writes only `offset`, which we own.
    let sent = unsafe { libc::sendfile(socket, span.file.as_raw_fd(), &mut offset, count) };
    if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(sent as usize) }
}

#[cfg(not(target_os = "linux"))]
fn send_file(_socket: std::os::fd::RawFd, _span: &FileSpan, _count: usize) -> io::Result<usize> {
    Err(io::Error::other("zero-copy sends need Linux"))
}
