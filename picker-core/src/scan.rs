//! One-pass request scanner for OpenAI-style bodies.
//!
//! [`scan`] walks the body bytes once, validates them as JSON (RFC 8259: structure, string
//! escapes, control characters, UTF-8, number grammar), and extracts what routing needs:
//!
//! * `model`: decoded (escapes resolved), any key order, any whitespace; the last occurrence wins,
//!   as with `serde_json::Value`;
//! * `stream`: `true`/`false` (`null` or absent → `None`);
//! * `cache_salt` (vLLM's per-tenant prefix-cache isolation field), decoded;
//! * the prompt bytes used for prefix hashing, per API (see [`Api`]).
//!
//! Prompt bytes are *borrowed* from the body: for a JSON string value they are the raw bytes
//! between the quotes (escapes left as sent); for any other value (arrays of chat messages,
//! token arrays) they are the raw bytes of the value. Nothing proportional to the body is
//! allocated or copied: the only allocations are the model and salt strings, both capped at
//! [`MAX_NAME_LEN`] bytes. Raw bytes differ from GIE's re-marshalled JSON only in whitespace and
//! key order within messages, which is stable for any one client library; the prefix index is
//! our own, so only self-consistency matters.
//!
//! Speed: strings (nearly all of a prompt) are skipped eight bytes at a time with SWAR bit tricks
//! that find the first quote, backslash, control byte or non-ASCII byte in a `u64` word; both
//! native targets and wasm32 have 64-bit integer ops, so the same code is fast in the proxy.
//!
//! Contract: no function here panics on any input (property-tested against arbitrary bytes),
//! nesting is tracked in a 128-bit stack, not by recursion, and capped at [`MAX_DEPTH`].

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

/// Nesting limit: fewer than 128 open containers, counting the top-level object, exactly where
/// serde_json's default recursion limit (128) stops, so both accept the same documents (tested).
/// The scanner itself is iterative and could go deeper.
pub const MAX_DEPTH: usize = 128;

/// Longest accepted `model` / `cache_salt`, in bytes after decoding. GIE's legacy
/// `InferenceModel.modelName` was limited to 256 characters (`docs/epp.md`, "InferenceModel
/// (legacy)").
pub const MAX_NAME_LEN: usize = 256;

/// Which OpenAI-style API a body belongs to; decides where the prompt lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Api {
    /// `/v1/completions`: `prompt` (string, or array of strings / token ids).
    Completions,
    /// `/v1/chat/completions`: the `messages` array.
    ChatCompletions,
    /// `/v1/responses`: `instructions`, then `input`.
    Responses,
    /// `/v1/embeddings`: `input`.
    Embeddings,
}

impl Api {
    /// Maps a request path (query string allowed) to its API; `None` for any other path.
    pub fn from_path(path: &str) -> Option<Api> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = path.strip_suffix('/').unwrap_or(path);
        match path {
            "/v1/completions" => Some(Api::Completions),
            "/v1/chat/completions" => Some(Api::ChatCompletions),
            "/v1/responses" => Some(Api::Responses),
            "/v1/embeddings" => Some(Api::Embeddings),
            _ => None,
        }
    }

    /// The keys whose values form the prompt, in hashing order.
    fn prompt_keys(self) -> &'static [&'static [u8]] {
        match self {
            Api::Completions => &[b"prompt"],
            Api::ChatCompletions => &[b"messages"],
            Api::Responses => &[b"instructions", b"input"],
            Api::Embeddings => &[b"input"],
        }
    }
}

