//! Two minimal HTTP/1.1 clients, each over one kept-alive connection with a hard cap on the
//! bytes read; no pool, no DNS. Scrapes are plain HTTP (pods); pushes may use TLS (https://
//! gateways, [`Conn::with_tls`]).
//!
//! * [`ScrapeConn`], the hot path: `GET <metrics path>` to one pod, written and read in the
//!   calling task, the answer read into a buffer the connection keeps: one `send` and usually
//!   one `recv` per scrape, no other task. 256 pods every 50 ms are 5,120 requests a second.
//!   Through hyper's client each request crossed two tasks and a channel (the request to the
//!   connection task, the answer and its body back); one podsim pod fetched in a loop on the
//!   2-worker runtime cost 66–76 µs of CPU per request that way against 26 µs for a plain
//!   write and read, and in the 256-pod benchmark about a fifth of the collector's CPU
//!   samples were in hyper's client code and its task hand-offs.
//! * [`Conn`], hyper's low-level `client::conn`, for snapshot pushes (one request per interval
//!   per gateway, with a body and answers the 409 logic reads).
//!
//! [`ScrapeConn`] parses only what framing needs: the status line, `content-length`,
//! `transfer-encoding` and `connection` (RFC 9112 §6.3), and decodes `chunked` bodies in place.
//! It never panics on any answer (property-tested below, and fuzzed); a malformed answer is an
//! [`HttpError::Protocol`] and drops the connection. The framing is a sans-IO state machine
//! (`Framer`) that the socket code feeds with whatever each read returns, so the `framing`
//! fuzz target drives the same code over in-memory bytes split into reads of its choosing
//! ([`fuzz_logic`]).

use std::net::SocketAddr;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    #[error("i/o: {0}")]
    Io(std::io::Error),
    #[error("bad response: {0}")]
    Protocol(&'static str),
    #[error("bad request path {0:?} (visible ASCII only)")]
    Path(String),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
}

// === impl ScrapeConn ===

/// Most bytes of a response head (status line and headers).
const MAX_HEAD: usize = 64 << 10;
/// Most bytes of one chunk-size line (with extensions) or of the trailer section.
const MAX_CHUNK_META: usize = 4 << 10;
/// Spare room offered to each `read`: one read takes a typical exposition whole.
const READ_SIZE: usize = 16 << 10;

/// A kept-alive HTTP/1.1 connection that sends `GET path` to one `ip:port`, re-established on
/// error. The request bytes are built once, and the answer is read into a buffer kept across
/// requests.
pub struct ScrapeConn {
    addr: SocketAddr,
    /// The whole request, or the path that cannot be sent.
    request: Result<Box<[u8]>, String>,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// A request was started and not finished (its future was dropped, e.g. by a timeout):
    /// the stream may hold the rest of that answer, so the next request reconnects.
    in_flight: bool,
}

/// An answer to [`ScrapeConn::get`]; the body borrows the connection's buffer.
#[derive(Debug)]
pub struct ScrapeResponse<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

impl ScrapeResponse<'_> {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

