//! A hand-written HTTP/1.1 client and SSE reader (slow, torn and hostile requests included).

use super::*;

// ---------------------------------------------------------------------------------------------
// A hand-written HTTP/1.1 client

pub(super) fn connect(addr: SocketAddr, read_timeout: Duration) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(read_timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// The request head, `Connection: close`, with `headers` as given (nothing added but Host
/// unless `host` is empty).
pub(super) fn head(method: &str, path: &str, host: &str, headers: &[(&str, String)], content_length: Option<usize>) -> Vec<u8> {
    let mut h = format!("{method} {path} HTTP/1.1\r\n");
    if !host.is_empty() {
        h.push_str(&format!("Host: {host}\r\n"));
    }
    h.push_str("Connection: close\r\n");
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(n) = content_length {
        h.push_str(&format!("Content-Length: {n}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

pub(super) fn auth_json() -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {TOKEN}")), ("Content-Type", "application/json".into())]
}

pub(super) enum BodyMode {
    Chunked { left: usize, done: bool },
    Length(usize),
    Eof,
}

/// A response body: chunked, sized or to the end of the connection.
pub(super) struct Body {
    pub(super) inner: BufReader<TcpStream>,
    pub(super) mode: BodyMode,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed inside the body");
        match &mut self.mode {
            BodyMode::Eof => self.inner.read(buf),
            BodyMode::Length(left) => {
                if *left == 0 || buf.is_empty() {
                    return Ok(0);
                }
                let take = buf.len().min(*left);
                let n = self.inner.read(&mut buf[..take])?;
                if n == 0 {
                    return Err(eof());
                }
                *left -= n;
                Ok(n)
            }
            BodyMode::Chunked { left, done } => {
                if *done || buf.is_empty() {
                    return Ok(0);
                }
                if *left == 0 {
                    let mut line = String::new();
                    if self.inner.read_line(&mut line)? == 0 {
                        return Err(eof());
                    }
                    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad chunk size {line:?}")))?;
                    if size == 0 {
                        loop {
                            line.clear();
                            if self.inner.read_line(&mut line)? == 0 || line.trim().is_empty() {
                                break;
                            }
                        }
                        *done = true;
                        return Ok(0);
                    }
                    *left = size;
                }
                let take = buf.len().min(*left);
                let n = self.inner.read(&mut buf[..take])?;
                if n == 0 {
                    return Err(eof());
                }
                *left -= n;
                if *left == 0 {
                    let mut crlf = String::new();
                    self.inner.read_line(&mut crlf)?;
                }
                Ok(n)
            }
        }
    }
}

pub(super) struct Response {
    pub(super) status: u16,
    pub(super) headers: Vec<(String, String)>,
    pub(super) body: BufReader<Body>,
}

impl Response {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub(super) fn text(mut self) -> std::io::Result<String> {
        let mut s = String::new();
        self.body.read_to_string(&mut s)?;
        Ok(s)
    }
}

pub(super) fn read_response(stream: TcpStream) -> std::io::Result<Response> {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before a status line"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed inside the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let mode = if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        BodyMode::Chunked { left: 0, done: false }
    } else if let Some(n) = get("content-length").and_then(|v| v.parse().ok()) {
        BodyMode::Length(n)
    } else {
        BodyMode::Eof
    };
    Ok(Response { status, headers, body: BufReader::new(Body { inner: r, mode }) })
}

/// Sends a whole request and reads the response head.
pub(super) fn request(ctx: &Ctx, method: &str, path: &str, headers: &[(&str, String)], body: &[u8], timeout: Duration) -> std::io::Result<Response> {
    let mut s = connect(ctx.addr, timeout)?;
    let mut req = head(method, path, &ctx.host, headers, Some(body.len()));
    req.extend_from_slice(body);
    s.write_all(&req)?;
    read_response(s)
}

/// One Server-Sent Event: its `event:` name (empty for OpenAI's unnamed ones) and `data:`.
pub(super) struct Sse {
    pub(super) event: String,
    pub(super) data: String,
}

pub(super) fn next_sse(r: &mut impl BufRead) -> std::io::Result<Option<Sse>> {
    let (mut event, mut data) = (String::new(), String::new());
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            if event.is_empty() && data.is_empty() {
                continue; // keep-alive padding
            }
            return Ok(Some(Sse { event, data }));
        }
        if let Some(v) = l.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client mix
