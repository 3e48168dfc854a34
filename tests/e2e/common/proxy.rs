//! A tiny outbound HTTP proxy for the proxy tests: forwards absolute-form HTTP/1.1 requests (one
//! per connection, `Connection: close`) and tunnels `CONNECT`, counting what went through it
//! and keeping each request's `Proxy-Authorization` header.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the proxy forwarded.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `POST http://host:port/path` or `CONNECT host:port`.
    pub line: String,
    /// Its `Proxy-Authorization` header, if any.
    pub auth: Option<String>,
}

/// A running proxy.
#[derive(Clone)]
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port.
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = serve(client, log).await;
                });
            }
        });
        Proxy { addr, seen }
    }

    /// `http://127.0.0.1:PORT` with `userinfo` (`user:password@`) in it.
    pub fn url(&self, userinfo: &str) -> String {
        format!("http://{userinfo}{}", self.addr)
    }

    /// What went through so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Reads up to the end of the head; returns (head, bytes read past it).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("head too large"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the head ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(mut client: TcpStream, seen: Arc<Mutex<Vec<Seen>>>) -> std::io::Result<()> {
    let (head, mut rest) = read_head(&mut client).await?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut parts = request_line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let (line, authority) = if method == "CONNECT" {
        (format!("CONNECT {target}"), target.clone())
    } else {
        let without_scheme = target
            .strip_prefix("http://")
            .ok_or_else(|| std::io::Error::other("not an absolute http URI"))?;
        let authority = without_scheme
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        (format!("{method} {target}"), authority)
    };
    if let Ok(mut seen) = seen.lock() {
        seen.push(Seen {
            line,
            auth: header("proxy-authorization"),
        });
    }
    let mut upstream = TcpStream::connect(&authority).await?;
    if method == "CONNECT" {
        client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
        upstream.write_all(&rest).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    // Forward the request with its body (Content-Length), one per connection.
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while rest.len() < length {
        let mut chunk = vec![0u8; length - rest.len()];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        rest.extend_from_slice(&chunk[..n]);
    }
    let mut out = format!("{request_line}\r\n");
    for (k, v) in &headers {
        if k.eq_ignore_ascii_case("proxy-authorization")
            || k.eq_ignore_ascii_case("connection")
            || k.eq_ignore_ascii_case("proxy-connection")
        {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes()).await?;
    upstream.write_all(&rest).await?;
    tokio::io::copy(&mut upstream, &mut client).await?;
    client.shutdown().await?;
    Ok(())
}
