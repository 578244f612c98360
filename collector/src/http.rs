//! A minimal HTTP/1.1 client over one kept-alive connection (scrapes and pushes), with a hard
//! cap on the bytes read. hyper's low-level `client::conn` keeps per-request cost to a write
//! and a read: no pool, no DNS, no TLS (pods and the gateway sidecar are plain HTTP).

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("bad request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("timed out")]
    Timeout,
}

/// One connection to one `ip:port`, re-established on error.
pub struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Conn { addr, sender: None }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn sender(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, HttpError> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            let stream = TcpStream::connect(self.addr).await.map_err(HttpError::Connect)?;
            let _ = stream.set_nodelay(true);
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            self.sender = Some(sender);
        }
        // Just set above when it was None.
        self.sender.as_mut().ok_or(HttpError::Timeout)
    }

    /// Sends `req` and reads at most `max_bytes` of the answer. On any error the connection is
    /// dropped so that the next call starts clean.
    pub async fn send(&mut self, req: Request<Full<Bytes>>, max_bytes: usize) -> Result<Response, HttpError> {
        let r = self.send_inner(req, max_bytes).await;
        if r.is_err() {
            self.sender = None;
        }
        r
    }

    async fn send_inner(&mut self, req: Request<Full<Bytes>>, max_bytes: usize) -> Result<Response, HttpError> {
        let sender = self.sender().await?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let declared = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_bytes as u64) {
            return Err(HttpError::TooLarge(max_bytes));
        }
        let mut body = resp.into_body();
        let mut buf = BytesMut::with_capacity(declared.map_or(8192, |n| n as usize));
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > max_bytes {
                    return Err(HttpError::TooLarge(max_bytes));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Response {
            status,
            body: buf.freeze(),
        })
    }

    /// `GET path` with `Host: ip:port`.
    pub async fn get(&mut self, path: &str, max_bytes: usize) -> Result<Response, HttpError> {
        let req = Request::get(path)
            .header(hyper::header::HOST, self.addr.to_string())
            .header(hyper::header::ACCEPT, "text/plain")
            .body(Full::new(Bytes::new()))?;
        self.send(req, max_bytes).await
    }
}
