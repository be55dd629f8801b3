//! Zero-copy response bodies: a cached body also kept in a sealed in-memory file (`memfd`) is
//! sent to the client with `sendfile(2)` — the kernel hands page references to the socket instead
//! of copying the bytes from user space, which is what nginx does with `sendfile on` for its cache
//! files. Without it a large response spends about a fifth of the server's CPU in the kernel's
//! user-to-socket copy.
//!
//! hyper knows nothing of this: it writes the response as it always does, an `IoSlice` list of
//! headers and body `Bytes`. [`SendfileStream`] sits under hyper's connection and checks each
//! slice against the [`FileBodies`] registry: a slice that lies inside a registered body (by
//! address; the registered `Bytes` is alive as long as its entry, so an address in the table
//! always holds that body's bytes) is sent from the file at the matching offset, everything else
//! is written as usual. The headers before it go out with `MSG_MORE` so they share the body's
//! first packet, as `tcp_nopush` does. A body that is not registered (or whose entry was removed
//! while it was being sent) is written normally: the fallback is the same bytes, only copied.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::SendFlags;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Bodies shorter than this are not worth a file: the copy costs less than the extra syscall.
pub const MIN_FILE_BODY: usize = 16 * 1024;

/// The registry of file-backed bodies (see the module docs). One per server, shared by its
/// connections and by whoever stores bodies.
#[derive(Debug)]
pub struct FileBodies {
    /// body start address → its length and file
    by_address: Mutex<BTreeMap<usize, Backing>>,
    /// at most this many files (each holds a descriptor); bodies beyond it are written normally
    max_files: usize,
}

impl Default for FileBodies {
    /// Room for files in half of the descriptors this process may open (the rest is for
    /// connections); see [`raise_fd_limit`].
    fn default() -> FileBodies {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1 << 20);
        FileBodies::with_max_files(usize::try_from(limit / 2).unwrap_or(usize::MAX))
    }
}

/// Raise this process's soft limit on open files to its hard limit (as nginx's
/// `worker_rlimit_nofile` does): every connection and every file-backed body holds one, and the
/// soft default (often 1024) is far below what a server with thousands of viewers needs.
/// Capped at 2^20. Returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let want = Some(limit.maximum.unwrap_or(u64::MAX).min(1 << 20));
    if limit.current < want {
        limit.current = want;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!("open files limit not raised: {e}");
        }
    }
    getrlimit(Resource::Nofile).current
}

#[derive(Debug, Clone)]
struct Backing {
    len: usize,
    file: Arc<File>,
}

/// Keeps a body registered; dropping it removes the entry (before the body it guards can be
/// freed, as long as it is dropped before or with that `Bytes`).
#[derive(Debug)]
pub struct FileBacked {
    bodies: Arc<FileBodies>,
    start: usize,
    /// the registered body, held so its address cannot be reused while the entry exists
    _body: Bytes,
}

impl Drop for FileBacked {
    fn drop(&mut self) {
        self.bodies.table().remove(&self.start);
    }
}

impl FileBodies {
    /// A registry holding at most `max_files` files.
    pub fn with_max_files(max_files: usize) -> FileBodies {
        FileBodies {
            by_address: Mutex::default(),
            max_files,
        }
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<usize, Backing>> {
        self.by_address.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copy `body` into a sealed memfd and register it; keep the returned guard as long as the
    /// body is served. `None` for short bodies or when the file cannot be made (out of file
    /// descriptors or memory): the body is then simply written, never lost.
    pub fn back(self: &Arc<Self>, body: &Bytes) -> Option<FileBacked> {
        if body.len() < MIN_FILE_BODY || self.len() >= self.max_files {
            return None;
        }
        let file = match memfd_with(body) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!("body kept in memory only (no memfd): {e}");
                return None;
            }
        };
        let start = body.as_ptr() as usize;
        self.table().insert(
            start,
            Backing {
                len: body.len(),
                file: Arc::new(file),
            },
        );
        Some(FileBacked {
            bodies: self.clone(),
            start,
            _body: body.clone(),
        })
    }

    /// The file and offset holding `slice`, if it lies inside a registered body.
    fn find(&self, slice: &[u8]) -> Option<(Arc<File>, u64)> {
        let at = slice.as_ptr() as usize;
        let table = self.table();
        let (&start, backing) = table.range(..=at).next_back()?;
        let offset = at - start;
        (offset + slice.len() <= backing.len).then(|| (backing.file.clone(), offset as u64))
    }

