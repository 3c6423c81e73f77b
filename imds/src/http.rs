//! A small, bounded HTTP/1.x request parser and response writer.
//!
//! Transport-agnostic: front ends append received bytes to a buffer and call
//! [`parse_request`] until it returns a request or an error. The parser never allocates
//! more than the limits allow, never panics on input (fuzzed in imds/fuzz), and accepts
//! only what IMDS needs: GET/PUT-style requests with at most a small body, which it skips.

use std::fmt::Write as _;

/// Longest request line plus headers we accept; EC2 clients send a few hundred bytes.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
pub const MAX_HEADERS: usize = 64;
/// Bodies are never meaningful to IMDS; small ones are read and discarded.
pub const MAX_BODY_BYTES: usize = 4 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("malformed request line")]
    BadRequestLine,
    #[error("unsupported HTTP version")]
    BadVersion,
    #[error("malformed header line")]
    BadHeader,
    #[error("invalid or conflicting Content-Length")]
    BadContentLength,
    #[error("body larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("Transfer-Encoding is not supported")]
    TransferEncoding,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// As sent (methods are case-sensitive in HTTP).
    pub method: String,
    /// The request target, query string included.
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names lower-cased, values trimmed, in arrival order.
    pub headers: Vec<(String, String)>,
    /// Whether the client lets the connection stay open after the response.
    pub keep_alive: bool,
}

impl Request {
    /// The first value of a header (`name` lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(header, _)| header == name)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete request that used `consumed` bytes of the buffer (body included).
    Complete { request: Request, consumed: usize },
    /// More bytes are needed.
    Partial,
}

fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// Finds the end of the head: the index just past the blank line (CRLF CRLF or bare LF LF).
fn head_end(buffer: &[u8]) -> Option<usize> {
    let mut index = 0;
    while let Some(offset) = buffer[index..].iter().position(|&byte| byte == b'\n') {
        let line_end = index + offset;
        let next = line_end + 1;
        match buffer.get(next) {
            Some(b'\n') => return Some(next + 1),
            Some(b'\r') if buffer.get(next + 1) == Some(&b'\n') => return Some(next + 2),
            _ => index = next,
        }
    }
    None
}

/// Parses one request from the start of `buffer`.
pub fn parse_request(buffer: &[u8]) -> Result<Parsed, HttpError> {
    // Clients may send stray CRLFs between keep-alive requests (RFC 9112 2.2).
    let leading = buffer
        .iter()
        .take_while(|&&byte| byte == b'\r' || byte == b'\n')
        .count();
    let buffer_after_blank = &buffer[leading..];
    let Some(head_len) = head_end(buffer_after_blank) else {
        if buffer_after_blank.len() > MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLarge);
        }
        return Ok(Parsed::Partial);
    };
    if head_len > MAX_HEAD_BYTES {
        return Err(HttpError::HeadTooLarge);
    }
    let head = &buffer_after_blank[..head_len];
    let mut lines = head
        .split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let request_line = lines.next().ok_or(HttpError::BadRequestLine)?;
    let (method, target, minor_version) = parse_request_line(request_line)?;

    let mut headers: Vec<(String, String)> = Vec::new();
    let mut content_length: Option<usize> = None;
    for line in lines {
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        let colon = line
            .iter()
            .position(|&byte| byte == b':')
            .ok_or(HttpError::BadHeader)?;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        // No obsolete line folding, no whitespace before the colon (RFC 9112 5.1).
        if name.is_empty() || !name.iter().all(|&byte| is_token_byte(byte)) {
            return Err(HttpError::BadHeader);
        }
        if value
            .iter()
            .any(|&byte| byte == 0 || byte == b'\r' || byte == b'\n')
        {
            return Err(HttpError::BadHeader);
        }
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = String::from_utf8_lossy(value).trim().to_string();
        if name == "content-length" {
            let length: usize = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
                value.parse().map_err(|_| HttpError::BadContentLength)?
            } else {
                return Err(HttpError::BadContentLength);
            };
            if content_length.is_some_and(|previous| previous != length) {
                return Err(HttpError::BadContentLength);
            }
            content_length = Some(length);
        }
        if name == "transfer-encoding" {
            return Err(HttpError::TransferEncoding);
        }
        headers.push((name, value));
    }

    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY_BYTES {
        return Err(HttpError::BodyTooLarge);
    }
    let consumed = leading + head_len + body_len;
    if buffer.len() < consumed {
        return Ok(Parsed::Partial);
    }
    let connection = headers
        .iter()
        .filter(|(name, _)| name == "connection")
        .flat_map(|(_, value)| value.split(','))
        .map(|option| option.trim().to_ascii_lowercase())
        .collect::<Vec<_>>();
    let keep_alive = if minor_version == 0 {
        connection.iter().any(|option| option == "keep-alive")
    } else {
        !connection.iter().any(|option| option == "close")
    };
    Ok(Parsed::Complete {
        request: Request {
            method,
            target,
            minor_version,
            headers,
            keep_alive,
        },
        consumed,
    })
}