impl ScrapeConn {
    /// `path` must be visible ASCII (it goes into the request line as is); otherwise every
    /// request fails with [`HttpError::Path`].
    pub fn new(addr: SocketAddr, path: &str) -> Self {
        let request = if path.starts_with('/') && path.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(
                format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/plain\r\n\r\n")
                    .into_bytes()
                    .into_boxed_slice(),
            )
        } else {
            Err(path.to_string())
        };
        ScrapeConn {
            addr,
            request,
            stream: None,
            buf: Vec::new(),
            in_flight: false,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends the request and reads the answer, at most `max_bytes` of body. On any error the
    /// connection is dropped so that the next call starts clean. A kept-alive connection that
    /// the server closed while idle is retried once on a new one (the request is a GET).
    pub async fn get(&mut self, max_bytes: usize) -> Result<ScrapeResponse<'_>, HttpError> {
        let request = match &self.request {
            Ok(r) => &r[..],
            Err(p) => return Err(HttpError::Path(p.clone())),
        };
        if std::mem::take(&mut self.in_flight) {
            self.stream = None;
        }
        let mut reused = self.stream.is_some();
        let answer = loop {
            let stream = match &mut self.stream {
                Some(s) => s,
                None => {
                    let s = TcpStream::connect(self.addr).await.map_err(HttpError::Connect)?;
                    let _ = s.set_nodelay(true);
                    self.stream.insert(s)
                }
            };
            self.in_flight = true;
            let r = exchange(stream, request, &mut self.buf, max_bytes).await;
            self.in_flight = false;
            match r {
                Ok(a) => break a,
                Err(Exchange::Stale) if reused => {
                    self.stream = None;
                    reused = false;
                }
                Err(e) => {
                    self.stream = None;
                    return Err(e.into());
                }
            }
        };
        if !answer.keep_alive {
            self.stream = None;
        }
        let body = self.buf.get(answer.body).unwrap_or_default();
        Ok(ScrapeResponse {
            status: answer.status,
            body,
        })
    }
}

/// Why one request/answer exchange failed.
#[derive(Debug)]
enum Exchange {
    /// The connection was closed or reset before any byte of the answer: on a kept-alive
    /// connection, the server closed it while idle.
    Stale,
    Failed(HttpError),
}

impl From<HttpError> for Exchange {
    fn from(e: HttpError) -> Self {
        Exchange::Failed(e)
    }
}

impl From<Exchange> for HttpError {
    fn from(e: Exchange) -> Self {
        match e {
            Exchange::Stale => HttpError::Protocol("connection closed before the answer"),
            Exchange::Failed(e) => e,
        }
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    /// Where the (decoded) body is in the buffer.
    body: Range<usize>,
    keep_alive: bool,
}

/// How the body's end is found (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    Close,
}

#[derive(Debug, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of the head, blank line included.
    len: usize,
    framing: Framing,
    keep_alive: bool,
}

/// Reads more bytes at the end of `buf`; 0 means the peer closed. `limit` bounds the buffer.
async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>, limit: usize) -> Result<usize, HttpError> {
    let room = limit.saturating_sub(buf.len());
    if room == 0 {
        return Err(HttpError::Protocol("answer exceeds its limit"));
    }
    buf.reserve(room.min(READ_SIZE));
    let spare = buf.capacity() - buf.len();
    // `take` stops a read at the limit even when the allocator gave more room.
    let mut limited = (&mut *stream).take(spare.min(room) as u64);
    limited.read_buf(buf).await.map_err(HttpError::Io)
}

/// One request and its answer on `stream`; the answer is read into `buf` (cleared first). The
/// framing is [`Framer`]'s; this only moves bytes between it and the stream.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    buf: &mut Vec<u8>,
    max_bytes: usize,
) -> Result<Answer, Exchange> {
    let stale = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::ConnectionAborted => Exchange::Stale,
        _ => Exchange::Failed(HttpError::Io(e)),
    };
    stream.write_all(request).await.map_err(stale)?;
    buf.clear();
    let mut framer = Framer::new(max_bytes);
    loop {
        let limit = match framer.advance(buf)? {
            Step::Done(answer) => return Ok(answer),
            Step::Read { limit } => limit,
        };
        match read_more(stream, buf, limit).await {
            Ok(0) => return framer.closed(buf),
            Ok(_) => {}
            Err(HttpError::Io(e)) if framer.nothing_read(buf) => return Err(stale(e)),
            Err(e) => return Err(e.into()),
        }
    }
}

/// What [`Framer::advance`] needs next.
#[derive(Debug)]
enum Step {
    /// More bytes appended to the buffer, which must then hold at most `limit` bytes (`limit`
    /// is always above the buffer's length). A read of 0 bytes goes to [`Framer::closed`].
    Read { limit: usize },
    /// The whole answer is in the buffer.
    Done(Answer),
}

