//! Requests: incremental parsing with limits, and the accessors handlers need.

use super::Error;

/// Limits applied while parsing.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: usize,
    /// One path (uploads) may carry bodies up to `large_body_bytes`; empty = none.
    pub large_body_path: String,
    pub large_body_bytes: usize,
}

/// Headers parsed on the stack per request; `max_headers` above this is clamped to it.
const HEADER_SLOTS: usize = 128;

/// A complete request: head and `Content-Length` body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The raw path, without the query.
    pub path: String,
    /// The raw query after '?', without it; empty when absent.
    pub query: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub http_minor: u8,
    /// As received, names in their original case.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// Parses one request from the front of `buf`.
///
/// `Ok(None)`: more bytes are needed (nothing is consumed). `Ok(Some((request, used)))`: a
/// complete request occupying `buf[..used]`; call again on the rest for pipelined requests.
/// `Err`: answer `status()` and close. The header limit applies while waiting too, so a client
/// cannot hold an ever-growing partial header.
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, Error> {
    let slots = limits.max_headers.clamp(1, HEADER_SLOTS);
    let mut storage = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let mut parsed = httparse::Request::new(&mut storage[..slots]);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > limits.max_header_bytes {
                return Err(Error::HeadersTooLarge);
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Error::HeadersTooLarge),
        Err(httparse::Error::Version) => return Err(Error::UnsupportedVersion),
        Err(_) => {
            if buf.len() > limits.max_header_bytes {
                return Err(Error::HeadersTooLarge);
            }
            return Err(Error::Malformed("bad request line or header"));
        }
    };
    if head_len > limits.max_header_bytes {
        return Err(Error::HeadersTooLarge);
    }
    let method = parsed.method.unwrap_or("").to_string();
    let target = parsed.path.unwrap_or("");
    let http_minor = match parsed.version {
        Some(0) => 0,
        Some(1) => 1,
        _ => return Err(Error::UnsupportedVersion),
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    if !path.starts_with('/') && path != "*" {
        return Err(Error::Malformed("request target must be an absolute path"));
    }
    let mut content_length: Option<usize> = None;
    let mut headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Error::LengthRequired);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = parse_length(h.value).ok_or(Error::Malformed("bad Content-Length"))?;
            if content_length.is_some_and(|prev| prev != len) {
                return Err(Error::Malformed("conflicting Content-Length headers"));
            }
            content_length = Some(len);
        }
        headers.push((h.name.to_string(), h.value.to_vec()));
    }
    let body_len = content_length.unwrap_or(0);
    let limit = if !limits.large_body_path.is_empty() && path == limits.large_body_path {
        limits.large_body_bytes
    } else {
        limits.max_body_bytes
    };
    if body_len > limit {
        return Err(Error::BodyTooLarge { limit });
    }
    let total = head_len + body_len;
    let Some(body) = buf.get(head_len..total) else {
        return Ok(None);
    };
    Ok(Some((
        Request {
            method,
            path: path.to_string(),
            query: query.to_string(),
            http_minor,
            headers,
            body: body.to_vec(),
        },
        total,
    )))
}

/// Content-Length: ASCII digits only (no sign, no spaces inside), no overflow.
fn parse_length(value: &[u8]) -> Option<usize> {
    let v = trim(value);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// True when the comma-separated token list `value` contains `token` (case-insensitive).
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| trim(t).eq_ignore_ascii_case(token.as_bytes()))
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first header with this name as trimmed UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|v| std::str::from_utf8(trim(v)).ok())
    }

    /// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 only with
    /// `Connection: keep-alive`.
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("connection");
        if self.http_minor >= 1 {
            !conn.is_some_and(|v| has_token(v, "close"))
        } else {
            conn.is_some_and(|v| has_token(v, "keep-alive"))
        }
    }

    /// Decoded query parameters, in order.
    pub fn query_params(&self) -> Vec<(String, String)> {
        parse_form(&self.query)
    }

    /// The first query parameter with this name.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_params()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The credentials of `Authorization: Bearer <token>` (the scheme is case-insensitive,
    /// RFC 7235), trimmed; None without that header or scheme.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header_str("authorization")?;
        let (scheme, rest) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|t| !t.is_empty())
    }

    /// The value of the cookie `name` from the `Cookie` headers (RFC 6265: `a=b; c=d`, and a
    /// browser may split them over several headers). None when absent or empty.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .filter_map(|(_, v)| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim().trim_matches('"'))
            .filter(|v| !v.is_empty())
    }

    /// Content type without parameters, lowercase.
    fn media_type(&self) -> String {
        self.header_str("content-type")
            .map(|ct| {
                ct.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default()
    }

    /// Content-Type is application/json (any charset).
    pub fn is_json(&self) -> bool {
        self.media_type() == "application/json"
    }

    /// The body as parameters: a form body (or one without a content type) decoded like a query;
    /// a JSON object flattened to (key, value as string): strings as they are, numbers and
    /// booleans in their JSON spelling, null skipped, nested values as their JSON text.
    pub fn body_params(&self) -> Result<Vec<(String, String)>, &'static str> {
        if self.is_json() {
            let value: serde_json::Value =
                serde_json::from_slice(&self.body).map_err(|_| "the body is not valid JSON")?;
            let serde_json::Value::Object(map) = value else {
                return Err("the JSON body must be an object");
            };
            return Ok(map
                .into_iter()
                .filter_map(|(k, v)| match v {
                    serde_json::Value::Null => None,
                    serde_json::Value::String(s) => Some((k, s)),
                    other => Some((k, other.to_string())),
                })
                .collect());
        }
        let text = String::from_utf8_lossy(&self.body);
        Ok(parse_form(&text))
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (url_decode(k), url_decode(v)),
            None => (url_decode(pair), String::new()),
        })
        .collect()
}

