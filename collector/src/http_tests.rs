//! The scrape client's framing: head and chunk parsing, whole exchanges over an in-memory pipe
//! (answers cut into arbitrary pieces), and connection reuse against a local TCP server.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const REQUEST: &[u8] = b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n";

#[track_caller]
fn head(text: &str) -> Head {
    parse_head(text.as_bytes()).unwrap().unwrap()
}

#[test]
fn heads_decide_status_framing_and_reuse() {
    let h = head("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nContent-Length: 12\r\n\r\nbody");
    assert_eq!(
        (h.status, h.framing, h.keep_alive, h.len),
        (200, Framing::Length(12), true, 65)
    );
    let h = head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
    assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
    // Transfer-Encoding wins over Content-Length, and such a connection is not reused.
    let h = head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
    // Not chunked last: the body runs to the end of the connection.
    assert_eq!(
        head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n").framing,
        Framing::Close
    );
    assert_eq!(head("HTTP/1.1 200 OK\r\n\r\n").framing, Framing::Close);
    assert!(!head("HTTP/1.1 200 OK\r\nconnection: Close\r\ncontent-length: 0\r\n\r\n").keep_alive);
    assert!(!head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive);
    assert!(head("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n").keep_alive);
    // No body whatever the headers say; bare LF line ends; no reason phrase.
    assert_eq!(
        head("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n").framing,
        Framing::Length(0)
    );
    assert_eq!(head("HTTP/1.1 304\ncontent-length: 9\n\n").framing, Framing::Length(0));
    let h = head("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n");
    assert_eq!((h.status, h.framing), (500, Framing::Length(2)));
}

#[test]
fn bad_or_incomplete_heads() {
    for partial in ["", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n"] {
        assert_eq!(parse_head(partial.as_bytes()), Ok(None), "{partial:?}");
    }
    for bad in [
        "HTTP/2 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 200OK\r\n\r\n",
        "http/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        "HTTP/1.1 200 OK\r\nx: 1\r\n folded\r\n\r\n",
        "HTTP/1.1 200 OK\r\nbad name: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1, 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
        "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
    ] {
        assert!(parse_head(bad.as_bytes()).is_err(), "{bad:?}");
    }
    let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "y".repeat(MAX_HEAD));
    assert!(parse_head(huge.as_bytes()).is_err());
}

#[test]
fn chunk_size_lines() {
    assert_eq!(parse_chunk_size(b"1a\r\nxx"), Ok(Some((4, 26))));
    assert_eq!(parse_chunk_size(b"0;name=value\r\n"), Ok(Some((14, 0))));
    assert_eq!(parse_chunk_size(b"FF \n"), Ok(Some((4, 255))));
    assert_eq!(parse_chunk_size(b"10"), Ok(None));
    for bad in [&b"\r\n"[..], b"g\r\n", b"1 2\r\n", b"-1\r\n", b"1000000000000000\r\n"] {
        assert!(parse_chunk_size(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    assert_eq!(trailer_len(b"\r\nnext"), Ok(Some(2)));
    assert_eq!(trailer_len(b"x: 1\r\ny: 2\r\n\r\n"), Ok(Some(14)));
    assert_eq!(trailer_len(b"x: 1\r\n"), Ok(None));
}

#[test]
fn chunk_metadata_over_its_cap_fails_however_it_arrives() {
    // Found while writing the `framing` fuzz target's split invariant (a one-byte change of a
    // seed's read sizes shows it): a chunk-size line or trailer section longer than
    // MAX_CHUNK_META was accepted when it came in the same read as the bytes before it, and
    // refused when it came in smaller reads.
    let ext = format!("3;{}\r\nabc\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_META));
    let trailer = format!("3\r\nabc\r\n0\r\nx: {}\r\n\r\n", "t".repeat(MAX_CHUNK_META));
    for body in [ext, trailer] {
        let answer = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{body}");
        for reads in [&[][..], &[1], &[100, 7]] {
            let (r, _) = fuzz_logic::frame(answer.as_bytes(), reads, 1 << 20);
            assert!(r.as_ref().is_err_and(|e| e.ends_with("too long")), "{reads:?}: {r:?}");
        }
    }
    // Exactly at the cap: accepted in one read and byte by byte.
    let line = format!("3;{}", "e".repeat(MAX_CHUNK_META - 3));
    assert_eq!(
        line.len() + 1,
        MAX_CHUNK_META,
        "with its CR, the line is MAX_CHUNK_META bytes"
    );
    let answer = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{line}\r\nabc\r\n0\r\n\r\n");
    for reads in [&[][..], &[1]] {
        let (r, _) = fuzz_logic::frame(answer.as_bytes(), reads, 1 << 20);
        assert_eq!(r, Ok((200, b"abc".to_vec(), true)), "{reads:?}");
    }
}

/// (status, body, keep-alive), or the error's text.
type Outcome = Result<(u16, Vec<u8>, bool), String>;

/// Runs one exchange against `answer`, delivered in pieces of the given sizes (cycled) through
/// a pipe that holds at most 64 bytes; the server closes its end after the answer. Returns the
/// outcome and the buffer as the exchange left it.
fn run_exchange(answer: Vec<u8>, pieces: Vec<usize>, max_bytes: usize) -> (Outcome, Vec<u8>) {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async move {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            let mut req = Vec::new();
            while !req.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 64];
                match server.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&b[..n]),
                }
            }
            let mut rest = &answer[..];
            for size in pieces.iter().copied().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (now, later) = rest.split_at(size.clamp(1, rest.len()));
                if server.write_all(now).await.is_err() {
                    return;
                }
                rest = later;
                tokio::task::yield_now().await;
            }
        });
        let mut buf = vec![0xAA; 10];
        let r = exchange(&mut client, REQUEST, &mut buf, max_bytes)
            .await
            .map(|a| (a.status, buf.get(a.body.clone()).unwrap().to_vec(), a.keep_alive))
            .map_err(|e| HttpError::from(e).to_string());
        drop(client);
        let _ = writer.await;
        (r, buf)
    })
}

