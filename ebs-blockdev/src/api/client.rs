//! A minimal HTTP/1.1 client for the control API over a Unix socket or TCP (used by the
//! `ebs` CLI and tests). One request per connection (`Connection: close`).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone)]
pub enum ApiTarget {
    Unix(PathBuf),
    Tcp(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ApiCallError {
    #[error("cannot reach ebsd at {target}: {source}")]
    Unreachable { target: String, source: io::Error },
    #[error("malformed response from ebsd: {0}")]
    BadResponse(String),
    #[error("{code}: {message}")]
    Service {
        status: u16,
        code: String,
        message: String,
    },
}

pub struct ApiClient {
    target: ApiTarget,
}

/// Largest response accepted (DescribeVolumes of many volumes stays far below).
const MAX_RESPONSE: u64 = 64 << 20;

impl ApiClient {
    pub fn new(target: ApiTarget) -> Self {
        ApiClient { target }
    }

    fn target_text(&self) -> String {
        match &self.target {
            ApiTarget::Unix(path) => format!("unix:{}", path.display()),
            ApiTarget::Tcp(address) => address.clone(),
        }
    }

    /// Sends one request and returns (status, body).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), ApiCallError> {
        let reply = self.send(method, path, &[], body)?;
        Ok((reply.status, reply.body))
    }

    /// Sends one request with extra headers; returns status, headers and body.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<ApiReply, ApiCallError> {
        let unreachable = |source| ApiCallError::Unreachable {
            target: self.target_text(),
            source,
        };
        let mut stream: Box<dyn ReadWrite> = match &self.target {
            ApiTarget::Unix(path) => Box::new(UnixStream::connect(path).map_err(unreachable)?),
            ApiTarget::Tcp(address) => Box::new(TcpStream::connect(address).map_err(unreachable)?),
        };
        let unreachable = |source| ApiCallError::Unreachable {
            target: self.target_text(),
            source,
        };
        stream
            .set_timeout(Duration::from_secs(600))
            .map_err(unreachable)?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: ebsd\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if !headers
            .iter()
            .any(|(field, _)| field.eq_ignore_ascii_case("content-type"))
        {
            head.push_str("Content-Type: application/json\r\n");
        }
        for (field, value) in headers {
            head.push_str(&format!("{field}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .map_err(unreachable)?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .map_err(unreachable)?;
        parse_response(&response)
    }

    /// Calls `POST /v1/<action>`; EC2-style errors become `ApiCallError::Service`.
    pub fn call(&self, action: &str, request: &Value) -> Result<Value, ApiCallError> {
        let body = serde_json::to_vec(request)
            .map_err(|error| ApiCallError::BadResponse(error.to_string()))?;
        let (status, body) = self.request("POST", &format!("/v1/{action}"), &body)?;
        let value: Value = serde_json::from_slice(&body).map_err(|error| {
            ApiCallError::BadResponse(format!("status {status}, body not JSON: {error}"))
        })?;
        if status == 200 {
            return Ok(value);
        }
        let text = |field: &str| value["Error"][field].as_str().unwrap_or("").to_string();
        Err(ApiCallError::Service {
            status,
            code: text("Code"),
            message: text("Message"),
        })
    }
}

trait ReadWrite: Read + Write {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()>;
}

impl ReadWrite for UnixStream {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

impl ReadWrite for TcpStream {
    fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))
    }
}

/// A raw HTTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

fn parse_response(response: &[u8]) -> Result<ApiReply, ApiCallError> {
    let split = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| ApiCallError::BadResponse("no end of headers".into()))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| ApiCallError::BadResponse(format!("bad status line in {head:?}")))?;
    let body = &response[split + 4..];
    let chunked = head.lines().any(|line| {
        let line = line.to_ascii_lowercase();
        line.starts_with("transfer-encoding:") && line.contains("chunked")
    });
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(field, value)| (field.trim().to_string(), value.trim().to_string()))
        .collect();
    Ok(ApiReply {
        status,
        headers,
        body: if chunked {
            dechunk(body)?
        } else {
            body.to_vec()
        },
    })
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, ApiCallError> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or_else(|| ApiCallError::BadResponse("truncated chunk".into()))?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| ApiCallError::BadResponse(format!("bad chunk size {size_text:?}")))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            return Err(ApiCallError::BadResponse("truncated chunk".into()));
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_responses() {
        let plain = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}";
        let reply = parse_response(plain).unwrap();
        assert_eq!((reply.status, reply.body), (400, b"{}".to_vec()));
        assert_eq!(
            parse_response(plain).unwrap().header("content-length"),
            Some("2")
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let reply = parse_response(chunked).unwrap();
        assert_eq!((reply.status, reply.body), (200, b"abcde".to_vec()));
        assert!(parse_response(b"garbage").is_err());
    }
}