fn parse_request_line(line: &[u8]) -> Result<(String, String, u8), HttpError> {
    let mut parts = line.split(|&byte| byte == b' ');
    let method = parts.next().ok_or(HttpError::BadRequestLine)?;
    let target = parts.next().ok_or(HttpError::BadRequestLine)?;
    let version = parts.next().ok_or(HttpError::BadRequestLine)?;
    if parts.next().is_some()
        || method.is_empty()
        || !method.iter().all(|&byte| is_token_byte(byte))
        || target.is_empty()
        || !target.iter().all(|&byte| byte.is_ascii_graphic())
    {
        return Err(HttpError::BadRequestLine);
    }
    let minor_version = match version {
        b"HTTP/1.1" => 1,
        b"HTTP/1.0" => 0,
        _ => return Err(HttpError::BadVersion),
    };
    Ok((
        String::from_utf8_lossy(method).into_owned(),
        String::from_utf8_lossy(target).into_owned(),
        minor_version,
    ))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// IP TTL the response's packets must carry (the token hop limit), if any.
    pub ip_ttl: Option<u8>,
    /// Close the connection after this response (errors in the byte stream).
    pub close: bool,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body: body.into(),
            ip_ttl: None,
            close: false,
        }
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/plain", body)
    }

    /// The response to a byte stream we could not parse; the connection closes after it.
    pub fn bad_request() -> Response {
        let mut response = Response::text(400, "Bad Request");
        response.close = true;
        response
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Serialises status line, headers and body into `out`.
    pub fn write_to(&self, keep_alive: bool, date: &str, out: &mut Vec<u8>) {
        let mut head = String::with_capacity(160);
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\n",
            self.status,
            reason_phrase(self.status)
        );
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let _ = write!(
            head,
            "Content-Length: {}\r\nDate: {date}\r\nServer: EC2ws\r\nConnection: {}\r\n\r\n",
            self.body.len(),
            if keep_alive && !self.close {
                "keep-alive"
            } else {
                "close"
            }
        );
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&self.body);
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(input: &[u8]) -> (Request, usize) {
        match parse_request(input) {
            Ok(Parsed::Complete { request, consumed }) => (request, consumed),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_token_put() {
        let input =
            b"PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
        let (request, consumed) = complete(input);
        assert_eq!(consumed, input.len());
        assert_eq!(request.method, "PUT");
        assert_eq!(request.target, "/latest/api/token");
        assert_eq!(
            request.header("x-aws-ec2-metadata-token-ttl-seconds"),
            Some("21600")
        );
        assert!(request.keep_alive);
    }

    #[test]
    fn every_prefix_is_partial_and_pipelined_requests_split() {
        let one = b"GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..one.len() {
            assert_eq!(parse_request(&one[..cut]), Ok(Parsed::Partial), "cut {cut}");
        }
        let mut two = one.to_vec();
        two.extend_from_slice(b"GET /b HTTP/1.0\r\n\r\n");
        let (first, consumed) = complete(&two);
        assert_eq!(first.target, "/latest/meta-data/");
        let (second, _) = complete(&two[consumed..]);
        assert_eq!(second.target, "/b");
        assert!(!second.keep_alive, "HTTP/1.0 closes by default");
    }

    #[test]
    fn bodies_are_skipped_and_bounded() {
        let input = b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET";
        let (_, consumed) = complete(input);
        assert_eq!(&input[consumed..], b"GET");
        assert_eq!(
            parse_request(b"PUT /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nab"),
            Ok(Parsed::Partial)
        );
        assert_eq!(
            parse_request(b"PUT /x HTTP/1.1\r\nContent-Length: 99999\r\n\r\n"),
            Err(HttpError::BodyTooLarge)
        );
    }

    #[test]
    fn malformed_input_is_rejected() {
        let cases: &[(&[u8], HttpError)] = &[
            (b"GET /\r\n\r\n", HttpError::BadRequestLine),
            (b"GET / HTTP/2.0\r\n\r\n", HttpError::BadVersion),
            (b"G\x01T / HTTP/1.1\r\n\r\n", HttpError::BadRequestLine),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", HttpError::BadHeader),
            (
                b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
                HttpError::BadHeader,
            ),
            (
                b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
                HttpError::BadHeader,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                HttpError::BadContentLength,
            ),
            (
                b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                HttpError::BadContentLength,
            ),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                HttpError::TransferEncoding,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_request(input),
                Err(*expected),
                "{}",
                String::from_utf8_lossy(input)
            );
        }
        let huge = vec![b'a'; MAX_HEAD_BYTES + 1];
        assert_eq!(parse_request(&huge), Err(HttpError::HeadTooLarge));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for index in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("h{index}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&many), Err(HttpError::TooManyHeaders));
    }

    #[test]
    fn response_serialisation() {
        let response = Response::text(200, "i-1").with_header("X-Test", "yes");
        let mut out = Vec::new();
        response.write_to(true, "Thu, 01 Jan 1970 00:00:00 GMT", &mut out);
        let text = String::from_utf8(out).expect("ascii");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 3\r\n"));
        assert!(text.contains("X-Test: yes\r\n"));
        assert!(text.contains("Connection: keep-alive\r\n"));
        assert!(text.ends_with("\r\n\r\ni-1"));
        let mut out = Vec::new();
        Response::bad_request().write_to(true, "d", &mut out);
        assert!(String::from_utf8_lossy(&out).contains("Connection: close"));
    }
}
