//! The connection loop: accepts TCP connections up to a cap, serves each with hyper's HTTP/1
//! with a header read timeout (which also bounds idle time on a kept-alive connection), and
//! shuts down in bounded time whatever clients do.
//!
//! Knows connections, not routes: the [`Router`] it is given answers every request.
//! `axum::serve` is not used because it sets no timer (so no read timeout), has no connection
//! cap, and its graceful shutdown waits for a client that stopped halfway through a request.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How connections are bounded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub shutdown_grace: Duration,
}

/// The answer to a connection over the cap (written without reading the request).
const REFUSED: &str = "{\"error\":{\"message\":\"connections: the worker has too many open connections; retry later\",\"type\":\"server_overloaded\",\"param\":null,\"code\":\"TOO_MANY_CONNECTIONS\",\"field\":null}}";

/// Serves until `stop` completes, then stops accepting, asks every connection to close after
/// its current response, and after `shutdown_grace` drops the ones still open.
pub(crate) async fn serve(listener: TcpListener, app: Router, limits: ConnLimits, stop: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (close_tx, close_rx) = tokio::sync::watch::channel(false);
    let mut tasks: JoinSet<()> = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        eprintln!("worker-orcd: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                match Arc::clone(&permits).try_acquire_owned() {
                    Ok(permit) => {
                        let (app, mut close) = (app.clone(), close_rx.clone());
                        let header_timeout = limits.header_timeout;
                        tasks.spawn(async move {
                            let _permit = permit;
                            let _ = stream.set_nodelay(true);
                            let mut b = http1::Builder::new();
                            b.timer(TokioTimer::new()).header_read_timeout(Some(header_timeout));
                            let conn = b.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
                            tokio::pin!(conn);
                            tokio::select! {
                                _ = conn.as_mut() => return,
                                _ = close.wait_for(|c| *c) => conn.as_mut().graceful_shutdown(),
                            }
                            let _ = conn.await;
                        });
                    }
                    Err(_) => {
                        tasks.spawn(refuse(stream));
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    let _ = close_tx.send(true);
    let deadline = tokio::time::sleep(limits.shutdown_grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            r = tasks.join_next() => if r.is_none() { break },
        }
    }
    if !tasks.is_empty() {
        eprintln!("worker-orcd: closing {} connections still open after the shutdown grace period", tasks.len());
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// 503 and close, for a connection over the cap; never waits more than a second on the client.
async fn refuse(mut stream: TcpStream) {
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{REFUSED}",
        REFUSED.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(msg.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}
