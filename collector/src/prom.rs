//! A hand-written parser for the Prometheus text exposition format (version 0.0.4), and the
//! subset of OpenMetrics text that model servers emit (`# EOF`, exemplars after ` # `).
//!
//! Contract: [`parse`] never panics and never allocates per byte of input beyond the label
//! buffer it reuses; it reads each line once. A malformed line makes the whole document an
//! error ([`ParseError`] with its 1-based line number), because a scrape that is partly garbage
//! is not trustworthy. Comments (`# HELP`, `# TYPE`, anything after `#`) and blank lines are
//! skipped; trailing timestamps are accepted and ignored.
//!
//! ```text
//! line    = name [ "{" [ label { "," label } [","] ] "}" ] value [ timestamp ] [ " # " exemplar ]
//! name    = [a-zA-Z_:][a-zA-Z0-9_:]*
//! label   = lname "=" '"' escaped-utf8 '"'          escapes: \\ \" \n
//! value   = Go ParseFloat syntax: 1, -1.5e3, NaN, +Inf, -Inf
//! ```

use std::borrow::Cow;
use std::fmt;

/// One label of a sample; `raw` is the value as written, still escaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label<'a> {
    pub name: &'a str,
    raw: &'a str,
}

impl<'a> Label<'a> {
    /// The value with `\\`, `\"` and `\n` unescaped (borrowed when there was nothing to unescape).
    pub fn value(&self) -> Cow<'a, str> {
        if !self.raw.contains('\\') {
            return Cow::Borrowed(self.raw);
        }
        let mut out = String::with_capacity(self.raw.len());
        let mut chars = self.raw.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => {}
                }
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }
}

/// One sample line.
#[derive(Debug)]
pub struct Sample<'a, 'l> {
    pub name: &'a str,
    pub labels: &'l [Label<'a>],
    pub value: f64,
}

impl<'a> Sample<'a, '_> {
    /// The (unescaped) value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<Cow<'a, str>> {
        self.labels.iter().find(|l| l.name == name).map(Label::value)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub what: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.what)
    }
}

impl std::error::Error for ParseError {}

/// Most labels accepted on one sample (bounds the reused buffer).
pub const MAX_LABELS: usize = 64;

/// Parses `input` and calls `visit` for each sample, in order.
pub fn parse<'a>(input: &'a [u8], mut visit: impl FnMut(&Sample<'a, '_>)) -> Result<(), ParseError> {
    let mut labels: Vec<Label<'a>> = Vec::with_capacity(16);
    for (i, raw_line) in input.split(|&b| b == b'\n').enumerate() {
        let err = |what| ParseError { line: i + 1, what };
        let line = trim(raw_line);
        if line.is_empty() || line[0] == b'#' {
            continue;
        }
        let line = std::str::from_utf8(line).map_err(|_| err("not UTF-8"))?;
        labels.clear();
        let (name, value) = parse_line(line, &mut labels).map_err(err)?;
        visit(&Sample {
            name,
            labels: &labels,
            value,
        });
    }
    Ok(())
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = s {
        s = rest;
    }
    s
}

fn is_name_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b == b':'
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// Length of the metric/label name at the start of `s` (0 if none).
fn name_len(s: &[u8], allow_colon: bool) -> usize {
    match s.first() {
        Some(&b) if is_name_start(b) && (allow_colon || b != b':') => {}
        _ => return 0,
    }
    s.iter()
        .position(|&b| !(is_name_char(b) && (allow_colon || b != b':')))
        .unwrap_or(s.len())
}

fn skip_blanks(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

fn parse_line<'a>(line: &'a str, labels: &mut Vec<Label<'a>>) -> Result<(&'a str, f64), &'static str> {
    let n = name_len(line.as_bytes(), true);
    if n == 0 {
        return Err("expected a metric name");
    }
    let (name, mut rest) = line.split_at(n);
    let blank_after_name = rest.starts_with([' ', '\t']);
    rest = skip_blanks(rest);
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, labels)?;
    } else if !blank_after_name {
        return Err("expected a blank or '{' after the metric name");
    }
    let rest = skip_blanks(rest);
    let (value_s, tail) = split_token(rest);
    if value_s.is_empty() {
        return Err("missing value");
    }
    let value = parse_float(value_s).ok_or("bad value")?;
    let tail = skip_blanks(tail);
    if tail.is_empty() || tail.starts_with('#') {
        return Ok((name, value));
    }
    let (ts, tail) = split_token(tail);
    if parse_float(ts).is_none() {
        return Err("bad timestamp");
    }
    let tail = skip_blanks(tail);
    if tail.is_empty() || tail.starts_with('#') {
        Ok((name, value))
    } else {
        Err("unexpected text after the timestamp")
    }
}

