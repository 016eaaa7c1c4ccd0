//! The public listener's own accept loop: HTTP/1.1 and HTTP/2 with a
//! header timeout, a connection cap and a graceful drain.

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};

/// What one webhook connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; past it, new ones wait in the kernel's
    /// backlog.
    pub max_connections: usize,
    /// The most a client may take to send a request's headers (HTTP/1.1).
    pub header_timeout: Duration,
    /// The largest request head: HTTP/1.1's read buffer (431 past it) and
    /// HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE (the stream is reset).
    pub max_header_size: usize,
}

/// Serves `router` on `listener` until `shutdown` completes, then lets the
/// requests in flight finish: HTTP/1.1 and HTTP/2, within `limits`, at
/// most 64 streams on one HTTP/2 connection.
///
/// Our own accept loop rather than axum::serve: hyper's header timeout
/// needs a timer, which axum::serve does not give it, so there a client
/// dripping headers a byte at a time held a connection forever.
pub async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo, TokioTimer},
        server::{conn::auto::Builder, graceful::GracefulShutdown},
        service::TowerToHyperService,
    };
    use tower::ServiceExt;

    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_size.max(8 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64)
        .max_header_list_size(u32::try_from(limits.max_header_size).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let service = router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        );
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(tcp), TowerToHyperService::new(service))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