    /// Registered bodies (for metrics and tests).
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Bytes in the registered bodies' files (shared memory: not in the process's RSS).
    pub fn bytes(&self) -> usize {
        self.table().values().map(|b| b.len).sum()
    }

    /// No body is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn memfd_with(body: &[u8]) -> io::Result<File> {
    let fd = rustix::fs::memfd_create(
        "tidecast-body",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut file = File::from(fd);
    file.write_all(body)?;
    // the bytes can never change under a reader
    rustix::fs::fcntl_add_seals(
        &file,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    Ok(file)
}

/// A TCP connection that sends registered bodies with `sendfile` (see the module docs).
#[derive(Debug)]
pub struct SendfileStream {
    stream: TcpStream,
    bodies: Arc<FileBodies>,
}

impl SendfileStream {
    /// Wrap an accepted connection.
    pub fn new(stream: TcpStream, bodies: Arc<FileBodies>) -> SendfileStream {
        SendfileStream { stream, bodies }
    }

    /// Run a non-blocking write `op` once the socket is writable.
    fn poll_op(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut() -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_io(Interest::WRITABLE, &mut op) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }

    fn sendfile(&self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let mut offset = offset;
        Ok(rustix::fs::sendfile(
            &self.stream,
            file,
            Some(&mut offset),
            len,
        )?)
    }
}

impl AsyncRead for SendfileStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.as_mut().poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let backed = bufs
            .iter()
            .enumerate()
            .find_map(|(i, b)| self.bodies.find(b).map(|(file, offset)| (i, file, offset)));
        let Some((i, file, offset)) = backed else {
            return Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        };
        let len = bufs[i].len();
        if i == 0 {
            return self.poll_op(cx, || self.sendfile(&file, offset, len));
        }
        // what comes before the body (headers, a chunk size) is held back to share its packet
        let before = &bufs[..i];
        let before_len: usize = before.iter().map(|b| b.len()).sum();
        let sent = ready!(self.poll_op(cx, || {
            let mut control = rustix::net::SendAncillaryBuffer::default();
            Ok(rustix::net::sendmsg(
                &self.stream,
                before,
                &mut control,
                SendFlags::MORE | SendFlags::NOSIGNAL,
            )?)
        }))?;
        if sent < before_len {
            return Poll::Ready(Ok(sent));
        }
        match self
            .stream
            .try_io(Interest::WRITABLE, || self.sendfile(&file, offset, len))
        {
            Ok(n) => Poll::Ready(Ok(sent + n)),
            // the socket filled up: report what went out, the body follows on the next call
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(Ok(sent)),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn body(len: usize) -> Bytes {
        (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>().into()
    }

    #[test]
    fn registry_finds_slices_inside_registered_bodies_only() {
        let bodies = Arc::new(FileBodies::default());
        let small = body(100);
        assert!(bodies.back(&small).is_none(), "short bodies stay in memory");
        let big = body(MIN_FILE_BODY * 2);
        let guard = bodies.back(&big).expect("memfd");
        assert_eq!(bodies.find(&big).map(|(_, o)| o), Some(0));
        assert_eq!(bodies.find(&big[100..200]).map(|(_, o)| o), Some(100));
        let copy = big.to_vec();
        assert!(bodies.find(&copy).is_none(), "same bytes elsewhere");
        drop(guard);
        assert!(bodies.find(&big).is_none());
        assert!(bodies.is_empty());
        let one = Arc::new(FileBodies::with_max_files(1));
        let _kept = one.back(&big).expect("first file");
        assert!(
            one.back(&body(MIN_FILE_BODY)).is_none(),
            "over the file budget"
        );
    }

    /// Headers + a file-backed body + a trailing slice arrive intact and in order, through a
    /// socket small enough to force partial writes.
    #[tokio::test]
    async fn vectored_write_sends_backed_body_from_the_file() {
        let bodies = Arc::new(FileBodies::default());
        let big = body(3 * 1024 * 1024);
        let _guard = bodies.back(&big).expect("memfd");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.unwrap();
            got
        });
        let (server, _) = listener.accept().await.unwrap();
        let mut out = SendfileStream::new(server, bodies.clone());
        let head = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        let tail = b"\r\n0\r\n\r\n".to_vec();
        let mut parts: Vec<&[u8]> = vec![&head, &big[..], &tail];
        while !parts.is_empty() {
            let iov: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
            let mut n = out.write_vectored(&iov).await.unwrap();
            assert!(n > 0);
            while n > 0 {
                let take = n.min(parts[0].len());
                parts[0] = &parts[0][take..];
                n -= take;
                if parts[0].is_empty() {
                    parts.remove(0);
                }
            }
        }
        out.shutdown().await.unwrap();
        let got = client.await.unwrap();
        let mut want = head.clone();
        want.extend_from_slice(&big);
        want.extend_from_slice(&tail);
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes differ");
    }
}