/// Why a body was rejected. Offsets are byte positions in the body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanError {
    /// The body is empty or only whitespace.
    Empty,
    /// The top-level JSON value is not an object.
    NotAnObject,
    /// The bytes are not valid JSON.
    Malformed {
        /// Byte position of the error in the body.
        offset: usize,
        /// What was expected or wrong there.
        reason: &'static str,
    },
    /// Nesting deeper than [`MAX_DEPTH`].
    TooDeep {
        /// Byte position of the container that went too deep.
        offset: usize,
    },
    /// No `model` key at the top level.
    MissingModel,
    /// `model` is present but not a non-empty string.
    ModelNotString,
    /// `model` or `cache_salt` longer than [`MAX_NAME_LEN`] bytes.
    NameTooLong,
    /// `model` decodes to something that cannot be an HTTP field value (a control byte such as
    /// CR, LF or NUL, or leading / trailing whitespace), so it could not be written into the
    /// model header without splitting or corrupting it; see [`is_field_value`].
    ModelNotFieldValue,
    /// `stream` is present but not a boolean or null.
    StreamNotBool,
    /// `cache_salt` is present but not a string.
    SaltNotString,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanError::Empty => f.write_str("request body is empty"),
            ScanError::NotAnObject => f.write_str("request body is not a JSON object"),
            ScanError::Malformed { offset, reason } => {
                write!(f, "malformed JSON at byte {offset}: {reason}")
            }
            ScanError::TooDeep { offset } => {
                write!(f, "JSON nested deeper than {MAX_DEPTH} levels at byte {offset}")
            }
            ScanError::MissingModel => f.write_str("request body has no \"model\" field"),
            ScanError::ModelNotString => f.write_str("\"model\" must be a non-empty string"),
            ScanError::NameTooLong => {
                write!(f, "\"model\" or \"cache_salt\" is longer than {MAX_NAME_LEN} bytes")
            }
            ScanError::ModelNotFieldValue => f.write_str(
                "\"model\" cannot be sent as an HTTP header value: it has a control character (such as CR, LF or NUL) or leading or trailing whitespace",
            ),
            ScanError::StreamNotBool => f.write_str("\"stream\" must be true, false or null"),
            ScanError::SaltNotString => f.write_str("\"cache_salt\" must be a string"),
        }
    }
}

impl core::error::Error for ScanError {}

/// The prompt bytes of a request: up to two borrowed segments, hashed as one stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prompt<'a> {
    parts: [&'a [u8]; 2],
}

impl<'a> Prompt<'a> {
    /// A prompt made of one segment (tests, simulators, headers-only mode).
    pub const fn from_bytes(bytes: &'a [u8]) -> Self {
        Prompt { parts: [bytes, &[]] }
    }

    /// A prompt of two segments hashed as `first` then `second` (e.g. a Responses API body's
    /// `instructions` then `input`).
    pub const fn from_parts(first: &'a [u8], second: &'a [u8]) -> Self {
        Prompt { parts: [first, second] }
    }

    /// The segments in hashing order (empty ones included).
    pub fn parts(&self) -> &[&'a [u8]; 2] {
        &self.parts
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.parts[0].len() + self.parts[1].len()
    }

    /// Whether the prompt has no bytes (no prompt field, or empty ones).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What [`scan`] extracts from a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanned<'a> {
    /// The decoded `model` (1..=[`MAX_NAME_LEN`] bytes, a valid HTTP field value).
    pub model: String,
    /// Byte range of the (last) `model` value in the body, quotes included, so a proxy can
    /// rewrite the model (GIE `InferenceModelRewrite`) by splicing the body.
    pub model_range: core::ops::Range<usize>,
    /// `stream`: `Some(true)` / `Some(false)`, `None` when absent or `null`.
    pub stream: Option<bool>,
    /// The decoded `cache_salt` (at most [`MAX_NAME_LEN`] bytes), when present.
    pub cache_salt: Option<String>,
    /// The prompt bytes of the API's prompt fields, borrowed from the body (empty when absent).
    pub prompt: Prompt<'a>,
}