fn chunked(body: &[u8], sizes: &[usize], ext: bool, trailer: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    for size in sizes.iter().copied().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at(size.clamp(1, rest.len()));
        out.extend_from_slice(format!("{:x}{}\r\n", now.len(), if ext { ";a=b" } else { "" }).as_bytes());
        out.extend_from_slice(now);
        out.extend_from_slice(b"\r\n");
        rest = later;
    }
    out.extend_from_slice(if trailer { b"0\r\nx-t: 1\r\n\r\n" } else { b"0\r\n\r\n" });
    out
}

#[test]
fn exchanges_with_each_framing() {
    let body = b"vllm:num_requests_waiting 1\n".repeat(20);
    let with_head = |head: &str, b: &[u8]| [head.as_bytes(), b].concat();
    let cases = [
        (
            with_head(
                &format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()),
                &body,
            ),
            true,
        ),
        (
            with_head(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                &chunked(&body, &[7, 100, 1], true, true),
            ),
            true,
        ),
        (with_head("HTTP/1.1 200 OK\r\n\r\n", &body), false),
        (
            with_head(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 560\r\n\r\n",
                &body,
            ),
            true,
        ),
    ];
    for (answer, keep) in cases {
        for pieces in [vec![1], vec![3, 17], vec![4096]] {
            let (r, _) = run_exchange(answer.clone(), pieces, 4096);
            assert_eq!(r, Ok((200, body.clone(), keep)));
        }
    }
    // Over the cap, declared or not.
    let (r, _) = run_exchange(
        with_head(
            &format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()),
            &body,
        ),
        vec![50],
        100,
    );
    assert_eq!(r, Err("response larger than 100 bytes".into()));
    for answer in [
        with_head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            &chunked(&body, &[30], false, false),
        ),
        with_head("HTTP/1.1 200 OK\r\n\r\n", &body),
    ] {
        let (r, buf) = run_exchange(answer, vec![50], 100);
        assert_eq!(r, Err("response larger than 100 bytes".into()));
        assert!(buf.len() < 4096, "the buffer stays near the cap: {}", buf.len());
    }
    // Truncated answers.
    let (r, _) = run_exchange(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec(),
        vec![5],
        100,
    );
    assert_eq!(r, Err("bad response: connection closed in the body".into()));
    let (r, _) = run_exchange(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n".to_vec(),
        vec![5],
        100,
    );
    assert!(r.is_err());
    let (r, _) = run_exchange(Vec::new(), vec![5], 100);
    assert_eq!(r, Err("bad response: connection closed before the answer".into()));
}

#[test]
fn a_body_until_close_under_the_largest_cap_is_read() {
    // Found by the `framing` fuzz target: with `--max-scrape-bytes` near usize::MAX the read
    // limit of a body framed by the connection's close overflowed (a panic with overflow checks,
    // else every such answer was "too large").
    let (r, _) = run_exchange(b"HTTP/1.1 200 OK\r\n\r\nhello".to_vec(), vec![3], usize::MAX);
    assert_eq!(r, Ok((200, b"hello".to_vec(), false)));
}

