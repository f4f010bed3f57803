//! A TCP proxy that the chaos tests put between a server and its database,
//! to break the network on demand: [`Proxy::cut`] drops every open
//! connection at once (as a restarted load balancer or a dead NAT entry
//! would), and [`Proxy::blackhole`] keeps connections open but lets no byte
//! through, in either direction, until [`Proxy::restore`] (as a partitioned
//! network does: nothing is refused, everything times out).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A running proxy. Dropping it closes the listener and every connection.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    /// Bumped by every cut; each connection ends when it changes.
    cuts: watch::Sender<u64>,
    /// False while blackholed.
    open: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind the proxy")?;
        let addr = listener.local_addr()?;
        let (cuts, _) = watch::channel(0);
        let (open, _) = watch::channel(true);
        let accept = tokio::spawn(accept(listener, upstream, cuts.clone(), open.clone()));
        Ok(Self { addr, cuts, open, accept })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection; new ones are accepted as before.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Lets no byte through until [`Proxy::restore`]; connections stay open.
    pub fn blackhole(&self) {
        self.open.send_replace(false);
    }

    /// Ends a blackhole: what was held back flows again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the connections' tasks; aborting it drops them all.
        self.accept.abort();
    }
}

async fn accept(listener: TcpListener, upstream: SocketAddr, cuts: watch::Sender<u64>, open: watch::Sender<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.spawn(forward(client, upstream, cuts.subscribe(), open.subscribe()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one connection until either side closes it or it is cut.
async fn forward(client: TcpStream, upstream: SocketAddr, mut cuts: watch::Receiver<u64>, open: watch::Receiver<bool>) {
    cuts.mark_unchanged();
    let relay = async {
        // A connection made during a blackhole hangs like the rest of the traffic.
        let mut gate = open.clone();
        if gate.wait_for(|open| *open).await.is_err() {
            return;
        }
        let Ok(server) = TcpStream::connect(upstream).await else { return };
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        tokio::join!(pump(client_read, server_write, open.clone()), pump(server_read, client_write, open.clone()));
    };
    tokio::select! {
        () = relay => {}
        _ = cuts.changed() => {}
    }
}

/// Copies bytes from one side to the other, holding them back while blackholed.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: watch::Receiver<bool>,
) {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if open.wait_for(|open| *open).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
