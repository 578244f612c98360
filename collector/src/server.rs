//! The collector's own listener: `GET /snapshot` (binary), `/snapshot?format=json`, `/metrics`,
//! `/healthz` (the process runs), `/readyz` (a snapshot with at least one ready pod exists).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::push::Published;

#[derive(Clone)]
pub struct ServerState {
    pub latest: watch::Receiver<Option<Arc<Published>>>,
    pub metrics: Arc<Metrics>,
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

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, state: ServerState) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = handle(&state, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
