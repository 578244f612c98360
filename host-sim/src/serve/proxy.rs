//! The proxy side of the gateway: client connections, the router that picks the upstream
//! from what the filter released, upstream requests, and real `dispatch_http_call`s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as smpsc, Arc};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::abi::{Direction, Headers};
use crate::hostcalls::PendingCall;
use crate::options::CallResponse;
use crate::worker::StreamId;

use super::worker_loop::{Ev, WCmd};
use super::ProxyState;

// === bodies ===

type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Response/request body: either complete, or fed frame by frame through a channel.
enum GwBody {
    Full(Option<Bytes>),
    Chan(mpsc::UnboundedReceiver<Result<Frame<Bytes>, BodyError>>),
}

impl Body for GwBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut *self {
            GwBody::Full(b) => Poll::Ready(b.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b)))),
            GwBody::Chan(rx) => rx.poll_recv(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, GwBody::Full(None)) || matches!(self, GwBody::Full(Some(b)) if b.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GwBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            GwBody::Full(None) => SizeHint::with_exact(0),
            GwBody::Chan(_) => SizeHint::default(),
        }
    }
}

const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

fn simple_response(status: u16, body: &'static str) -> Response<GwBody> {
    let mut r = Response::new(GwBody::Full(Some(Bytes::from_static(body.as_bytes()))));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    r
}

/// Build the client response from the headers the filter released.
fn client_response(headers: &Headers, body: GwBody, full_len: Option<usize>) -> Response<GwBody> {
    let status = headers
        .iter()
        .find(|(k, _)| k == ":status")
        .and_then(|(_, v)| v.parse::<u16>().ok())
        .and_then(|s| hyper::StatusCode::from_u16(s).ok())
        .unwrap_or(hyper::StatusCode::OK);
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        if k.starts_with(':') || HOP.contains(&k.as_str()) || k == "content-length" {
            continue;
        }
        b = b.header(k.as_str(), v.as_str());
    }
    if let Some(n) = full_len {
        b = b.header("content-length", n.to_string());
    }
    b.body(body)
        .unwrap_or_else(|_| simple_response(502, "bad response headers from filter"))
}

fn to_proxy_headers(parts: &hyper::http::request::Parts) -> Headers {
    let mut h: Headers = vec![
        (":method".into(), parts.method.as_str().to_string()),
        (
            ":path".into(),
            parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
        ),
    ];
    let authority = parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    h.push((":authority".into(), authority));
    h.push((":scheme".into(), "http".into()));
    for (k, v) in &parts.headers {
        let k = k.as_str().to_ascii_lowercase();
        if k == "host" || HOP.contains(&k.as_str()) {
            continue;
        }
        h.push((k, String::from_utf8_lossy(v.as_bytes()).into_owned()));
    }
    h
}