#[test]
fn the_framing_fuzz_seeds_hold_its_contracts_and_the_socket_path_agrees() {
    let dir = format!("{}/../fuzz/corpus/framing", env!("CARGO_MANIFEST_DIR"));
    let mut seeds = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        fuzz_logic::run(&input);
        seeds += 1;
        // A whole answer (flags bit 4 clear): the async exchange over a pipe, reading what the
        // pipe holds, gives the status, body or error the in-memory driver gives.
        let [cap, flags, rest @ ..] = &input[..] else { continue };
        if flags & 16 != 0 {
            continue;
        }
        let (sizes, answer) = rest.split_at(usize::from(flags & 7).min(rest.len()));
        let max_bytes = fuzz_logic::CAPS[usize::from(*cap) % fuzz_logic::CAPS.len()];
        let pieces: Vec<usize> = sizes
            .iter()
            .map(|&s| if s == 0 { 4096 } else { usize::from(s) })
            .collect();
        let (driver, _) = fuzz_logic::frame(answer, &[], max_bytes);
        let (socket, _) = run_exchange(
            answer.to_vec(),
            if pieces.is_empty() { vec![4096] } else { pieces },
            max_bytes,
        );
        let strip = |o: fuzz_logic::Outcome| o.map(|(status, body, _)| (status, body));
        assert_eq!(strip(socket), strip(driver), "{}", path.display());
    }
    assert!(seeds >= 20, "{seeds} seeds in {dir}");
}

/// A server on 127.0.0.1 answering every request on a connection with `answer(n)` (n counts
/// requests over all connections); returns its address and the number of connections accepted.
async fn server(answer: fn(usize) -> Option<&'static [u8]>) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (conns, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                loop {
                    let mut b = [0u8; 256];
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                    while let Some(end) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                        req.drain(..end + 4);
                        // None: close the connection without answering.
                        match answer(requests.fetch_add(1, Ordering::SeqCst)) {
                            Some(a) => {
                                if s.write_all(a).await.is_err() {
                                    return;
                                }
                            }
                            None => return,
                        }
                    }
                }
            });
        }
    });
    (addr, conns)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

#[tokio::test]
async fn keeps_one_connection_alive() {
    let (addr, conns) = server(|_| Some(OK)).await;
    let mut c = ScrapeConn::new(addr, "/metrics");
    for _ in 0..5 {
        let r = c.get(100).await.unwrap();
        assert_eq!((r.status, r.body), (200, &b"hello"[..]));
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn reconnects_after_close_and_retries_a_connection_closed_while_idle() {
    // The second request finds its kept-alive connection closed without an answer: it is sent
    // again on a new one. The fourth answer says `connection: close`.
    let (addr, conns) = server(|n| match n {
        1 => None,
        3 => Some(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello"),
        _ => Some(OK),
    })
    .await;
    let mut c = ScrapeConn::new(addr, "/metrics");
    for _ in 0..5 {
        assert_eq!(c.get(100).await.unwrap().body, b"hello");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_request_cut_off_by_a_timeout_is_not_read_as_the_next_answer() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = l.accept().await {
            n += 1;
            let slow = n == 1;
            tokio::spawn(async move {
                let mut b = [0u8; 256];
                while let Ok(k) = s.read(&mut b).await {
                    if k == 0 {
                        return;
                    }
                    if slow {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nlate").await;
                    } else {
                        let _ = s.write_all(OK).await;
                    }
                }
            });
        }
    });
    let mut c = ScrapeConn::new(addr, "/metrics");
    assert!(tokio::time::timeout(Duration::from_millis(50), c.get(100))
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(c.get(100).await.unwrap().body, b"hello");
}

#[tokio::test]
async fn a_path_that_cannot_go_into_a_request_line_fails_every_request() {
    let (addr, conns) = server(|_| Some(OK)).await;
    let mut c = ScrapeConn::new(addr, "/a b");
    assert!(matches!(c.get(100).await, Err(HttpError::Path(_))));
    assert_eq!(conns.load(Ordering::SeqCst), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn any_framing_in_any_pieces_gives_the_body_back(
        body in prop::collection::vec(any::<u8>(), 0..3000),
        framing in 0u8..3,
        sizes in prop::collection::vec(1usize..700, 1..6),
        pieces in prop::collection::vec(1usize..300, 1..6),
        ext in any::<bool>(),
        trailer in any::<bool>(),
    ) {
        let answer = match framing {
            0 => [format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes(), body.clone()].concat(),
            1 => [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(), chunked(&body, &sizes, ext, trailer)].concat(),
            _ => [b"HTTP/1.1 200 OK\r\n\r\n".to_vec(), body.clone()].concat(),
        };
        let (r, _) = run_exchange(answer, pieces, 4096);
        prop_assert_eq!(r, Ok((200, body, framing != 2)));
    }

    #[test]
    fn never_panics_on_arbitrary_answers(
        prefix in prop::sample::select(vec![
            "",
            "HTTP/1.1 200 OK\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 40\r\n\r\n",
        ]),
        bytes in prop::collection::vec(prop::sample::select(b"0123456789abcdefxX;: \r\n\r\n\t,-HTTP/1.".to_vec()), 0..400),
        pieces in prop::collection::vec(1usize..64, 1..4),
        max_bytes in 0usize..200,
    ) {
        let (r, buf) = run_exchange([prefix.as_bytes(), &bytes].concat(), pieces, max_bytes);
        if let Ok((_, body, _)) = r {
            prop_assert!(body.len() <= max_bytes);
        }
        prop_assert!(buf.len() <= MAX_HEAD + 2 * READ_SIZE);
    }
}
