//! The private socket as zbus sees it from tokctl (and the benchmark
//! that times tokctl's steps): a Unix stream that
//! passes no file descriptors. zbus's own Unix stream offers descriptor
//! passing in the handshake (`NEGOTIATE_UNIX_FD`), which tokctl never
//! uses and which costs tokd one more answer and tokctl one more wakeup
//! before it can send its call; without it the handshake is `AUTH`,
//! `BEGIN` and tokd's `OK`.

use std::os::fd::{BorrowedFd, OwnedFd};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug)]
pub struct NoFdSocket(pub UnixStream);

#[derive(Debug)]
pub struct Reader(OwnedReadHalf);

#[derive(Debug)]
pub struct Writer(OwnedWriteHalf);

impl zbus::connection::Socket for NoFdSocket {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> zbus::connection::socket::Split<Reader, Writer> {
        let (read, write) = self.0.into_split();
        zbus::connection::socket::Split::new(Reader(read), Writer(write))
    }
}

#[zbus::export::async_trait::async_trait]
impl zbus::connection::socket::ReadHalf for Reader {
    async fn recvmsg(&mut self, buffer: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
        Ok((self.0.read(buffer).await?, Vec::new()))
    }
}

#[zbus::export::async_trait::async_trait]
impl zbus::connection::socket::WriteHalf for Writer {
    async fn sendmsg(&mut self, buffer: &[u8], _fds: &[BorrowedFd<'_>]) -> std::io::Result<usize> {
        self.0.write(buffer).await
    }

    async fn close(&mut self) -> std::io::Result<()> {
        self.0.shutdown().await
    }
}
