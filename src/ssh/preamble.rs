//! An optional first line before the SSH banner: `PAM-TARGET <name>\r\n`,
//! sent by `pam ssh-proxy` (the ProxyCommand of `pam config ssh`), so that
//! `ssh LOGIN@TARGET.pam` works with OpenSSH's own username handling. A
//! connection that starts with `SSH-` is an ordinary client.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::username::{self, Preamble};

/// Reads the first bytes; returns the stream (with those bytes still to be
/// read if they belong to SSH) and the announced target, if any. The
/// caller bounds the time it may take (`server.auth_timeout`).
pub async fn read(mut stream: TcpStream) -> anyhow::Result<(Prefixed, Option<String>)> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 64];
    loop {
        match username::scan(&buf) {
            Preamble::NeedMore => {}
            Preamble::Ssh => return Ok((Prefixed::new(stream, buf), None)),
            Preamble::Target { target, consumed } => {
                if !crate::config::valid_target_name(target) {
                    anyhow::bail!("malformed preamble");
                }
                let target = target.to_owned();
                let rest = buf[consumed..].to_vec();
                return Ok((Prefixed::new(stream, rest), Some(target)));
            }
            Preamble::Malformed(why) => anyhow::bail!(why),
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!("connection closed before the banner");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A stream that first yields bytes already read from it.
pub struct Prefixed {
    stream: TcpStream,
    prefix: Vec<u8>,
    offset: usize,
}

impl Prefixed {
    fn new(stream: TcpStream, prefix: Vec<u8>) -> Self {
        Self {
            stream,
            prefix,
            offset: 0,
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.offset < self.prefix.len() {
            let rest = &self.prefix[self.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            self.offset += n;
            if self.offset == self.prefix.len() {
                self.prefix = Vec::new();
                self.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