/// Where a chunked body is: decoded bytes are `buf[start..out]`, raw bytes not yet decoded
/// are `buf[pos..]`.
#[derive(Clone, Copy, Debug)]
enum Chunk {
    /// Reading a chunk-size line; `compacted` once the raw tail was moved down for it.
    Size { compacted: bool },
    /// Reading `size` bytes of chunk data and their CRLF.
    Data { size: usize },
    /// After the last chunk: trailer fields up to an empty line.
    Trailer,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Head,
    Length {
        status: u16,
        keep_alive: bool,
        start: usize,
        end: usize,
    },
    Close {
        status: u16,
        start: usize,
    },
    Chunked {
        status: u16,
        keep_alive: bool,
        start: usize,
        out: usize,
        pos: usize,
        at: Chunk,
    },
}

/// The answer's framing, without I/O (sans-IO): the caller reads into the buffer whatever the
/// stream gives, up to the limit each [`Step::Read`] names, and calls [`Framer::advance`]
/// again (or [`Framer::closed`] when the peer closed). How the bytes are split into reads
/// never changes the status or the body, only whether bytes past the answer were read (then
/// the connection is not reused). Chunked bodies are decoded in place, so the buffer never
/// holds more than the head, the decoded body and the chunk being read.
#[derive(Debug)]
struct Framer {
    max_bytes: usize,
    state: State,
}

impl Framer {
    fn new(max_bytes: usize) -> Self {
        Framer {
            max_bytes,
            state: State::Head,
        }
    }

    /// Whether an I/O error now means that the server had closed the connection while idle:
    /// nothing of the answer was read yet.
    fn nothing_read(&self, buf: &[u8]) -> bool {
        matches!(self.state, State::Head) && buf.is_empty()
    }

    /// Parses what `buf` holds as far as it goes.
    fn advance(&mut self, buf: &mut Vec<u8>) -> Result<Step, Exchange> {
        let max_bytes = self.max_bytes;
        let too_large = || Exchange::Failed(HttpError::TooLarge(max_bytes));
        // Reads more, up to `limit`; a limit the buffer already reached is an error (no read
        // could make progress): a body over the cap without framing, else a broken answer.
        let read = |buf: &[u8], limit: usize, close: bool| {
            if limit > buf.len() {
                Ok(Step::Read { limit })
            } else if close {
                Err(too_large())
            } else {
                Err(HttpError::Protocol("answer exceeds its limit").into())
            }
        };
        loop {
            match self.state {
                State::Head => {
                    let Some(h) = parse_head(buf).map_err(HttpError::Protocol)? else {
                        return read(buf, MAX_HEAD + 1, false);
                    };
                    // Interim (1xx) answers are skipped.
                    if (100..200).contains(&h.status) {
                        if h.status == 101 {
                            return Err(HttpError::Protocol("unexpected 101 Switching Protocols").into());
                        }
                        buf.drain(..h.len);
                        continue;
                    }
                    let (status, start, keep_alive) = (h.status, h.len, h.keep_alive);
                    self.state = match h.framing {
                        Framing::Length(n) => {
                            let n = usize::try_from(n)
                                .ok()
                                .filter(|n| *n <= max_bytes)
                                .ok_or_else(too_large)?;
                            State::Length {
                                status,
                                keep_alive,
                                start,
                                end: start + n,
                            }
                        }
                        Framing::Close => State::Close { status, start },
                        Framing::Chunked => State::Chunked {
                            status,
                            keep_alive,
                            start,
                            out: start,
                            pos: start,
                            at: Chunk::Size { compacted: false },
                        },
                    };
                }
                State::Length {
                    status,
                    keep_alive,
                    start,
                    end,
                } => {
                    if buf.len() < end {
                        return read(buf, end, false);
                    }
                    return Ok(Step::Done(Answer {
                        status,
                        body: start..end,
                        // Bytes past the body were never asked for: the connection is out of step.
                        keep_alive: keep_alive && buf.len() == end,
                    }));
                }
                State::Close { start, .. } => {
                    // Saturating: `--max-scrape-bytes` may be as large as usize::MAX.
                    return read(buf, start.saturating_add(max_bytes).saturating_add(1), true);
                }
                State::Chunked {
                    status,
                    keep_alive,
                    start,
                    ref mut out,
                    ref mut pos,
                    ref mut at,
                } => match *at {
                    Chunk::Size { ref mut compacted } => {
                        let Some((used, size)) =
                            parse_chunk_size(buf.get(*pos..).unwrap_or_default()).map_err(HttpError::Protocol)?
                        else {
                            // Before waiting for more, the raw tail moves down to `out`, so the
                            // buffer never holds more than the decoded body plus this chunk.
                            if !std::mem::replace(compacted, true) {
                                compact(buf, *out, pos);
                            }
                            return read(buf, *pos + MAX_CHUNK_META + 2, false);
                        };
                        *pos += used;
                        if size == 0 {
                            *at = Chunk::Trailer;
                            continue;
                        }
                        let size = usize::try_from(size)
                            .ok()
                            .filter(|s| *out - start + s <= max_bytes)
                            .ok_or_else(too_large)?;
                        if buf.len() < *pos + size + 2 {
                            compact(buf, *out, pos);
                        }
                        *at = Chunk::Data { size };
                    }
                    Chunk::Data { size } => {
                        if buf.len() < *pos + size + 2 {
                            // This chunk, its CRLF, and room for the next chunk-size line.
                            return read(buf, *pos + size + 2 + MAX_CHUNK_META, false);
                        }
                        if !matches!(buf.get(*pos + size..*pos + size + 2), Some(b"\r\n")) {
                            return Err(HttpError::Protocol("chunk not followed by CRLF").into());
                        }
                        buf.copy_within(*pos..*pos + size, *out);
                        *out += size;
                        *pos += size + 2;
                        *at = Chunk::Size { compacted: false };
                    }
                    // Trailer fields, up to an empty line; they are not used.
                    Chunk::Trailer => {
                        let Some(used) =
                            trailer_len(buf.get(*pos..).unwrap_or_default()).map_err(HttpError::Protocol)?
                        else {
                            return read(buf, *pos + MAX_CHUNK_META + 2, false);
                        };
                        return Ok(Step::Done(Answer {
                            status,
                            body: start..*out,
                            keep_alive: keep_alive && buf.len() == *pos + used,
                        }));
                    }
                },
            }
        }
    }