/// Serve one client connection (HTTP/1.1), each request a stream on the next worker.
pub(super) async fn serve_connection(tcp: TcpStream, peer: SocketAddr, sh: Arc<ProxyState>) {
    let svc = hyper::service::service_fn(move |req| {
        let sh = sh.clone();
        async move { Ok::<_, Infallible>(handle(req, peer, sh).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tcp), svc)
        .await;
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, sh: Arc<ProxyState>) -> Response<GwBody> {
    let wi = sh.rr.fetch_add(1, Ordering::Relaxed) % sh.workers.len();
    let wtx = sh.workers[wi].clone();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (id_tx, id_rx) = oneshot::channel();
    if wtx
        .send(WCmd::New {
            events: ev_tx,
            peer,
            reply: id_tx,
        })
        .is_err()
    {
        return simple_response(503, "worker gone");
    }
    let Ok(id) = id_rx.await else {
        return simple_response(503, "worker gone");
    };
    let (parts, body) = req.into_parts();
    let eos = body.is_end_stream();
    let _ = wtx.send(WCmd::Headers {
        id,
        dir: Direction::Request,
        headers: to_proxy_headers(&parts),
        eos,
        served: None,
    });
    if !eos {
        // A client body that fails mid-way just stops: no end of stream is sent.
        tokio::spawn(pump_body(body, id, Direction::Request, wtx.clone(), false));
    }
    let (resp_tx, resp_rx) = oneshot::channel();
    tokio::spawn(drive_stream(id, wtx, ev_rx, resp_tx, sh));
    resp_rx.await.unwrap_or_else(|_| simple_response(502, "stream reset"))
}

type BodyTx = mpsc::UnboundedSender<Result<Frame<Bytes>, BodyError>>;

/// The body of a message the filter started to release: complete (`end`, with its length), or
/// a channel primed with what was released so far (its sender is returned).
fn released_body(body: Bytes, end: bool) -> (GwBody, Option<usize>, Option<BodyTx>) {
    if end {
        let n = body.len();
        return (GwBody::Full(Some(body)), Some(n), None);
    }
    let (tx, rx) = mpsc::unbounded_channel();
    if !body.is_empty() {
        let _ = tx.send(Ok(Frame::data(body)));
    }
    (GwBody::Chan(rx), None, Some(tx))
}

async fn drive_stream(
    id: StreamId,
    wtx: smpsc::Sender<WCmd>,
    mut ev_rx: mpsc::UnboundedReceiver<Ev>,
    resp_tx: oneshot::Sender<Response<GwBody>>,
    sh: Arc<ProxyState>,
) {
    let mut resp_tx = Some(resp_tx);
    // The body senders of the upstream request and of the client response.
    let mut body_tx: [Option<BodyTx>; 2] = [None, None];
    while let Some(ev) = ev_rx.recv().await {
        match ev {
            Ev::Start {
                dir,
                headers,
                body,
                end,
                original_dst,
            } => {
                let (b, len, tx) = released_body(body, end);
                body_tx[dir as usize] = tx;
                match dir {
                    Direction::Request => {
                        tokio::spawn(upstream_request(
                            id,
                            wtx.clone(),
                            headers,
                            original_dst,
                            b,
                            len,
                            sh.clone(),
                        ));
                    }
                    Direction::Response => {
                        if let Some(t) = resp_tx.take() {
                            let _ = t.send(client_response(&headers, b, len));
                        }
                        if end {
                            break;
                        }
                    }
                }
            }
            Ev::Data(dir, d) => {
                if let Some(tx) = &body_tx[dir as usize] {
                    let _ = tx.send(Ok(Frame::data(d)));
                }
            }
            Ev::End(dir) => {
                body_tx[dir as usize] = None;
                if dir == Direction::Response {
                    break;
                }
            }
            Ev::Reset => {
                if let Some(tx) = body_tx[Direction::Response as usize].take() {
                    let _ = tx.send(Err("stream reset by filter".into()));
                }
                body_tx[Direction::Request as usize] = None;
                break;
            }
        }
    }
    drop(body_tx);
    let _ = wtx.send(WCmd::Finish(id));
}

/// Feed a body to the worker, frame by frame, as `dir`'s body chunks and trailers. At its end
/// an empty end-of-stream chunk is sent; a failing body also gets one when `end_on_error`.
async fn pump_body(mut body: Incoming, id: StreamId, dir: Direction, wtx: smpsc::Sender<WCmd>, end_on_error: bool) {
    loop {
        match body.frame().await {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => {
                    let _ = wtx.send(WCmd::Body(id, dir, d, false));
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        let _ = wtx.send(WCmd::Trailers(id, dir, header_pairs(&t)));
                        return;
                    }
                }
            },
            Some(Err(_)) if !end_on_error => return,
            Some(Err(_)) | None => {
                let _ = wtx.send(WCmd::Body(id, dir, Bytes::new(), true));
                return;
            }
        }
    }
}