/// Scans `body` once; see the module docs for what is extracted and validated.
pub fn scan(body: &[u8], api: Api) -> Result<Scanned<'_>, ScanError> {
    let mut c = Cursor { b: body, i: 0 };
    c.skip_ws();
    match c.peek() {
        None => return Err(ScanError::Empty),
        Some(b'{') => c.i += 1,
        Some(_) => {
            // Validate first so that garbage reports as malformed, and valid non-objects as such.
            c.skip_value(0)?;
            c.skip_ws();
            if c.i != c.b.len() {
                return Err(c.err("trailing characters after the JSON value"));
            }
            return Err(ScanError::NotAnObject);
        }
    }

    let keys = api.prompt_keys();
    let mut model: Option<Result<String, ScanError>> = None;
    let mut model_range = 0..0;
    let mut stream = None;
    let mut salt: Option<Result<String, ScanError>> = None;
    let mut prompt: [&[u8]; 2] = [&[], &[]];

    c.skip_ws();
    if c.peek() == Some(b'}') {
        c.i += 1;
    } else {
        loop {
            c.skip_ws();
            if c.peek() != Some(b'"') {
                return Err(c.err("expected a string key"));
            }
            let key = c.key_name()?;
            c.skip_ws();
            if c.peek() != Some(b':') {
                return Err(c.err("expected ':' after key"));
            }
            c.i += 1;
            c.skip_ws();
            let start = c.i;
            let first = c.peek();
            c.skip_value(1)?;
            let raw = &c.b[start..c.i];
            match key {
                KeyName::Short(buf, len) => {
                    let k = &buf[..len];
                    if k == b"model" {
                        model_range = start..c.i;
                        model = Some(decode_name(raw).ok_or(ScanError::ModelNotString).and_then(|r| {
                            r.and_then(|s| {
                                if s.is_empty() {
                                    Err(ScanError::ModelNotString)
                                } else if !is_field_value(s.as_bytes()) {
                                    Err(ScanError::ModelNotFieldValue)
                                } else {
                                    Ok(s)
                                }
                            })
                        }));
                    } else if k == b"stream" {
                        stream = Some(match raw {
                            b"true" => Ok(Some(true)),
                            b"false" => Ok(Some(false)),
                            b"null" => Ok(None),
                            _ => Err(ScanError::StreamNotBool),
                        });
                    } else if k == b"cache_salt" {
                        salt = Some(decode_name(raw).ok_or(ScanError::SaltNotString).and_then(|r| r));
                    } else if let Some(slot) = keys.iter().position(|pk| *pk == k) {
                        prompt[slot] = if first == Some(b'"') {
                            &raw[1..raw.len() - 1]
                        } else {
                            raw
                        };
                    }
                }
                KeyName::Other => {}
            }
            c.skip_ws();
            match c.peek() {
                Some(b',') => c.i += 1,
                Some(b'}') => {
                    c.i += 1;
                    break;
                }
                _ => return Err(c.err("expected ',' or '}' in object")),
            }
        }
    }
    c.skip_ws();
    if c.i != c.b.len() {
        return Err(c.err("trailing characters after the JSON value"));
    }

    let model = model.ok_or(ScanError::MissingModel)??;
    let stream = match stream {
        Some(r) => r?,
        None => None,
    };
    let cache_salt = salt.transpose()?;
    Ok(Scanned {
        model,
        model_range,
        stream,
        cache_salt,
        prompt: Prompt { parts: prompt },
    })
}