    /// The peer closed the connection (a read gave 0 bytes).
    fn closed(&self, buf: &[u8]) -> Result<Answer, Exchange> {
        let what = match self.state {
            State::Head if buf.is_empty() => return Err(Exchange::Stale),
            State::Head => "connection closed in the answer's head",
            State::Length { .. } => "connection closed in the body",
            State::Close { status, start } => {
                if buf.len() > start.saturating_add(self.max_bytes) {
                    return Err(Exchange::Failed(HttpError::TooLarge(self.max_bytes)));
                }
                return Ok(Answer {
                    status,
                    body: start..buf.len(),
                    keep_alive: false,
                });
            }
            State::Chunked { at, .. } => match at {
                Chunk::Size { .. } => "connection closed in a chunked body",
                Chunk::Data { .. } => "connection closed in a chunk",
                Chunk::Trailer => "connection closed in the trailer",
            },
        };
        Err(HttpError::Protocol(what).into())
    }
}

/// Moves the raw bytes `buf[pos..]` down to `out` (decoded bytes end at `out`).
fn compact(buf: &mut Vec<u8>, out: usize, pos: &mut usize) {
    let tail = buf.len() - *pos;
    buf.copy_within(*pos.., out);
    buf.truncate(out + tail);
    *pos = out;
}

/// Splits off the first line (without its `\n` and an optional `\r`); None if no `\n` yet.
fn line(buf: &[u8]) -> Option<(&[u8], usize)> {
    let nl = buf.iter().position(|&b| b == b'\n')?;
    let l = buf.get(..nl)?;
    Some((l.strip_suffix(b"\r").unwrap_or(l), nl + 1))
}