/// Decodes form encoding: '+' is a space, `%XX` a byte; invalid escapes stay as they are and
/// invalid UTF-8 is replaced.
pub fn url_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Encodes like PHP's `urlencode` (RFC 1738 form): ASCII letters, digits and `-_.` stay, a space
/// becomes '+', every other byte `%XX` in uppercase hex. The doLogin signature depends on this
/// exact spelling.
pub fn url_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 15) as usize] as char);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_header_bytes: 1024,
            max_headers: 16,
            max_body_bytes: 100,
            large_body_path: "/up".into(),
            large_body_bytes: 1000,
        }
    }

    fn parse(b: &[u8]) -> Result<Option<(Request, usize)>, Error> {
        parse_request(b, &limits())
    }

    fn with_headers(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            path: "/".into(),
            query: String::new(),
            http_minor: 1,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn bearer_tokens_and_cookies() {
        assert_eq!(
            with_headers(&[("Authorization", "Bearer abc ")]).bearer(),
            Some("abc")
        );
        assert_eq!(
            with_headers(&[("authorization", "bearer abc")]).bearer(),
            Some("abc")
        );
        assert_eq!(
            with_headers(&[("Authorization", "Basic abc")]).bearer(),
            None
        );
        assert_eq!(
            with_headers(&[("Authorization", "Bearer  ")]).bearer(),
            None
        );
        assert_eq!(with_headers(&[]).bearer(), None);
        let r = with_headers(&[("Cookie", "a=1; wxchat_token=t0k"), ("Cookie", "b=\"2\"")]);
        assert_eq!(r.cookie("wxchat_token"), Some("t0k"));
        assert_eq!(r.cookie("b"), Some("2"));
        assert_eq!(r.cookie("c"), None);
        assert_eq!(
            with_headers(&[("Cookie", "wxchat_token=")]).cookie("wxchat_token"),
            None
        );
    }

    #[test]
    fn the_large_body_path_has_its_own_limit() {
        assert_eq!(
            parse(b"POST /up HTTP/1.1\r\nContent-Length: 500\r\n\r\n").unwrap(),
            None
        );
        assert_eq!(
            parse(b"POST /up HTTP/1.1\r\nContent-Length: 1001\r\n\r\n"),
            Err(Error::BodyTooLarge { limit: 1000 })
        );
        assert_eq!(
            parse(b"POST /other HTTP/1.1\r\nContent-Length: 500\r\n\r\n"),
            Err(Error::BodyTooLarge { limit: 100 })
        );
    }

    #[test]
    fn simple_get() {
        let raw = b"GET /ws?token=a%2Bb&x=1+2 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
        let (r, used) = parse(raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/ws");
        assert_eq!(r.query, "token=a%2Bb&x=1+2");
        assert_eq!(r.query_param("token").as_deref(), Some("a+b"));
        assert_eq!(r.query_param("x").as_deref(), Some("1 2"));
        assert_eq!(r.header("UPGRADE"), Some(&b"websocket"[..]));
        assert_eq!(r.http_minor, 1);
        assert!(r.keep_alive());
    }

    #[test]
    fn pipelined_requests_parse_one_by_one() {
        let raw = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\n\r\n";
        let (a, n1) = parse(raw).unwrap().unwrap();
        let (b, n2) = parse(&raw[n1..]).unwrap().unwrap();
        let (c, n3) = parse(&raw[n1 + n2..]).unwrap().unwrap();
        assert_eq!(
            (a.path.as_str(), b.path.as_str(), c.path.as_str()),
            ("/a", "/b", "/c")
        );
        assert_eq!(b.body, b"xyz");
        assert_eq!(n1 + n2 + n3, raw.len());
    }

    #[test]
    fn every_split_point_waits_then_yields_the_same_request() {
        let raw = b"POST /x?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello";
        let whole = parse(raw).unwrap().unwrap();
        for cut in 0..raw.len() {
            assert_eq!(parse(&raw[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(whole.0.body, b"hello");
        assert_eq!(whole.1, raw.len());
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"),
            Err(Error::BodyTooLarge { limit: 100 })
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(parse(big.as_bytes()), Err(Error::HeadersTooLarge));
        let partial = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000));
        assert_eq!(parse(partial.as_bytes()), Err(Error::HeadersTooLarge));
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..20 {
            many.push_str(&format!("H{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert_eq!(parse(many.as_bytes()), Err(Error::HeadersTooLarge));
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Error::LengthRequired)
        );
        assert!(matches!(
            parse(b"\x00\x01 garbage\r\n\r\n"),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Err(Error::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/2.0\r\n\r\n"),
            Err(Error::UnsupportedVersion) | Err(Error::Malformed(_))
        ));
        // Identical duplicates are harmless.
        assert!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &[u8]| parse(raw).unwrap().unwrap().0.keep_alive();
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: foo, Close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn form_and_json_bodies() {
        let body = "name=%E4%BD%A0+x&bad=%zz&flag";
        let form = format!(
            "POST / HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (r, _) = parse(form.as_bytes()).unwrap().unwrap();
        assert_eq!(
            r.body_params().unwrap(),
            vec![
                ("name".to_string(), "你 x".to_string()),
                ("bad".to_string(), "%zz".to_string()),
                ("flag".to_string(), String::new()),
            ]
        );
        let body = r#"{"a":"x","n":5,"b":true,"z":null,"o":{"k":1}}"#;
        let raw = format!(
            "POST / HTTP/1.1\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let (r, _) = parse(raw.as_bytes()).unwrap().unwrap();
        assert!(r.is_json());
        let p = r.body_params().unwrap();
        assert!(p.contains(&("a".into(), "x".into())));
        assert!(p.contains(&("n".into(), "5".into())));
        assert!(p.contains(&("b".into(), "true".into())));
        assert!(p.contains(&("o".into(), r#"{"k":1}"#.into())));
        assert!(!p.iter().any(|(k, _)| k == "z"));
        let bad =
            "POST / HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n[1]";
        let (r, _) = parse(bad.as_bytes()).unwrap().unwrap();
        assert!(r.body_params().is_err());
    }

    #[test]
    fn url_encode_matches_php_urlencode() {
        assert_eq!(url_encode("a b&c=d/é~*"), "a+b%26c%3Dd%2F%C3%A9%7E%2A");
        assert_eq!(url_encode("AZaz09-_."), "AZaz09-_.");
        assert_eq!(url_decode(&url_encode("你好 +%")), "你好 +%");
    }

    #[test]
    fn token_lists() {
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(!has_token(b"keep-alive", "upgrade"));
    }
}

#[cfg(test)]
mod robustness {
    use super::*;

    /// Random and mutated requests: the parser may refuse them but must never panic, and a
    /// success never claims more bytes than it was given.
    #[test]
    fn hostile_input_never_panics() {
        let limits = Limits {
            max_header_bytes: 512,
            max_headers: 8,
            max_body_bytes: 64,
            large_body_path: String::new(),
            large_body_bytes: 0,
        };
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        };
        let valid = b"POST /a/b?x=%41&y=+ HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody".to_vec();
        for round in 0..20_000 {
            let input: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 200) as usize;
                (0..len).map(|_| next() as u8).collect()
            } else {
                let mut v = valid.clone();
                for _ in 0..(1 + next() % 4) {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                v
            };
            for cut in [input.len(), input.len() / 2] {
                if let Ok(Some((req, used))) = parse_request(&input[..cut], &limits) {
                    assert!(used <= cut);
                    let _ = (req.keep_alive(), req.query_params(), req.body_params());
                }
            }
        }
    }
}
