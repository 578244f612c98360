//! Pushing snapshots to gateways: one task per gateway URL, fed by a watch channel (latest
//! snapshot wins, so a slow or failing gateway never holds up scraping or the other gateways).
//!
//! Protocol (filter side: `filter/src/shared.rs` `validate_push`, `IntakeError`):
//! `POST <url>` with `authorization: Bearer <token>`, `content-type: application/octet-stream`,
//! body = `Snapshot::encode()`. Answers: 204 stored; 401 bad token; 403 source not allowed;
//! 400 invalid; 409 the gateway holds the same or a newer sequence; 413 too large.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use picker_core::snapshot::Snapshot;
use tokio::sync::{mpsc, watch};

use crate::collector::Sequence;
use crate::http::Conn;
use crate::metrics::Metrics;
use crate::tls::TlsClient;

pub const DEFAULT_PATH: &str = "/.well-known/wasm-epp/snapshot";
/// Most bytes read from a gateway's answer.
const MAX_ANSWER: usize = 64 << 10;
const PUSH_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// One snapshot as published by the scrape loop.
#[derive(Debug)]
pub struct Published {
    pub sequence: u64,
    pub encoded: Bytes,
    /// The snapshot itself; JSON is rendered from it only when `/snapshot?format=json` asks.
    pub snapshot: Snapshot,
    pub ready: usize,
    /// When the last scrape of the round that produced it finished.
    pub last_scrape: Instant,
}

/// A parsed `http[s]://host:port/path` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushUrl {
    pub host: String,
    pub port: u16,
    pub path: String,
    /// https: TLS, the certificate checked against `--push-ca`.
    pub tls: bool,
}

impl PushUrl {
    /// The same gateway's relay path: `<path>/relay`.
    pub fn relay(&self) -> PushUrl {
        PushUrl {
            path: format!("{}/relay", self.path.trim_end_matches('/')),
            ..self.clone()
        }
    }
}

impl std::fmt::Display for PushUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

pub fn parse_url(u: &str) -> Result<PushUrl, String> {
    let (tls, rest) = if let Some(r) = u.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = u.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("only http:// and https:// URLs are supported".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, DEFAULT_PATH),
    };
    let (host, port) = if let Some(h) = authority.strip_prefix('[') {
        let (h, p) = h.split_once(']').ok_or("unclosed '['")?;
        (h, p.strip_prefix(':').unwrap_or(""))
    } else {
        authority.rsplit_once(':').unwrap_or((authority, ""))
    };
    let port = if port.is_empty() {
        if tls {
            443
        } else {
            80
        }
    } else {
        port.parse::<u16>().map_err(|_| "bad port")?
    };
    if host.is_empty() || port == 0 {
        return Err("missing host or port".into());
    }
    Ok(PushUrl {
        host: host.to_string(),
        port,
        path: path.to_string(),
        tls,
    })
}

/// Reads the stored sequence out of the filter's 409 message
/// ("stale snapshot: sequence P is not newer than S").
pub fn stored_sequence_from_409(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let i = text.find("is not newer than ")? + "is not newer than ".len();
    let digits: String = text[i..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Settings shared by all push tasks.
#[derive(Clone)]
pub struct PushContext {
    pub token: Arc<str>,
    pub sequence: Arc<Sequence>,
    pub metrics: Arc<Metrics>,
    /// Benchmark hook: (push latency, last scrape → push done) per successful push.
    pub on_pushed: Option<mpsc::UnboundedSender<(Duration, Duration)>>,
    /// The client side of https:// gateways (`--push-ca`).
    pub tls: Option<Arc<TlsClient>>,
}

impl PushContext {
    /// A connection to `url` (resolved to `addr`): TLS for https://.
    pub fn conn(&self, url: &PushUrl, addr: SocketAddr) -> Result<Conn, String> {
        if !url.tls {
            return Ok(Conn::new(addr));
        }
        let tls = self
            .tls
            .as_ref()
            .ok_or("an https:// gateway needs --push-ca")?
            .for_host(&url.host)?;
        Ok(Conn::with_tls(addr, Some(tls)))
    }
}

pub async fn resolve(url: &PushUrl) -> Option<SocketAddr> {
    if let Ok(ip) = url.host.parse::<std::net::IpAddr>() {
        return Some(SocketAddr::new(ip, url.port));
    }
    tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .ok()?
        .next()
}

/// Pushes every new snapshot from `rx` to `url` until `rx` closes.
pub async fn push_loop(url: PushUrl, mut rx: watch::Receiver<Option<Arc<Published>>>, ctx: PushContext) {
    let label = url.to_string();
    let mut conn: Option<Conn> = None;
    let mut backoff = BACKOFF_MIN;
    let mut last_status: Option<String> = None;
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        loop {
            let Some(snap) = rx.borrow_and_update().clone() else {
                break;
            };
            let outcome = push_once(&url, &mut conn, &snap, &ctx).await;
            let (status, changed) = count_outcome(&ctx, &label, &outcome, &last_status);
            match outcome {
                Ok(204) | Ok(200) => {
                    if changed && last_status.is_some() {
                        tracing::info!(url = %label, "gateway accepts snapshots again");
                    }
                    backoff = BACKOFF_MIN;
                    last_status = Some(status);
                    break;
                }
                Ok(409) => {
                    // The gateway already holds a newer snapshot (another collector, or our own
                    // previous life): renumber past it; the next round pushes a newer one.
                    tracing::debug!(url = %label, sequence = snap.sequence, "gateway has a newer snapshot (409)");
                    last_status = Some(status);
                    break;
                }
                Ok(code) => {
                    if changed {
                        tracing::warn!(url = %label, status = code, sequence = snap.sequence, "gateway rejected snapshot");
                    }
                    last_status = Some(status);
                }
                Err(e) => {
                    if changed {
                        tracing::warn!(url = %label, error = %e, "snapshot push failed");
                    }
                    last_status = Some(status);
                }
            }
            // Retry with backoff, with whatever snapshot is newest by then.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            if rx.has_changed().is_err() {
                return;
            }
        }
    }
}

