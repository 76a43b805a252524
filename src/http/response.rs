//! Responses and their serialisation.

/// An HTTP response; `Content-Length` and `Connection` are added when serialised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn with_body(self, content_type: &str, body: Vec<u8>) -> Response {
        let mut r = self.with_header("Content-Type", content_type);
        r.body = body;
        r
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response::new(status).with_body(
            "application/json; charset=utf-8",
            value.to_string().into_bytes(),
        )
    }

    pub fn text(status: u16, body: &str) -> Response {
        Response::new(status).with_body("text/plain; charset=utf-8", body.as_bytes().to_vec())
    }

    /// `{"code": status, "msg": msg}` with that HTTP status.
    pub fn error(status: u16, msg: &str) -> Response {
        Response::json(status, &serde_json::json!({ "code": status, "msg": msg }))
    }

    /// The bytes on the wire. `head_only` (HEAD requests) keeps the real Content-Length but sends
    /// no body; `keep_alive = false` adds `Connection: close`.
    pub fn to_bytes(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\n",
                self.status,
                reason_phrase(self.status)
            )
            .as_bytes(),
        );
        for (k, v) in &self.headers {
            // Header injection guard: values never carry line breaks.
            let v: String = v.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        let informational = self.status < 200 || self.status == 204 || self.status == 304;
        if !informational {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && !informational {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// Standard reason phrases.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes() {
        let r = Response::text(200, "hi").with_header("X-A", "1\r\nInjected: y");
        assert_eq!(
            r.to_bytes(true, false),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-A: 1Injected: y\r\nContent-Length: 2\r\n\r\nhi".to_vec()
        );
        assert_eq!(
            r.to_bytes(false, true),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nX-A: 1Injected: y\r\nContent-Length: 2\r\nConnection: close\r\n\r\n".to_vec()
        );
        let e = Response::error(404, "nope");
        assert_eq!(e.body, br#"{"code":404,"msg":"nope"}"#.to_vec());
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(799), "Unknown");
    }
}