/// Whether `b` is a valid HTTP field value (RFC 9110 §5.5): visible ASCII (0x21-0x7E) and
/// obs-text (0x80-0xFF), with spaces and tabs allowed only between them; no CR, LF, NUL or
/// other control byte, no DEL. Empty is valid. Every value the proxy module writes into a
/// header passes this test; a model name that fails it is refused
/// ([`ScanError::ModelNotFieldValue`]) rather than written, because a CR LF in a header value
/// is request smuggling over an HTTP/1 upstream.
pub fn is_field_value(b: &[u8]) -> bool {
    // Visible ASCII, SP and obs-text are the bytes >= 0x20 other than DEL; HTAB is the one
    // control byte allowed.
    let byte_ok = |c: u8| (c >= 0x20 && c != 0x7f) || c == b'\t';
    let edge_ok = |c: u8| c != b' ' && c != b'\t';
    if !(b.first().is_none_or(|&c| edge_ok(c)) && b.last().is_none_or(|&c| edge_ok(c))) {
        return false;
    }
    // Eight bytes at a time: a word with no byte below 0x20 and no DEL is all valid. A word
    // that has one (a tab, or an invalid byte) is checked byte by byte.
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let (words, rest) = b.as_chunks::<8>();
    for w in words {
        let x = u64::from_le_bytes(*w);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let d = x ^ (ONES * 0x7f);
        let del = d.wrapping_sub(ONES) & !d & HIGHS;
        if (below_space | del) != 0 && !w.iter().all(|&c| byte_ok(c)) {
            return false;
        }
    }
    rest.iter().all(|&c| byte_ok(c))
}

/// Decodes a raw JSON string value (with quotes). `None` if the value is not a string,
/// `Some(Err)` if it is too long.
fn decode_name(raw: &[u8]) -> Option<Result<String, ScanError>> {
    if raw.len() < 2 || raw[0] != b'"' {
        return None;
    }
    let inner = &raw[1..raw.len() - 1];
    if inner.len() > MAX_NAME_LEN * 6 {
        // Even fully escaped, this cannot decode to MAX_NAME_LEN bytes or fewer.
        return Some(Err(ScanError::NameTooLong));
    }
    let mut out = Vec::with_capacity(inner.len().min(MAX_NAME_LEN));
    if unescape(inner, &mut out).is_err() {
        // Unreachable for values that passed `skip_value`, except lone surrogates, which
        // `skip_value` tolerates in skipped strings but a name must not contain.
        return None;
    }
    if out.len() > MAX_NAME_LEN {
        return Some(Err(ScanError::NameTooLong));
    }
    // `unescape` only emits UTF-8 (validated input bytes and encoded scalar values).
    Some(String::from_utf8(out).map_err(|_| ScanError::ModelNotString))
}

/// Decodes JSON string content (between the quotes) into `out`. Errors on bad escapes and
/// lone surrogates. Input bytes are copied as they are (they were UTF-8 validated by the scan).
fn unescape(s: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let e = *s.get(i + 1).ok_or(())?;
        i += 2;
        let ch = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(s.get(i..i + 4).ok_or(())?).ok_or(())?;
                i += 4;
                let cp = if (0xD800..0xDC00).contains(&hi) {
                    if s.get(i..i + 2) != Some(b"\\u") {
                        return Err(());
                    }
                    let lo = hex4(s.get(i + 2..i + 6).ok_or(())?).ok_or(())?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(());
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else if (0xDC00..0xE000).contains(&hi) {
                    return Err(());
                } else {
                    hi
                };
                char::from_u32(cp).ok_or(())?
            }
            _ => return Err(()),
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
    Ok(())
}

fn hex4(h: &[u8]) -> Option<u32> {
    let mut v = 0u32;
    for &d in h {
        match HEX_VALUE[d as usize] {
            NOT_HEX => return None,
            x => v = (v << 4) | x as u32,
        }
    }
    Some(v)
}

/// `HEX_VALUE[b]` is the value of hex digit `b` (either case), else [`NOT_HEX`]: one load per
/// digit on the `\uXXXX` path, which prompts from ASCII-escaping encoders (Python's `json`
/// default) take every few words.
const NOT_HEX: u8 = 0xFF;
const HEX_VALUE: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// A top-level key, decoded into a small stack buffer when it could be one we look for.
enum KeyName {
    Short([u8; 16], usize),
    Other,
}