/// A hyper header map as name/value pairs, in order (names as hyper keeps them: lower-case).
fn header_pairs(h: &hyper::HeaderMap) -> Headers {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Filter state read by an ORIGINAL_DST cluster (docs/proxy-wasm.md#how-a-pick-reaches-the-router,
/// path 2).
pub(super) const ORIGINAL_DST_KEY: &str = "envoy.network.transport_socket.original_dst_address";

/// Endpoint candidates: the forwarded destination list (override_host header source, or
/// ORIGINAL_DST `use_http_header`), else the `original_dst_address` filter state, else the
/// route cluster's round-robin order.
fn candidates(sh: &ProxyState, headers: &Headers, original_dst: Option<&str>) -> Vec<String> {
    if let Some((_, v)) = headers.iter().find(|(k, _)| *k == sh.dest_header) {
        let list: Vec<String> = v
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if !list.is_empty() {
            return list;
        }
    }
    if let Some(dst) = original_dst {
        return vec![dst.to_string()];
    }
    let eps = sh.clusters.get(&sh.route_cluster).cloned().unwrap_or_default();
    if eps.is_empty() {
        return eps;
    }
    let start = sh.cluster_rr.fetch_add(1, Ordering::Relaxed) % eps.len();
    eps[start..].iter().chain(eps[..start].iter()).cloned().collect()
}

async fn connect_first(eps: &[String]) -> Option<(String, TcpStream)> {
    for ep in eps {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(ep.as_str())).await {
            return Some((ep.clone(), s));
        }
    }
    None
}

fn build_request(headers: &Headers, body: GwBody, full_len: Option<usize>) -> Option<Request<GwBody>> {
    let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut b = Request::builder()
        .method(get(":method").unwrap_or("GET"))
        .uri(get(":path").unwrap_or("/"));
    if let Some(a) = get(":authority") {
        b = b.header("host", a);
    }
    for (k, v) in headers {
        if k.starts_with(':') || HOP.contains(&k.as_str()) || k == "content-length" || k == "host" {
            continue;
        }
        b = b.header(k.as_str(), v.as_str());
    }
    if let Some(n) = full_len {
        b = b.header("content-length", n.to_string());
    }
    b.body(body).ok()
}

#[allow(clippy::too_many_arguments)]
async fn upstream_request(
    id: StreamId,
    wtx: smpsc::Sender<WCmd>,
    headers: Headers,
    original_dst: Option<String>,
    body: GwBody,
    full_len: Option<usize>,
    sh: Arc<ProxyState>,
) {
    let fail = |wtx: &smpsc::Sender<WCmd>, msg: &'static str| {
        // Router local reply: passes through the filter's response path like Envoy's.
        let h = vec![
            (":status".to_string(), "503".to_string()),
            ("content-type".to_string(), "text/plain".to_string()),
        ];
        let _ = wtx.send(WCmd::Headers {
            id,
            dir: Direction::Response,
            headers: h,
            eos: false,
            served: None,
        });
        let _ = wtx.send(WCmd::Body(
            id,
            Direction::Response,
            Bytes::from_static(msg.as_bytes()),
            true,
        ));
    };
    let eps = candidates(&sh, &headers, original_dst.as_deref());
    let Some((ep, tcp)) = connect_first(&eps).await else {
        fail(&wtx, "no healthy upstream");
        return;
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await else {
        fail(&wtx, "upstream connect error");
        return;
    };
    tokio::spawn(conn);
    let Some(req) = build_request(&headers, body, full_len) else {
        fail(&wtx, "bad request headers from filter");
        return;
    };
    let Ok(resp) = sender.send_request(req).await else {
        fail(&wtx, "upstream reset before response");
        return;
    };
    let (parts, rbody) = resp.into_parts();
    let mut h: Headers = vec![(":status".into(), parts.status.as_u16().to_string())];
    for (k, v) in &parts.headers {
        let k = k.as_str().to_ascii_lowercase();
        if HOP.contains(&k.as_str()) {
            continue;
        }
        h.push((k, String::from_utf8_lossy(v.as_bytes()).into_owned()));
    }
    let eos = rbody.is_end_stream();
    let _ = wtx.send(WCmd::Headers {
        id,
        dir: Direction::Response,
        headers: h,
        eos,
        served: Some(ep),
    });
    if eos {
        return;
    }
    // An upstream body that fails mid-way ends the response.
    pump_body(rbody, id, Direction::Response, wtx, true).await;
}

/// A real `dispatch_http_call`: one HTTP/1.1 request to the cluster's next endpoint.
pub(super) async fn http_callout(sh: &ProxyState, call: &PendingCall) -> CallResponse {
    let failed = CallResponse {
        fail: true,
        ..Default::default()
    };
    let eps = sh.clusters.get(&call.cluster).cloned().unwrap_or_default();
    let work = async {
        let (_, tcp) = connect_first(&eps).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.ok()?;
        tokio::spawn(conn);
        let n = call.body.len();
        let req = build_request(
            &call.headers,
            GwBody::Full(Some(Bytes::from(call.body.clone()))),
            Some(n),
        )?;
        let resp = sender.send_request(req).await.ok()?;
        let (parts, body) = resp.into_parts();
        let mut headers: Headers = vec![(":status".into(), parts.status.as_u16().to_string())];
        headers.extend(header_pairs(&parts.headers));
        let body = body.collect().await.ok()?.to_bytes();
        Some(CallResponse {
            headers,
            body: body.to_vec(),
            trailers: Vec::new(),
            fail: false,
        })
    };
    let r = if call.timeout_ms > 0 {
        tokio::time::timeout(Duration::from_millis(u64::from(call.timeout_ms)), work)
            .await
            .ok()
            .flatten()
    } else {
        work.await
    };
    r.unwrap_or(failed)
}