fn split_token(s: &str) -> (&str, &str) {
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    s.split_at(end)
}

/// Parses labels after `{`; returns the text after the closing `}`.
fn parse_labels<'a>(mut s: &'a str, labels: &mut Vec<Label<'a>>) -> Result<&'a str, &'static str> {
    loop {
        s = skip_blanks(s);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let n = name_len(s.as_bytes(), false);
        if n == 0 {
            return Err("expected a label name");
        }
        let (lname, rest) = s.split_at(n);
        let rest = skip_blanks(rest);
        let rest = rest.strip_prefix('=').ok_or("expected '=' after a label name")?;
        let rest = skip_blanks(rest);
        let rest = rest.strip_prefix('"').ok_or("expected '\"' to open a label value")?;
        // Find the closing quote, honouring escapes.
        let bytes = rest.as_bytes();
        let mut i = 0;
        let end = loop {
            match bytes.get(i) {
                None => return Err("unterminated label value"),
                Some(b'\\') => match bytes.get(i + 1) {
                    Some(b'\\' | b'"' | b'n') => i += 2,
                    _ => return Err("bad escape in a label value"),
                },
                Some(b'"') => break i,
                Some(_) => i += 1,
            }
        };
        // `end` indexes an ASCII quote, so both slices fall on char boundaries.
        let raw = rest.get(..end).ok_or("bad label value")?;
        let after = rest.get(end + 1..).ok_or("bad label value")?;
        if labels.len() >= MAX_LABELS {
            return Err("too many labels");
        }
        if labels.iter().any(|l| l.name == lname) {
            return Err("duplicate label");
        }
        labels.push(Label { name: lname, raw });
        s = skip_blanks(after);
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("expected ',' or '}' after a label");
        }
    }
}

/// Go `strconv.ParseFloat` syntax as Prometheus writes it (no hex, no underscores).
pub fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => return Some(f64::NAN),
        "+Inf" | "Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        _ => {}
    }
    let b = s.as_bytes();
    let body = match b.first() {
        Some(b'+' | b'-') => &b[1..],
        _ => b,
    };
    // Only digits, one dot and an exponent; rejects "inf", "nan", "infinity" spellings Rust accepts.
    if body.is_empty() || !body[0].is_ascii_digit() && body[0] != b'.' {
        return None;
    }
    if !body
        .iter()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    s.parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Line = (String, Vec<(String, String)>, f64);

    fn collect(text: &str) -> Result<Vec<Line>, ParseError> {
        let mut out = Vec::new();
        parse(text.as_bytes(), |s| {
            let labels = s
                .labels
                .iter()
                .map(|l| (l.name.to_string(), l.value().into_owned()))
                .collect();
            out.push((s.name.to_string(), labels, s.value));
        })?;
        Ok(out)
    }

    #[test]
    fn parses_names_labels_values_and_timestamps() {
        let got = collect(
            "# HELP x y\n# TYPE x gauge\n\nx 1\nvllm:a{b=\"c\",d=\"e\\\"f\\\\g\\nh\",} -2.5e3 1700000000000\n\
             y{} +Inf\nz NaN\r\nw{a=\"1\"} 3 # {trace_id=\"x\"} 1\n# EOF\n",
        )
        .unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], ("x".into(), vec![], 1.0));
        assert_eq!(got[1].0, "vllm:a");
        assert_eq!(
            got[1].1,
            vec![("b".into(), "c".into()), ("d".into(), "e\"f\\g\nh".into())]
        );
        assert_eq!(got[1].2, -2500.0);
        assert_eq!(got[2].2, f64::INFINITY);
        assert!(got[3].2.is_nan());
        assert_eq!(got[4].2, 3.0);
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        for (text, line) in [
            ("ok 1\nbad{ 1\n", 2),
            ("x{a=b} 1", 1),
            ("x{a=\"b} 1", 1),
            ("x", 1),
            ("x abc", 1),
            ("x 1 2 3", 1),
            ("1x 2", 1),
            ("x{a=\"1\",a=\"2\"} 1", 1),
            ("x{a=\"\\q\"} 1", 1),
            ("x inf", 1),
            ("x{a=\"1\"}} 1", 1),
        ] {
            let e = collect(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }

    #[test]
    fn rejects_non_utf8() {
        assert_eq!(parse(b"x{a=\"\xff\"} 1", |_| {}).unwrap_err().what, "not UTF-8");
    }
}
