//! The HTTP/1.1 wire: requests written into a reused buffer, responses read
//! head-first with `httparse`. Redirects are never followed.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Response heads larger than this are an error (a redirect head is ~400 B).
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 48;

/// What one request carries beyond the code.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    pub user_agent: &'a str,
    pub referer: Option<&'a str>,
    pub sub: Option<&'a str>,
    pub close: bool,
}

/// Writes `GET /{code}` into `out` (cleared first).
pub fn write_request(out: &mut Vec<u8>, host: &str, code: &str, extras: Extras<'_>) {
    out.clear();
    out.extend_from_slice(b"GET /");
    out.extend_from_slice(code.as_bytes());
    if let Some(sub) = extras.sub {
        out.extend_from_slice(b"?sub=");
        out.extend_from_slice(sub.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nUser-Agent: ");
    out.extend_from_slice(extras.user_agent.as_bytes());
    if let Some(referer) = extras.referer {
        out.extend_from_slice(b"\r\nReferer: ");
        out.extend_from_slice(referer.as_bytes());
    }
    if extras.close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// The parts of a response the generator looks at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookie: Option<String>,
    pub cache_control: Option<String>,
    /// The server announced it will close the connection.
    pub close: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed mid-response")]
    Eof,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

/// Sends `request` and reads one whole response. `buf` is scratch space
/// reused across calls. With `want_headers` false only the status and the
/// connection disposition are extracted (the cheap path for unsampled
/// responses).
pub async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
    want_headers: bool,
) -> Result<Head, WireError> {
    stream.write_all(request).await?;
    buf.clear();
    let (head, head_len, body_len) = loop {
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(WireError::Malformed("head too large"));
        }
        // `read_buf` fills spare capacity: no zeroing per read.
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            return Err(WireError::Eof);
        }
        if let Some(parsed) = parse_head(buf, want_headers)? {
            break parsed;
        }
    };
    let mut have = buf.len() - head_len;
    while have < body_len {
        buf.reserve((body_len - have).min(64 * 1024));
        let n = stream.read_buf(buf).await?;
        if n == 0 {
            return Err(WireError::Eof);
        }
        have += n;
    }
    Ok(head)
}

/// Parses a response head; `None` while it is incomplete. Returns the head,
/// its length and the body length.
fn parse_head(buf: &[u8], want_headers: bool) -> Result<Option<(Head, usize, usize)>, WireError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(WireError::Malformed("unparsable head")),
    };
    let mut head = Head {
        status: resp.code.unwrap_or(0),
        close: resp.version == Some(0),
        ..Head::default()
    };
    let mut body_len = 0usize;
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or(WireError::Malformed("content-length"))?;
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close = h.value.eq_ignore_ascii_case(b"close");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(WireError::Malformed("chunked bodies are not expected"));
        } else if want_headers {
            if h.name.eq_ignore_ascii_case("location") {
                head.location = Some(text(h.value));
            } else if h.name.eq_ignore_ascii_case("set-cookie") {
                head.set_cookie = Some(text(h.value));
            } else if h.name.eq_ignore_ascii_case("cache-control") {
                head.cache_control = Some(text(h.value));
            }
        }
    }
    Ok(Some((head, head_len, body_len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_optional_parts_only_when_asked() {
        let mut out = Vec::new();
        write_request(&mut out, "h:1", "abc", Extras::default());
        assert_eq!(
            out,
            b"GET /abc HTTP/1.1\r\nHost: h:1\r\nUser-Agent: \r\n\r\n"
        );
        let extras = Extras {
            user_agent: "UA",
            referer: Some("https://r/"),
            sub: Some("s1"),
            close: true,
        };
        write_request(&mut out, "h", "x", extras);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x?sub=s1 HTTP/1.1\r\nHost: h\r\nUser-Agent: UA\r\nReferer: https://r/\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn heads_are_parsed_only_once_complete() {
        let full = b"HTTP/1.1 302 Found\r\nLocation: https://d/\r\nSet-Cookie: ce_click=abc; Path=/\r\ncontent-length: 2\r\n\r\nok";
        assert!(parse_head(&full[..20], true).unwrap().is_none());
        let (head, len, body) = parse_head(full, true).unwrap().unwrap();
        assert_eq!(head.status, 302);
        assert_eq!(head.location.as_deref(), Some("https://d/"));
        assert_eq!(head.set_cookie.as_deref(), Some("ce_click=abc; Path=/"));
        assert_eq!((len, body), (full.len() - 2, 2));
        let (cheap, _, _) = parse_head(full, false).unwrap().unwrap();
        assert_eq!(cheap.location, None);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n", true).is_err());
        let bad_len = b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n";
        assert!(parse_head(bad_len, true).is_err());
    }
}
