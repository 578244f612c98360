//! Non-Kubernetes discovery: a static list, a watched file, DNS. Each source publishes the
//! whole target list on a watch channel whenever it changes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::collector::Target;
use crate::engine::Engine;

/// Parses a targets file: one `ip:port` per line; blank lines and `#` comments ignored.
pub fn parse_targets_file(text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let a = line
            .parse::<SocketAddr>()
            .map_err(|e| format!("line {}: {line:?}: {e}", i + 1))?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    Ok(out)
}

fn to_targets(addrs: &[SocketAddr], engine: Engine) -> Vec<Target> {
    addrs.iter().map(|a| Target::new(*a, engine)).collect()
}

/// Re-reads `path` whenever its modification time or length changes (checked every `poll`).
/// A file that fails to parse keeps the previous targets (and is logged).
pub async fn watch_file(path: PathBuf, engine: Engine, poll: Duration, tx: watch::Sender<Vec<Target>>) {
    let mut seen: Option<(SystemTime, u64)> = None;
    loop {
        match tokio::fs::metadata(&path).await {
            Ok(meta) => {
                let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
                if seen != Some(stamp) {
                    seen = Some(stamp);
                    match tokio::fs::read_to_string(&path).await.map_err(|e| e.to_string()) {
                        Ok(text) => match parse_targets_file(&text) {
                            Ok(addrs) => {
                                tracing::info!(path = %path.display(), targets = addrs.len(), "targets file read");
                                tx.send_replace(to_targets(&addrs, engine));
                            }
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error = %e, "bad targets file; keeping the previous targets")
                            }
                        },
                        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read targets file"),
                    }
                }
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "targets file missing"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = tx.closed() => return,
        }
    }
}

/// Resolves `host:port` (A and AAAA) every `refresh`; a failed lookup keeps the previous list.
pub async fn watch_dns(host: String, port: u16, engine: Engine, refresh: Duration, tx: watch::Sender<Vec<Target>>) {
    loop {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                let targets = to_targets(&addrs, engine);
                if *tx.borrow() != targets {
                    tracing::info!(host = %host, targets = targets.len(), "DNS targets changed");
                    tx.send_replace(targets);
                }
            }
            Err(e) => tracing::warn!(host = %host, error = %e, "DNS lookup failed; keeping the previous targets"),
        }
        tokio::select! {
            _ = tokio::time::sleep(refresh) => {}
            _ = tx.closed() => return,
        }
    }
}

pub fn static_targets(addrs: &[SocketAddr], engine: Engine) -> Vec<Target> {
    to_targets(addrs, engine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_file_syntax() {
        let t = parse_targets_file("# pods\n10.0.0.1:8000\n\n [::1]:9000  # v6\n10.0.0.1:8000\n").unwrap();
        assert_eq!(t, vec!["10.0.0.1:8000".parse().unwrap(), "[::1]:9000".parse().unwrap()]);
        assert!(parse_targets_file("10.0.0.1\n").unwrap_err().starts_with("line 1"));
    }
}