/// RFC 9110 `tchar`.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Comma-separated list elements, trimmed, empty ones skipped.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows).filter(|e| !e.is_empty())
}

/// Parses the response head at the start of `buf`: Ok(None) until it is complete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, &'static str> {
    let Some((status_line, mut at)) = line(buf) else {
        return if buf.len() > MAX_HEAD {
            Err("head too large")
        } else {
            Ok(None)
        };
    };
    // HTTP/1.x SP 3DIGIT [SP reason]
    let (minor, status) = match status_line {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor @ (b'0' | b'1'), b' ', a, b, c, rest @ ..]
            if a.is_ascii_digit()
                && b.is_ascii_digit()
                && c.is_ascii_digit()
                && matches!(rest.first(), None | Some(b' ')) =>
        {
            let code = (*a - b'0') as u16 * 100 + (*b - b'0') as u16 * 10 + (*c - b'0') as u16;
            (*minor, code)
        }
        _ => return Err("bad status line"),
    };
    let (mut length, mut chunked, mut close, mut keep_alive_token) = (None::<u64>, None::<bool>, false, false);
    loop {
        let Some((field, used)) = line(buf.get(at..).unwrap_or_default()) else {
            return if buf.len() > MAX_HEAD {
                Err("head too large")
            } else {
                Ok(None)
            };
        };
        at += used;
        if field.is_empty() {
            break;
        }
        let colon = field.iter().position(|&b| b == b':').ok_or("header without ':'")?;
        let (name, value) = (
            field.get(..colon).unwrap_or_default(),
            trim_ows(field.get(colon + 1..).unwrap_or_default()),
        );
        // A name must be a token: this also rejects obs-fold (a line starting with a blank).
        if !is_token(name) {
            return Err("bad header name");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let digits = (!value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit))
                .then_some(value)
                .ok_or("bad content-length")?;
            let n = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length");
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Only the last coding decides whether the body is chunked.
            if let Some(last) = list(value).last() {
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for t in list(value) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive_token |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let mut keep_alive = !close && (minor == b'1' || keep_alive_token);
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else if let Some(chunked) = chunked {
        // Transfer-Encoding overrides Content-Length; a message with both is suspect, so its
        // connection is not reused.
        keep_alive &= length.is_none();
        if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else {
        length.map_or(Framing::Close, Framing::Length)
    };
    Ok(Some(Head {
        status,
        len: at,
        framing,
        keep_alive,
    }))
}

/// The first `MAX_CHUNK_META + 1` bytes of `buf`: a chunk-size line or trailer section must
/// end within them. Looking further would accept a longer one whenever it happened to arrive in
/// the same read as what came before it, and refuse it when it arrived in smaller reads.
fn meta_window(buf: &[u8]) -> &[u8] {
    buf.get(..MAX_CHUNK_META + 1).unwrap_or(buf)
}

/// Parses a chunk-size line (`1*HEXDIG [ext] CRLF`): Ok(Some((line length, size))), Ok(None)
/// until the line is complete.
fn parse_chunk_size(buf: &[u8]) -> Result<Option<(usize, u64)>, &'static str> {
    let Some((l, used)) = line(meta_window(buf)) else {
        return if buf.len() > MAX_CHUNK_META {
            Err("chunk-size line too long")
        } else {
            Ok(None)
        };
    };
    let digits = l.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err("bad chunk size");
    }
    // After the size: nothing, or blanks and/or a `;` extension (ignored).
    match trim_ows(l.get(digits..).unwrap_or_default()).first() {
        None | Some(b';') => {}
        Some(_) => return Err("bad chunk size"),
    }
    let size = l
        .get(..digits)
        .unwrap_or_default()
        .iter()
        .fold(0u64, |n, d| n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0)));
    Ok(Some((used, size)))
}

