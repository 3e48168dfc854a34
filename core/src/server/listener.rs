//! The connection loop: a bounded number of connections, HTTP/1 header and request-body read
//! timeouts, HTTP/2 stream limits, the client address behind trusted proxies, and graceful
//! shutdown that ends the connections still open once the grace period is over.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tower_service::Service;

use super::client_ip::TrustedProxies;
use super::threads::ConnectionThreads;

/// Connection and read limits (`tollgate serve` flags; defaults in parentheses).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time a client has to send a request's headers, also the longest idle keep-alive wait
    /// (30 s; keep it above the idle timeout of a load balancer in front). A client that
    /// dribbles its headers is disconnected.
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's whole body, from its headers on (30 s); a late
    /// body answers 400 `invalid_request_body`.
    pub body_read_timeout: Duration,
    /// Open connections at most (4096); further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Concurrent streams per HTTP/2 connection (128).
    pub http2_max_concurrent_streams: u32,
    /// Threads that serve connections, each with its own runtime ([`super::threads`]); 0 serves
    /// them on the main work-stealing runtime (one per CPU).
    pub connection_threads: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            http2_max_concurrent_streams: 128,
            connection_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// HTTP/2 streams a client may reset before the server has accepted them (rapid-reset guard).
const MAX_PENDING_RESETS: usize = 20;
/// Largest header block accepted on HTTP/2 (HTTP/1 is bounded by hyper's buffer).
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// The error a request body read fails with once its time is over.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0} ms")]
pub struct BodyReadTimeout(u64);

/// A request body that fails when it is not read completely in time.
pub struct TimedBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Option<Pin<Box<Sleep>>>,
    started: tokio::time::Instant,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: None,
            started: tokio::time::Instant::now(),
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(axum::Error::new)));
        }
        // Only a body that makes the reader wait pays for a timer.
        let (started, timeout) = (this.started, this.timeout);
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(started + timeout)));
        if deadline.as_mut().poll(cx).is_ready() {
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            return Poll::Ready(Some(Err(axum::Error::new(BodyReadTimeout(ms)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long the streams ended at the end of the grace period get to send their last event
/// before their connections are cut.
const STREAMS_END_WAIT: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests and
/// streams finish for `grace`, tells the streams still open to end (`streams_end`), and cuts
/// the connections still open after that. With `threads`, each connection is served by one of
/// them; without, on the current runtime.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    threads: Option<&ConnectionThreads>,
    router: Router,
    limits: HttpLimits,
    trusted: TrustedProxies,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    streams_end: tokio::sync::watch::Sender<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_header_list_size(MAX_HEADER_LIST);
    let builder = Arc::new(builder);
    let trusted = Arc::new(trusted);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Streams are written event by event: do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let trusted = trusted.clone();
        let body_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let client = trusted.client_ip(peer.ip(), request.headers());
            let mut request = request.map(|body| TimedBody::new(body, body_timeout));
            // Handlers read the client address from `ConnectInfo`: behind trusted proxies it is
            // the forwarded client, not the proxy.
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::new(client, peer.port())));
            let mut router = router.clone();
            async move { router.call(request).await }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let serve_one = async move |tcp: TcpStream| {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        };
        match threads.and_then(ConnectionThreads::pick) {
            Some((thread, slot)) => {
                // The socket moves to the thread's own reactor: its readiness then wakes that
                // thread and no other.
                let tcp = match tcp.into_std() {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot hand a connection to its thread");
                        continue;
                    }
                };
                connections.spawn_on(
                    async move {
                        match TcpStream::from_std(tcp) {
                            Ok(tcp) => serve_one(tcp).await,
                            Err(e) => tracing::warn!(error = %e, "cannot register a connection"),
                        }
                        drop(slot);
                        drop(permit);
                    },
                    &thread,
                );
            }
            None => {
                connections.spawn(async move {
                    serve_one(tcp).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    tokio::select! {
        () = &mut drained => {}
        () = tokio::time::sleep(grace) => {
            // Open streams end themselves cleanly (a family-native end event, recorded and
            // settled); what is still open after that is cut.
            tracing::warn!("grace period over; ending the streams still open");
            let _ = streams_end.send(true);
            tokio::select! {
                () = &mut drained => {}
                () = tokio::time::sleep(STREAMS_END_WAIT) => {
                    tracing::warn!("ending the connections still open");
                    connections.abort_all();
                }
            }
        }
    }
    while connections.join_next().await.is_some() {}
}