/// Counts one POST's outcome in `collector_pushes_total` (the HTTP code, or `error`) and tells
/// whether it differs from the previous one (`last`), so that callers log changes only.
pub(crate) fn count_outcome(
    ctx: &PushContext,
    label: &str,
    outcome: &Result<u16, String>,
    last: &Option<String>,
) -> (String, bool) {
    let status = match outcome {
        Ok(code) => code.to_string(),
        Err(_) => "error".to_string(),
    };
    ctx.metrics.push_result(label, &status);
    let changed = last.as_deref() != Some(status.as_str());
    (status, changed)
}

/// One POST of `body` to `url` with the bearer `token`, over the kept connection (opened if
/// needed, dropped on any transport error or timeout so the next call reconnects). Shared by
/// snapshot pushes and relay bundles.
pub(crate) async fn post_once(
    url: &PushUrl,
    conn: &mut Option<Conn>,
    body: Bytes,
    token: &str,
    ctx: &PushContext,
) -> Result<crate::http::Response, String> {
    if conn.is_none() {
        let addr = resolve(url)
            .await
            .ok_or_else(|| format!("cannot resolve {}", url.host))?;
        *conn = Some(ctx.conn(url, addr)?);
    }
    let c = conn.as_mut().ok_or("no connection")?;
    let host = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let req = Request::post(url.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(PUSH_TIMEOUT, c.send(req, MAX_ANSWER)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => {
            *conn = None;
            Err(e.to_string())
        }
        Err(_) => {
            *conn = None;
            Err("timed out".into())
        }
    }
}

async fn push_once(url: &PushUrl, conn: &mut Option<Conn>, snap: &Published, ctx: &PushContext) -> Result<u16, String> {
    let t0 = Instant::now();
    let resp = post_once(url, conn, snap.encoded.clone(), &ctx.token, ctx).await?;
    let code = resp.status.as_u16();
    if resp.status.is_success() {
        let latency = t0.elapsed();
        let delay = snap.last_scrape.elapsed();
        ctx.metrics.push_latency.observe(latency);
        ctx.metrics.scrape_to_push.observe(delay);
        if let Some(h) = &ctx.on_pushed {
            let _ = h.send((latency, delay));
        }
    } else if code == 409 {
        if let Some(stored) = stored_sequence_from_409(&resp.body) {
            ctx.sequence.bump_past(stored);
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("http://127.0.0.1:8080/.well-known/wasm-epp/snapshot").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, DEFAULT_PATH)
        );
        let u = parse_url("http://[::1]:9000").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 9000, DEFAULT_PATH));
        assert_eq!(u.to_string(), "http://[::1]:9000/.well-known/wasm-epp/snapshot");
        let u = parse_url("https://gw.example:8443/in").unwrap();
        assert!(u.tls);
        assert_eq!(u.to_string(), "https://gw.example:8443/in");
        assert_eq!(u.relay().to_string(), "https://gw.example:8443/in/relay");
        assert_eq!(parse_url("https://gw").unwrap().port, 443);
        assert!(parse_url("ftp://x:1/").is_err());
        assert!(parse_url("http://:1/").is_err());
        assert!(parse_url("http://x:99999/").is_err());
    }

    #[test]
    fn reads_stored_sequence_from_the_filters_409_body() {
        let body =
            br#"{"error":{"message":"stale snapshot: sequence 5 is not newer than 1234567","type":"x","code":409}}"#;
        assert_eq!(stored_sequence_from_409(body), Some(1234567));
        assert_eq!(stored_sequence_from_409(b"nope"), None);
    }
}
