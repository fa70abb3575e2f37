//! The TLS server: accepting connections within a cap, and bounding what a
//! client can make one connection cost (handshake, request headers, idle
//! time), so that idle or slow clients cannot exhaust the process.
//!
//! Each connection speaks the protocol its TLS handshake negotiated (ALPN
//! `h2`, else HTTP/1.1 with upgrades), so no byte is read before a timeout
//! guards it. A connection with no request in flight for the idle timeout
//! is shut down gracefully (HTTP/1.1: closed between requests; HTTP/2:
//! GOAWAY), and dropped if it has not finished within the same time again.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// What one connection may cost the server.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections served at once; past it the server stops accepting
    /// (clients wait in the kernel's backlog) until one ends.
    pub max_connections: usize,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time an HTTP/1.1 client has to send a request's headers, counted
    /// from when the server is ready for the next request.
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// How often, at most, a full connection table is logged.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// How long to wait before accepting again after `accept` failed for lack
/// of a resource (file descriptors, memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` over TLS on `listener` until `shutdown` completes.
/// Failing to accept a connection is logged and retried, never fatal.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    let mut last_full_warning: Option<Instant> = None;
    loop {
        // Back-pressure: no accept while every slot is taken.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot,
            () = &mut shutdown => return Ok(()),
        };
        let Ok(slot) = slot else {
            return Ok(());
        };
        if slots.available_permits() == 0
            && last_full_warning.is_none_or(|at| at.elapsed() >= FULL_WARNING_EVERY)
        {
            last_full_warning = Some(Instant::now());
            tracing::warn!(
                max = limits.max_connections,
                "connection limit reached; new connections wait until one ends"
            );
        }
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let limits = Arc::clone(&limits);
        tokio::spawn(async move {
            serve_connection(tcp, peer, acceptor, router, &limits).await;
            drop(slot);
        });
    }
}

/// Logs a failed `accept` and, when the process or system ran out of a
/// resource, waits a little so the loop does not spin.
async fn accept_failed(e: &std::io::Error) {
    let exhausted = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if exhausted {
        tracing::warn!(error = %e, "cannot accept a connection (out of resources); retrying");
        tokio::time::sleep(ACCEPT_BACKOFF).await;
    } else {
        tracing::debug!(error = %e, "accept failed");
    }
}

async fn serve_connection(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    limits: &ConnectionLimits,
) {
    let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let guard = activity.begin();
            let router = router.clone();
            async move {
                let response = router.oneshot(req).await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(Tracked {
                        body,
                        _guard: guard,
                    })
                }))
            }
        })
    };
    let io = TokioIo::new(stream);
    let result = if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(limits.idle_timeout / 3))
            .keep_alive_timeout(limits.header_timeout)
            .max_concurrent_streams(250);
        let conn = builder.serve_connection(io, service);
        watch_idle(conn, &activity, limits.idle_timeout, |c| {
            c.graceful_shutdown()
        })
        .await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let conn = builder.serve_connection(io, service).with_upgrades();
        watch_idle(conn, &activity, limits.idle_timeout, |c| {
            c.graceful_shutdown()
        })
        .await
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Drives `conn` to its end, shutting it down gracefully once it has had
/// no request in flight for `idle`, and dropping it if it then takes as
/// long again to finish.
async fn watch_idle<C, E>(
    conn: C,
    activity: &Activity,
    idle: Duration,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    loop {
        let wait = activity.idle_deadline(idle);
        tokio::select! {
            result = &mut conn => return result,
            () = tokio::time::sleep_until(wait.into()) => {
                if activity.idle_for() >= Some(idle) {
                    break;
                }
            }
        }
    }
    shutdown(conn.as_mut());
    match tokio::time::timeout(idle, conn).await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
        }
    }

    /// Marks a request in flight until the guard (carried by the response
    /// body, so streams such as watches count) is dropped.
    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// How long the connection has had nothing in flight; `None` while a
    /// request is.
    fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(self.since().elapsed())
    }

    /// When the connection will have been idle for `idle`, were nothing to
    /// happen; while a request is in flight, `idle` from now.
    fn idle_deadline(&self, idle: Duration) -> Instant {
        match self.idle_for() {
            Some(_) => self.since() + idle,
            None => Instant::now() + idle,
        }
    }

    fn since(&self) -> Instant {
        *self.since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request in flight (see [`Activity::begin`]).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it
/// has been sent or dropped.
struct Tracked {
    body: Body,
    _guard: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> SizeHint {
        hyper::body::Body::size_hint(&self.body)
    }
}

/// Raises this process's soft limit of open files to its hard limit, so
/// that connections are bounded by [`ConnectionLimits::max_connections`]
/// rather than by a low default; returns the new soft limit.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let (_soft, hard) = rlimit_nofile::get()?;
    rlimit_nofile::set(hard, hard)?;
    Ok(hard)
}

/// `RLIMIT_NOFILE` through `getrlimit`/`setrlimit`.
mod rlimit_nofile {
    pub(super) fn get() -> std::io::Result<(u64, u64)> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit for the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((limit.rlim_cur, limit.rlim_max))
    }

    pub(super) fn set(soft: u64, hard: u64) -> std::io::Result<()> {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: `limit` is a valid rlimit, read by the call only.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
