//! A small, bounded HTTP/1.1 request parser and response writer for the
//! API socket. Requests are read incrementally; anything malformed or over
//! the limits becomes an error the server answers with 400 (or 413).

use std::io::{self, Read, Write};

pub const MAX_HEADER_BYTES: usize = 16 * 1024;
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
    pub keep_alive: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request headers exceed {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("request body of {0} bytes exceeds {MAX_BODY_BYTES} bytes")]
    BodyTooLarge(usize),
    #[error("connection closed")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

impl HttpError {
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BodyTooLarge(_) | HttpError::HeadersTooLarge => 413,
            _ => 400,
        }
    }
}

/// Reads requests from one connection, keeping bytes that arrived early
/// (pipelining) for the next request.
pub struct RequestReader<R> {
    stream: R,
    buf: Vec<u8>,
}

fn find_header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

impl<R: Read> RequestReader<R> {
    pub fn new(stream: R) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    fn fill(&mut self) -> Result<(), HttpError> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(HttpError::Closed);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    pub fn next_request(&mut self) -> Result<Request, HttpError> {
        let head_end = loop {
            if let Some(end) = find_header_end(&self.buf) {
                break end;
            }
            if self.buf.len() > MAX_HEADER_BYTES {
                return Err(HttpError::HeadersTooLarge);
            }
            self.fill()?;
        };
        if head_end > MAX_HEADER_BYTES {
            return Err(HttpError::HeadersTooLarge);
        }
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| HttpError::Malformed("headers are not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let request_line = lines.next().ok_or(HttpError::Malformed("empty request"))?;
        let mut parts = request_line.split(' ');
        let (method, path, version) = match (parts.next(), parts.next(), parts.next(), parts.next())
        {
            (Some(m), Some(p), Some(v), None) => (m, p, v),
            _ => return Err(HttpError::Malformed("bad request line")),
        };
        if !method.bytes().all(|b| b.is_ascii_uppercase()) || method.is_empty() {
            return Err(HttpError::Malformed("bad method"));
        }
        if !path.starts_with('/') {
            return Err(HttpError::Malformed("path must start with '/'"));
        }
        let mut keep_alive = match version {
            "HTTP/1.1" => true,
            "HTTP/1.0" => false,
            _ => return Err(HttpError::Malformed("unsupported HTTP version")),
        };
        let mut content_length = 0usize;
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line
                .split_once(':')
                .ok_or(HttpError::Malformed("header without ':'"))?;
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => {
                    content_length = value
                        .parse()
                        .map_err(|_| HttpError::Malformed("bad Content-Length"))?;
                }
                "transfer-encoding" => {
                    return Err(HttpError::Malformed("Transfer-Encoding is not supported"))
                }
                "connection" => {
                    if value.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if value.eq_ignore_ascii_case("keep-alive") {
                        keep_alive = true;
                    }
                }
                _ => {}
            }
        }
        if content_length > MAX_BODY_BYTES {
            return Err(HttpError::BodyTooLarge(content_length));
        }
        let method = method.to_string();
        let path = path.to_string();
        while self.buf.len() < head_end + content_length {
            self.fill()?;
        }
        let body = self.buf[head_end..head_end + content_length].to_vec();
        self.buf.drain(..head_end + content_length);
        Ok(Request {
            method,
            path,
            body,
            keep_alive,
        })
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        503 => "Service Unavailable",
        500 => "Internal Server Error",
        _ => "Unknown",
    }
}

pub fn write_response<W: Write>(
    out: &mut W,
    status: u16,
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\nServer: vmm\r\n", reason(status));
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(body)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out one byte at a time: the slowest client.
    struct Trickle(Vec<u8>, usize);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[self.1];
            self.1 += 1;
            Ok(1)
        }
    }

    #[test]
    fn parses_pipelined_requests_from_a_trickle() {
        let raw = b"PUT /machine-config HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec();
        let mut r = RequestReader::new(Trickle(raw, 0));
        let a = r.next_request().unwrap();
        assert_eq!(
            (a.method.as_str(), a.path.as_str(), a.body.as_slice()),
            ("PUT", "/machine-config", &b"hello"[..])
        );
        assert!(a.keep_alive);
        let b = r.next_request().unwrap();
        assert_eq!(b.path, "/");
        assert!(!b.keep_alive);
        assert!(matches!(r.next_request(), Err(HttpError::Closed)));
    }

    #[test]
    fn rejects_bad_and_oversized_requests() {
        let bad = |raw: &[u8]| RequestReader::new(raw).next_request().unwrap_err();
        assert!(matches!(bad(b"GARBAGE\r\n\r\n"), HttpError::Malformed(_)));
        assert!(matches!(
            bad(b"GET x HTTP/1.1\r\n\r\n"),
            HttpError::Malformed(_)
        ));
        assert!(matches!(
            bad(b"GET / HTTP/2\r\n\r\n"),
            HttpError::Malformed(_)
        ));
        assert!(matches!(
            bad(b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            HttpError::BodyTooLarge(_)
        ));
        assert!(matches!(
            bad(b"PUT / HTTP/1.1\r\nContent-Length: nope\r\n\r\n"),
            HttpError::Malformed(_)
        ));
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEADER_BYTES + 10));
        assert!(matches!(bad(&huge), HttpError::HeadersTooLarge));
    }

    #[test]
    fn response_has_length_and_close() {
        let mut out = Vec::new();
        write_response(&mut out, 400, b"{}", false).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(s.contains("Content-Length: 2\r\n") && s.contains("Connection: close"));
    }
}