/// Length of the trailer section (fields up to and including an empty line), or Ok(None) if
/// it is not complete yet.
fn trailer_len(buf: &[u8]) -> Result<Option<usize>, &'static str> {
    let window = meta_window(buf);
    let mut at = 0;
    loop {
        let Some((l, used)) = line(window.get(at..).unwrap_or_default()) else {
            return if buf.len() > MAX_CHUNK_META {
                Err("trailer too long")
            } else {
                Ok(None)
            };
        };
        at += used;
        if l.is_empty() {
            return Ok(Some(at));
        }
    }
}

/// The framing fuzz target (`fuzz/fuzz_targets/http_framing.rs`) and the unit tests that
/// replay its seeds: not a public API.
#[doc(hidden)]
pub mod fuzz_logic {
    use super::{Framer, HttpError, Step, MAX_CHUNK_META, MAX_HEAD};

    /// (status, body, keep-alive), or the error's text.
    pub type Outcome = Result<(u16, Vec<u8>, bool), String>;

    /// Most bytes the scrape buffer may hold for a body cap of `max_bytes`: the head (its
    /// reads stop at `MAX_HEAD + 1`), the body, and one chunk-size line or trailer section on
    /// each side of a chunk's data.
    pub fn buffer_bound(max_bytes: usize) -> usize {
        max_bytes.saturating_add(MAX_HEAD + 1 + 2 * (MAX_CHUNK_META + 2))
    }

    /// Feeds `answer` to the framer as a socket would, in reads of the sizes `reads` names
    /// (cycled; 0, or an empty list, takes all the room the framer offers), the peer closing
    /// after the last byte. Returns the outcome and the most bytes the buffer held. Panics if
    /// the framer asks for a read that could not make progress.
    pub fn frame(answer: &[u8], reads: &[usize], max_bytes: usize) -> (Outcome, usize) {
        let mut buf = Vec::new();
        let mut framer = Framer::new(max_bytes);
        let (mut rest, mut peak, mut next) = (answer, 0, 0);
        let r = loop {
            let limit = match framer.advance(&mut buf) {
                Ok(Step::Done(a)) => break Ok(a),
                Ok(Step::Read { limit }) => limit,
                Err(e) => break Err(e),
            };
            assert!(limit > buf.len(), "a read up to {limit} with {} bytes held", buf.len());
            let room = limit - buf.len();
            let size = reads.get(next % reads.len().max(1)).copied().unwrap_or(0);
            next += 1;
            let n = if size == 0 { room } else { size.min(room) }.min(rest.len());
            if n == 0 {
                break framer.closed(&buf);
            }
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            peak = peak.max(buf.len());
        };
        let outcome = match r {
            Ok(a) => {
                let body = buf
                    .get(a.body.clone())
                    .unwrap_or_else(|| panic!("body {:?} outside the buffer", a.body));
                Ok((a.status, body.to_vec(), a.keep_alive))
            }
            Err(e) => Err(HttpError::from(e).to_string()),
        };
        (outcome, peak)
    }

    /// Caps the fuzz input's first byte selects: tiny, typical (`--max-scrape-bytes` defaults
    /// to 1 MiB) and the largest `--max-scrape-bytes` accepts.
    pub const CAPS: [usize; 10] = [0, 1, 16, 100, 1000, 4096, 65536, 1 << 20, 64 << 20, usize::MAX];

    /// One fuzz input: byte 0 picks the cap ([`CAPS`], modulo), byte 1's low 3 bits give the
    /// number of read sizes that follow (one byte each, 0 = all the room offered), bit 3 adds
    /// chunk extensions and a trailer, bit 4 makes the rest a body to frame three ways
    /// ([`check_body`], chunk sizes = the read sizes) instead of a whole answer
    /// ([`check_answer`]).
    pub fn run(input: &[u8]) {
        let [cap, flags, rest @ ..] = input else { return };
        let n = usize::from(flags & 7).min(rest.len());
        let (sizes, data) = rest.split_at(n);
        let reads: Vec<usize> = sizes.iter().map(|&b| usize::from(b)).collect();
        let max_bytes = CAPS[usize::from(*cap) % CAPS.len()];
        if flags & 16 == 0 {
            let _ = check_answer(data, &reads, max_bytes);
        } else {
            check_body(data, &reads, flags & 8 != 0, &reads, max_bytes);
        }
    }

