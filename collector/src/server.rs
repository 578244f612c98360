//! The collector's own listener: `GET /snapshot` (binary), `/snapshot?format=json`, `/metrics`,
//! `/healthz` (the process runs), `/readyz` (a snapshot with at least one ready pod exists), and
//! with `--relay` `POST /relay` ([`crate::relay`]). The same service runs over plain HTTP
//! (`--listen`, [`serve`]) and over TLS (`--tls-listen`, [`serve_tls`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::push::Published;
use crate::relay::RelayHub;

#[derive(Clone)]
pub struct ServerState {
    pub latest: watch::Receiver<Option<Arc<Published>>>,
    pub metrics: Arc<Metrics>,
    /// `--relay`: the hub that takes `POST /relay`.
    pub relay: Option<Arc<RelayHub>>,
}

fn reply(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

pub fn handle(state: &ServerState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    let latest = state.latest.borrow().clone();
    match req.uri().path() {
        "/snapshot" => {
            let Some(p) = latest else {
                return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no snapshot yet\n");
            };
            let json = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "format=json"));
            if json {
                let json = serde_json::to_string(&p.snapshot).unwrap_or_else(|_| "{}".into());
                reply(StatusCode::OK, "application/json", json)
            } else {
                reply(StatusCode::OK, "application/octet-stream", p.encoded.clone())
            }
        }
        "/metrics" => reply(StatusCode::OK, crate::metrics::CONTENT_TYPE, state.metrics.render()),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match latest {
            Some(p) if p.ready > 0 => reply(StatusCode::OK, "text/plain", "ready\n"),
            _ => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no ready pod yet\n"),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `POST /relay`: checked before the body is read, the body read up to the bound, then kept or
/// refused whole.
async fn relay(hub: &RelayHub, metrics: &Metrics, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let length = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let answer = match hub.check_head(
        req.method() == Method::POST,
        peer.ip().to_canonical(),
        authorization,
        length,
    ) {
        Err(a) => a,
        Ok(()) => {
            let limited = http_body_util::Limited::new(req.into_body(), hub.max_bytes());
            match limited.collect().await {
                Ok(b) => hub.take(b.to_bytes()),
                Err(_) => crate::relay::Answer {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: "batch too large or cut short\n",
                },
            }
        }
    };
    metrics.relay_result(answer.status.as_u16());
    reply(answer.status, "text/plain", answer.message)
}

async fn route(state: ServerState, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    match &state.relay {
        Some(hub) if req.uri().path() == "/relay" => relay(hub, &state.metrics, req, peer).await,
        _ => handle(&state, &req),
    }
}

async fn serve_io<I>(io: I, state: ServerState, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(state, req, peer).await) }
    });
    let _ = http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: ServerState) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_io(stream, state.clone(), peer));
    }
}

/// Serves over TLS until the task is dropped; a failed handshake drops that connection only.
pub async fn serve_tls(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, state: ServerState) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (acceptor, state) = (acceptor.clone(), state.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(std::time::Duration::from_secs(5), acceptor.accept(stream)).await {
                Ok(Ok(tls)) => serve_io(tls, state, peer).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