// === impl Cursor ===

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte of the result is set for the first byte of `w` equal to `c` (and possibly
/// for later bytes: only the lowest flag is exact, which is all we use).
#[inline(always)]
fn eq_mask(w: u64, c: u8) -> u64 {
    let x = w ^ (ONES * c as u64);
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Flags for the first byte of `w` that needs attention inside a string: `"`, `\`, a control
/// byte (< 0x20, illegal unescaped in JSON) or a non-ASCII byte (UTF-8 to validate).
#[inline(always)]
fn special_mask(w: u64) -> u64 {
    let lt20 = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    eq_mask(w, b'"') | eq_mask(w, b'\\') | lt20 | (w & HIGHS)
}

impl<'a> Cursor<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err(&self, reason: &'static str) -> ScanError {
        ScanError::Malformed { offset: self.i, reason }
    }

    #[inline]
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// Reads a key string at the cursor (which is on its opening quote).
    fn key_name(&mut self) -> Result<KeyName, ScanError> {
        let start = self.i;
        let escaped = self.skip_string()?;
        let inner = &self.b[start + 1..self.i - 1];
        if !escaped {
            if inner.len() <= 16 {
                let mut buf = [0u8; 16];
                buf[..inner.len()].copy_from_slice(inner);
                return Ok(KeyName::Short(buf, inner.len()));
            }
            return Ok(KeyName::Other);
        }
        // Rare: an escaped key such as "mod\u0065l". Decode if it can be short enough.
        if inner.len() > 16 * 12 {
            return Ok(KeyName::Other);
        }
        let mut out = Vec::new();
        if unescape(inner, &mut out).is_err() || out.len() > 16 {
            return Ok(KeyName::Other);
        }
        let mut buf = [0u8; 16];
        buf[..out.len()].copy_from_slice(&out);
        Ok(KeyName::Short(buf, out.len()))
    }

    /// Skips a string whose opening quote is at the cursor; returns whether it had escapes.
    fn skip_string(&mut self) -> Result<bool, ScanError> {
        self.i += 1; // opening quote
        let b = self.b;
        let mut escaped = false;
        loop {
            // Word-at-a-time fast path over plain ASCII, with the position in a local (one
            // write-back per run instead of a store per word).
            let mut i = self.i;
            while let Some(chunk) = b.get(i..i + 8) {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                let m = special_mask(u64::from_le_bytes(word));
                if m != 0 {
                    i += (m.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            self.i = i;
            let Some(&c) = b.get(self.i) else {
                return Err(self.err("unterminated string"));
            };
            match c {
                b'"' => {
                    self.i += 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    match b.get(self.i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 2,
                        Some(b'u') => {
                            let ok = b.get(self.i + 2..self.i + 6).is_some_and(|h| hex4(h).is_some());
                            if !ok {
                                return Err(self.err("invalid \\u escape"));
                            }
                            self.i += 6;
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                0x00..=0x1F => return Err(self.err("control character in string")),
                0x80.. => self.skip_utf8()?,
                _ => self.i += 1,
            }
        }
    }

    /// Validates one multi-byte UTF-8 sequence at the cursor (RFC 3629 table 1, which excludes
    /// overlongs and surrogates) and steps over it.
    fn skip_utf8(&mut self) -> Result<(), ScanError> {
        let b = self.b;
        let i = self.i;
        let cont = |k: usize| b.get(i + k).is_some_and(|x| (0x80..=0xBF).contains(x));
        let in_range = |k: usize, lo: u8, hi: u8| b.get(i + k).is_some_and(|x| (lo..=hi).contains(x));
        let n = match b[i] {
            0xC2..=0xDF if cont(1) => 2,
            0xE0 if in_range(1, 0xA0, 0xBF) && cont(2) => 3,
            0xE1..=0xEC | 0xEE..=0xEF if cont(1) && cont(2) => 3,
            0xED if in_range(1, 0x80, 0x9F) && cont(2) => 3,
            0xF0 if in_range(1, 0x90, 0xBF) && cont(2) && cont(3) => 4,
            0xF1..=0xF3 if cont(1) && cont(2) && cont(3) => 4,
            0xF4 if in_range(1, 0x80, 0x8F) && cont(2) && cont(3) => 4,
            _ => return Err(self.err("invalid UTF-8")),
        };
        self.i += n;
        Ok(())
    }

    fn skip_literal(&mut self, lit: &'static [u8]) -> Result<(), ScanError> {
        if self.b.get(self.i..self.i + lit.len()) == Some(lit) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn skip_digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    /// RFC 8259 §6 number grammar.
    fn skip_number(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.skip_digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.skip_digits() == 0 {
                return Err(self.err("invalid number: digits expected after '.'"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.skip_digits() == 0 {
                return Err(self.err("invalid number: digits expected in exponent"));
            }
        }
        Ok(())
    }

    fn skip_scalar(&mut self) -> Result<(), ScanError> {
        match self.peek() {
            Some(b'"') => self.skip_string().map(|_| ()),
            Some(b't') => self.skip_literal(b"true"),
            Some(b'f') => self.skip_literal(b"false"),
            Some(b'n') => self.skip_literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.skip_number(),
            Some(_) => Err(self.err("expected a JSON value")),
            None => Err(self.err("unexpected end of input")),
        }
    }

    /// Skips one JSON value at the cursor, validating it. `depth` is the nesting level of the
    /// value's container (0 at top level). Iterative: a bit stack records, for each open
    /// container, whether it is an object (1) or an array (0).
    fn skip_value(&mut self, depth: usize) -> Result<(), ScanError> {
        let (open_obj, open_arr) = (b'{', b'[');
        match self.peek() {
            Some(c) if c == open_obj || c == open_arr => {}
            _ => return self.skip_scalar(),
        }
        let mut stack: u128 = 0;
        let mut level: usize = 0;
        // true: a value is expected next; false: we just finished a value.
        let mut want_value = true;
        loop {
            if want_value {
                self.skip_ws();
                match self.peek() {
                    Some(c @ (b'{' | b'[')) => {
                        // `depth + level + 1` levels would be open, counting the top-level one.
                        if depth + level + 1 >= MAX_DEPTH {
                            return Err(ScanError::TooDeep { offset: self.i });
                        }
                        let is_obj = c == b'{';
                        stack = (stack << 1) | is_obj as u128;
                        level += 1;
                        self.i += 1;
                        self.skip_ws();
                        // Empty container?
                        let close = if is_obj { b'}' } else { b']' };
                        if self.peek() == Some(close) {
                            self.i += 1;
                            stack >>= 1;
                            level -= 1;
                            want_value = false;
                            if level == 0 {
                                return Ok(());
                            }
                            continue;
                        }
                        if is_obj {
                            self.object_key()?;
                        }
                        continue;
                    }
                    _ => {
                        self.skip_scalar()?;
                        want_value = false;
                    }
                }
            }
            // After a value inside the container on top of the stack.
            self.skip_ws();
            let is_obj = stack & 1 == 1;
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    if is_obj {
                        self.skip_ws();
                        self.object_key()?;
                    }
                    want_value = true;
                }
                Some(b'}') if is_obj => {
                    self.i += 1;
                    stack >>= 1;
                    level -= 1;
                    if level == 0 {
                        return Ok(());
                    }
                }
                Some(b']') if !is_obj => {
                    self.i += 1;
                    stack >>= 1;
                    level -= 1;
                    if level == 0 {
                        return Ok(());
                    }
                }
                _ => {
                    return Err(self.err(if is_obj {
                        "expected ',' or '}' in object"
                    } else {
                        "expected ',' or ']' in array"
                    }))
                }
            }
        }
    }

    /// Inside an object: a key string, then ':'; leaves the cursor before the value.
    fn object_key(&mut self) -> Result<(), ScanError> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string key"));
        }
        self.skip_string()?;
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.err("expected ':' after key"));
        }
        self.i += 1;
        Ok(())
    }
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