    /// Checks the framing contracts on one answer read in pieces of `reads`; panics when one
    /// fails. Returns the outcome.
    pub fn check_answer(answer: &[u8], reads: &[usize], max_bytes: usize) -> Outcome {
        let (outcome, peak) = frame(answer, reads, max_bytes);
        assert!(
            peak <= buffer_bound(max_bytes),
            "buffer held {peak} bytes, cap {max_bytes}"
        );
        if let Ok((status, body, _)) = &outcome {
            assert!(
                body.len() <= max_bytes,
                "a body of {} bytes over the cap {max_bytes}",
                body.len()
            );
            assert!(
                !(100..200).contains(status),
                "an interim answer {status} returned as the answer"
            );
        }
        // How the bytes were split into reads changes nothing but connection reuse, and
        // reading less never makes a connection unusable that reading more would keep.
        let (whole, _) = frame(answer, &[], max_bytes);
        match (&outcome, &whole) {
            (Ok((s, b, keep)), Ok((ws, wb, wkeep))) => {
                assert_eq!((s, b), (ws, wb), "the split changed the answer");
                assert!(*keep || !*wkeep, "kept alive when read whole, not when split");
            }
            _ => assert_eq!(outcome, whole, "the split changed the outcome"),
        }
        outcome
    }

    /// The three framings of `body` (content-length; chunked in pieces of `chunks` sizes,
    /// cycled, with extensions and a trailer when `ext`; until close) each decode to exactly
    /// `body`, or fail as too large when it is over `max_bytes`, whatever the reads.
    pub fn check_body(body: &[u8], chunks: &[usize], ext: bool, reads: &[usize], max_bytes: usize) {
        let mut chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        let (mut rest, mut i) = (body, 0);
        while !rest.is_empty() {
            let size = chunks.get(i % chunks.len().max(1)).copied().unwrap_or(rest.len());
            i += 1;
            let (now, later) = rest.split_at(size.clamp(1, rest.len()));
            chunked.extend_from_slice(format!("{:x}{}\r\n", now.len(), if ext { ";a=\"b\"" } else { "" }).as_bytes());
            chunked.extend_from_slice(now);
            chunked.extend_from_slice(b"\r\n");
            rest = later;
        }
        chunked.extend_from_slice(if ext { b"0\r\nx-t: 1\r\n\r\n" } else { b"0\r\n\r\n" });
        let length = [
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
            body,
        ]
        .concat();
        let close = [&b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"[..], body].concat();
        for (answer, keep) in [(length, true), (chunked, true), (close, false)] {
            let outcome = check_answer(&answer, reads, max_bytes);
            if body.len() <= max_bytes {
                assert_eq!(outcome, Ok((200, body.to_vec(), keep)));
            } else {
                assert_eq!(outcome, Err(HttpError::TooLarge(max_bytes).to_string()));
            }
        }
    }
}

// === impl Conn ===

/// One hyper connection to one `ip:port`, re-established on error (pushes).
pub struct Conn {
    addr: SocketAddr,
    /// TLS (https:// gateways): the connector and the server name to check.
    tls: Option<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)>,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// A connection's byte stream: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub struct Response {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        Conn {
            addr,
            tls: None,
            sender: None,
        }
    }

    /// A connection that speaks TLS to `addr`, checking the certificate for `tls.1`.
    pub fn with_tls(
        addr: SocketAddr,
        tls: Option<(tokio_rustls::TlsConnector, rustls_pki_types::ServerName<'static>)>,
    ) -> Self {
        Conn {
            addr,
            tls,
            sender: None,
        }
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
            let io: Box<dyn Io> = match &self.tls {
                None => Box::new(stream),
                Some((connector, name)) => {
                    Box::new(connector.connect(name.clone(), stream).await.map_err(HttpError::Tls)?)
                }
            };
            let (sender, conn) = http1::handshake(TokioIo::new(io)).await?;
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
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
