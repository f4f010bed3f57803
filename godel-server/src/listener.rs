//! The listener: the accept loop in front of the routes, with the limits
//! that keep a server reachable when clients misbehave, and TLS.
//!
//! - At most `limits.max_connections` connections are open at once
//!   (WebSockets included): past it, a new connection is closed as soon as
//!   it is accepted, so that it costs a descriptor for an instant only.
//! - A client has `limits.header_read_timeout` to send a request's headers
//!   (hyper's own timer), and with TLS the same time to finish the
//!   handshake: slowloris connections are cut.
//! - A connection with no request in progress and no bytes moving for
//!   `limits.idle_timeout` is closed. Upgraded connections (WebSockets) leave
//!   this watch and keep their own pings.
//! - The soft limit on open files is raised to the hard one at start.
//!
//! With TLS, handshakes present whatever certificate `tls::Certificate`
//! holds at the time, so that it can be replaced without a restart.
//!
//! It serves any hyper service made per connection from the peer's address,
//! and puts that address into each request's extensions as [`Peer`].
//! Stopping it stops the accepts and asks every connection to finish its
//! request in progress and close; the caller bounds how long that may take.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::HttpBody;
use hyper::server::conn::Http;
use hyper::service::Service;
use hyper::{Body, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Limits;
use crate::tls::Certificate;

/// The address a request came from, in every request's extensions.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// A bound socket, ready to serve.
pub(crate) struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Limits,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Listener {
    /// Binds `addr`; with `tls`, serves HTTPS presenting its certificate.
    pub(crate) async fn bind(addr: SocketAddr, tls: Option<&Arc<Certificate>>, limits: Limits) -> anyhow::Result<Self> {
        raise_open_file_limit();
        let tls = tls.map(Certificate::acceptor).transpose()?;
        let tcp = TcpListener::bind(addr).await.map_err(|e| listen_error(addr, &e))?;
        Ok(Self { tcp, tls, limits })
    }

    /// The address bound (useful with port 0).
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// `https` with TLS, else `http`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Accepts and serves connections until `stop` is cancelled, then lets
    /// each connection finish its request in progress and returns when all
    /// have closed. Dropping the future closes them at once.
    pub(crate) async fn serve<M, S, B>(self, make: M, stop: CancellationToken)
    where
        M: Fn(SocketAddr) -> S,
        S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: HttpBody + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        // Owned here, so that dropping the future aborts every connection.
        let mut connections = JoinSet::new();
        let mut full = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.tcp.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of descriptors, most likely: let connections close rather than spin.
                            tracing::warn!(error = %e, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        if !full {
                            tracing::warn!(
                                max_connections = self.limits.max_connections,
                                "connection limit reached (limits.max_connections); closing new connections"
                            );
                            full = true;
                        }
                        drop(stream);
                        continue;
                    };
                    full = false;
                    let _ = stream.set_nodelay(true);
                    let service = Counted { inner: make(peer), activity: Arc::default(), peer };
                    connections.spawn(connection(stream, permit, self.tls.clone(), self.limits, service, stop.clone()));
                }
            }
        }
        drop(self.tcp);
        while connections.join_next().await.is_some() {}
    }
}

/// Serves one connection: the TLS handshake if any, then HTTP under the
/// idle watch.
async fn connection<S, B>(
    stream: TcpStream,
    permit: OwnedSemaphorePermit,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    service: Counted<S>,
    stop: CancellationToken,
) where
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let peer = service.peer;
    let io = Tracked { inner: stream, activity: service.activity.clone(), _permit: permit };
    let Some(tls) = tls else {
        return http(io, service, limits, stop).await;
    };
    // The handshake is bounded like the headers it stands before.
    match tokio::time::timeout(limits.header_read_timeout, tls.accept(io)).await {
        Ok(Ok(io)) => http(io, service, limits, stop).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn http<I, S, B>(io: I, service: Counted<S>, limits: Limits, stop: CancellationToken)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Body>, Response = Response<B>> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let (activity, peer) = (service.activity.clone(), service.peer);
    let mut http = Http::new();
    http.http1_header_read_timeout(limits.header_read_timeout);
    let conn = http.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(activity.idle_deadline(limits.idle_timeout)) => {
                if activity.idle(limits.idle_timeout) {
                    tracing::debug!(%peer, "closing an idle connection");
                    return;
                }
            }
            () = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// When a connection last moved bytes, and how many of its requests are in
/// progress.
#[derive(Debug)]
struct Activity {
    since: Instant,
    /// Milliseconds after `since`.
    last: AtomicU64,
    in_flight: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Self { since: Instant::now(), last: AtomicU64::new(0), in_flight: AtomicUsize::new(0) }
    }
}

impl Activity {
    fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last.load(Ordering::Relaxed))
    }

    /// When the connection will have been idle for `timeout`, as far as is known now.
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.in_flight.load(Ordering::Relaxed) > 0 { Instant::now() + timeout } else { self.last() + timeout }
    }

    fn idle(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.last() + timeout <= Instant::now()
    }
}

/// The socket, noting when bytes move and holding the connection's place
/// under the limit for as long as it is open (past an upgrade too).
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Tracked {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The service, counting requests in progress and telling each its peer.
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
    peer: SocketAddr,
}

/// A request in progress, counted until its response is ready.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

impl<S, B> Service<Request<Body>> for Counted<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        request.extensions_mut().insert(Peer(self.peer));
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        let in_flight = InFlight(self.activity.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let _in_flight = in_flight;
            response.await
        })
    }
}

/// Raises the soft limit on open files to the hard one: each connection
/// holds a descriptor, and the usual soft limit (1,024) is far below
/// `limits.max_connections`.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

fn listen_error(addr: SocketAddr, e: &io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        anyhow::anyhow!(
            "cannot listen on {addr}: the address is already in use (is another godel-server running? set bind in godel.toml or GODEL_BIND)"
        )
    } else {
        anyhow::anyhow!("cannot listen on {addr}: {e}")
    }
}
