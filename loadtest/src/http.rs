//! A minimal HTTP/1.1 client for the admin API used by `provision`: plain `http://` only
//! (the admin API has no TLS and belongs on a private network), persistent connections so
//! tens of thousands of account creations do not exhaust ephemeral ports, bodies framed by
//! `Content-Length` or chunked transfer coding (RFC 9112 §6, §7.1).
//!
//! Owns request writing and response parsing; it must not know about accounts or JSON.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0:?} is not an http:// URL (https is not supported; the admin API is plain HTTP)")]
    Url(String),
    #[error("cannot resolve {host}: {error}")]
    Resolve { host: String, error: String },
    #[error("{addr}: {error}")]
    Io { addr: SocketAddr, error: std::io::Error },
    #[error("{addr}: malformed response: {what}")]
    Protocol { addr: SocketAddr, what: String },
    #[error("{addr}: no response within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

/// A parsed `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    /// Without a trailing `/`; empty for the root.
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, HttpError> {
        let rest = s.strip_prefix("http://").ok_or_else(|| HttpError::Url(s.to_owned()))?;
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let bad = || HttpError::Url(s.to_owned());
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, rest) = v6.split_once(']').ok_or_else(bad)?;
            let port = match rest.strip_prefix(':') {
                Some(p) => p.parse::<u16>().map_err(|_| bad())?,
                None if rest.is_empty() => 80,
                None => return Err(bad()),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
                None => (authority, 80),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        let path = path.trim_end_matches('/');
        Ok(Url { host: host.to_owned(), port, path: if path.is_empty() { String::new() } else { format!("/{path}") } })
    }
}

/// One persistent connection to a server.
pub struct HttpClient {
    url: Url,
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

impl HttpClient {
    pub async fn new(url: &Url, timeout: Duration) -> Result<HttpClient, HttpError> {
        let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .map_err(|e| HttpError::Resolve { host: url.host.clone(), error: e.to_string() })?
            .next()
            .ok_or_else(|| HttpError::Resolve { host: url.host.clone(), error: "no address".into() })?;
        Ok(HttpClient { url: url.clone(), addr, conn: None, timeout })
    }

    /// Sends a request on the persistent connection (reconnecting once if the server closed
    /// it meanwhile) and returns the status and body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let reused = self.conn.is_some();
        match self.try_request(method, path, headers, body).await {
            Err(HttpError::Io { .. }) if reused => {
                self.conn = None;
                self.try_request(method, path, headers, body).await
            }
            r => r,
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let (addr, timeout) = (self.addr, self.timeout);
        let r = tokio::time::timeout(timeout, self.exchange(method, path, headers, body)).await;
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(HttpError::Timeout { addr, timeout })
            }
        }
    }

    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let addr = self.addr;
        let io = |error| HttpError::Io { addr, error };
        let proto = |what: &str| HttpError::Protocol { addr, what: what.to_owned() };
        if self.conn.is_none() {
            let s = TcpStream::connect(addr).await.map_err(io)?;
            s.set_nodelay(true).map_err(io)?;
            self.conn = Some(BufReader::new(s));
        }
        let Some(conn) = self.conn.as_mut() else { return Err(proto("no connection")) };
        let host =
            if self.url.port == 80 { self.url.host.clone() } else { format!("{}:{}", self.url.host, self.url.port) };
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or_default();
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        conn.get_mut().write_all(&bytes).await.map_err(io)?;

        let mut line = String::new();
        if conn.read_line(&mut line).await.map_err(io)? == 0 {
            return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| proto(&format!("bad status line {line:?}")))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            if conn.read_line(&mut line).await.map_err(io)? == 0 {
                return Err(proto("connection closed in the headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => length = Some(v.parse::<usize>().map_err(|_| proto("bad Content-Length"))?),
                    "transfer-encoding" => chunked = v.to_ascii_lowercase().contains("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).await.map_err(io)?;
                let size_text = line.trim().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size_text, 16).map_err(|_| proto("bad chunk size"))?;
                if size == 0 {
                    // Trailers end with an empty line.
                    loop {
                        line.clear();
                        if conn.read_line(&mut line).await.map_err(io)? == 0 || line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = out.len();
                out.resize(start + size, 0);
                conn.read_exact(&mut out[start..]).await.map_err(io)?;
                line.clear();
                conn.read_line(&mut line).await.map_err(io)?;
            }
        } else if let Some(n) = length {
            out.resize(n, 0);
            conn.read_exact(&mut out).await.map_err(io)?;
        } else if status != 204 && status != 304 && method != "HEAD" {
            conn.read_to_end(&mut out).await.map_err(io)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, out))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:5280").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 5280, ""));
        let u = Url::parse("http://admin.local/api/admin/").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("admin.local", 80, "/api/admin"));
        let u = Url::parse("http://[::1]:8080/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8080));
        assert!(Url::parse("https://x").is_err());
        assert!(Url::parse("http://:80").is_err());
        assert_eq!(Url::parse("http://[::1]").unwrap().port, 80);
    }

    /// A server that answers two requests on one connection, one with a length and one
    /// chunked, proves the connection is reused and both framings are read.
    #[tokio::test]
    async fn keep_alive_and_chunked() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut s = BufReader::new(s);
            let mut seen = Vec::new();
            for reply in [
                "HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello".to_owned(),
                "HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                    .to_owned(),
            ] {
                let mut req = String::new();
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    s.read_line(&mut line).await.unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    req.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                s.read_exact(&mut body).await.unwrap();
                seen.push((req, String::from_utf8(body).unwrap()));
                s.get_mut().write_all(reply.as_bytes()).await.unwrap();
            }
            seen
        });
        let url = Url::parse(&format!("http://{addr}")).unwrap();
        let mut c = HttpClient::new(&url, Duration::from_secs(5)).await.unwrap();
        let (st, body) = c.request("POST", "/admin/users", &[("X-Test", "1")], Some(b"{}")).await.unwrap();
        assert_eq!((st, body.as_slice()), (201, b"hello".as_slice()));
        let (st, body) = c.request("POST", "/admin/users", &[], Some(b"{\"a\":1}")).await.unwrap();
        assert_eq!((st, body.as_slice()), (409, b"abcde".as_slice()));
        let seen = server.await.unwrap();
        assert!(seen[0].0.starts_with("POST /admin/users HTTP/1.1\r\n"));
        assert!(seen[0].0.contains("X-Test: 1\r\n"));
        assert_eq!(seen[1].1, "{\"a\":1}");
    }
}
