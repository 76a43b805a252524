//! Uploads in an S3-compatible bucket (AWS S3, Tencent COS, Aliyun OSS, MinIO): every node of a
//! cluster stores and reads the same objects, named `<s3_prefix><sha256>.<ext>` like the files of
//! the local store. Requests are signed by `rusty-s3` (SigV4 in the query string, no I/O of its
//! own) and sent with the blocking `ureq` agent, so every call here runs on a worker.
//!
//! `serve = "proxy"`: `GET /files/<name>` streams the object back through this server.
//! `serve = "redirect"`: it answers 302 to a presigned GET valid `s3_url_ttl_s`, after a HEAD
//! that turns a missing object into this server's own 404.

use super::{content_type_of, name_for, FileStore, Served};
use crate::config::UploadConfig;
use rusty_s3::{Bucket, BucketError, Credentials, S3Action, UrlStyle};
use std::io;
use std::time::Duration;

/// Validity of the URLs of this server's own requests (sent at once).
const REQUEST_TTL: Duration = Duration::from_secs(60);
/// Most bytes of an error reply read (for its `<Code>`).
const MAX_ERROR_BODY: u64 = 4096;
/// Most bytes read of one object, unless `[upload] max_bytes` is larger.
const MIN_OBJECT_LIMIT: u64 = 64 << 20;

/// One bucket, with the credentials that sign for it.
pub struct S3Store {
    bucket: Bucket,
    credentials: Credentials,
    /// Empty, or ends with '/'.
    prefix: String,
    /// `serve = "redirect"`: how long a handed-out URL is valid.
    redirect_ttl: Option<Duration>,
    agent: ureq::Agent,
    max_object_bytes: u64,
}

impl S3Store {
    /// Builds the store from an `[upload]` section that `Config::validate` accepted; an endpoint
    /// the bucket URL cannot be built on is an error naming the keys to change.
    pub fn new(c: &UploadConfig) -> Result<S3Store, String> {
        let endpoint: url::Url = c
            .s3_endpoint
            .parse()
            .map_err(|e| format!("[upload] s3_endpoint = {:?}: {e}", c.s3_endpoint))?;
        let style = if c.s3_path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, c.s3_bucket.clone(), c.s3_region.clone())
            .map_err(|e| {
                let why = match e {
                    BucketError::UnsupportedScheme => "the endpoint must be http:// or https://",
                    BucketError::MissingHost => "the endpoint has no host",
                    BucketError::ParseError(_) => {
                        "no bucket URL: virtual-host style needs a DNS name as endpoint host (set s3_path_style = true for an IP address or MinIO)"
                    }
                };
                format!(
                    "[upload] s3_bucket = {:?} at s3_endpoint = {:?}: {why}",
                    c.s3_bucket, c.s3_endpoint
                )
            })?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(c.s3_timeout_ms)))
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .into();
        Ok(S3Store {
            bucket,
            credentials: Credentials::new(c.s3_access_key.clone(), c.s3_secret_key.clone()),
            prefix: normalise_prefix(&c.s3_prefix),
            redirect_ttl: (c.serve == "redirect").then(|| Duration::from_secs(c.s3_url_ttl_s)),
            agent,
            max_object_bytes: (c.max_bytes as u64).max(MIN_OBJECT_LIMIT),
        })
    }

    /// The object key of a served name.
    fn key(&self, hash: &str, ext: &str) -> String {
        format!("{}{hash}.{ext}", self.prefix)
    }

    /// The error of a reply that is not a success: the status and S3's `<Code>` when it has one
    /// (`InvalidAccessKeyId`, `SignatureDoesNotMatch`, `NoSuchBucket`...).
    fn refused(&self, what: &str, mut resp: ureq::http::Response<ureq::Body>) -> io::Error {
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ERROR_BODY)
            .read_to_string()
            .unwrap_or_default();
        let code = s3_error_code(&body)
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        let e = io::Error::other(format!(
            "object store {what}: HTTP {status}{code} (bucket {})",
            self.bucket.name()
        ));
        log::error!("upload: {e}");
        e
    }
}

impl FileStore for S3Store {
    /// A PUT of the whole file, with the content type it is served with. Storing a name again
    /// writes the same bytes: harmless.
    fn put(&self, data: &[u8], ext: &str) -> io::Result<String> {
        let name = name_for(data, ext);
        let key = format!("{}{name}", self.prefix);
        let content_type = content_type_of(ext).unwrap_or("application/octet-stream");
        let mut action = self.bucket.put_object(Some(&self.credentials), &key);
        action.headers_mut().insert("content-type", content_type);
        let url = action.sign(REQUEST_TTL);
        let resp = self
            .agent
            .put(url.as_str())
            .header("Content-Type", content_type)
            .send(data)
            .map_err(|e| unreachable("put", &e))?;
        if resp.status().is_success() {
            Ok(name)
        } else {
            Err(self.refused("put", resp))
        }
    }

    fn get(&self, hash: &str, ext: &str) -> io::Result<Option<Vec<u8>>> {
        let key = self.key(hash, ext);
        let url = self
            .bucket
            .get_object(Some(&self.credentials), &key)
            .sign(REQUEST_TTL);
        let mut resp = self
            .agent
            .get(url.as_str())
            .call()
            .map_err(|e| unreachable("get", &e))?;
        match resp.status().as_u16() {
            200 => resp
                .body_mut()
                .with_config()
                .limit(self.max_object_bytes)
                .read_to_vec()
                .map(Some)
                .map_err(|e| unreachable("get", &e)),
            404 => Ok(None),
            _ => Err(self.refused("get", resp)),
        }
    }

    fn serve(&self, hash: &str, ext: &str) -> io::Result<Option<Served>> {
        let Some(ttl) = self.redirect_ttl else {
            return Ok(self.get(hash, ext)?.map(Served::Bytes));
        };
        let key = self.key(hash, ext);
        let head = self
            .bucket
            .head_object(Some(&self.credentials), &key)
            .sign(REQUEST_TTL);
        let resp = self
            .agent
            .head(head.as_str())
            .call()
            .map_err(|e| unreachable("head", &e))?;
        match resp.status().as_u16() {
            200 => Ok(Some(Served::Redirect(self.presigned_get(&key, ext, ttl)))),
            404 => Ok(None),
            _ => Err(self.refused("head", resp)),
        }
    }
}

impl S3Store {
    /// A GET URL valid `ttl` that serves the object with its type (and `.bin` as an attachment,
    /// as this server does).
    fn presigned_get(&self, key: &str, ext: &str, ttl: Duration) -> String {
        let mut action = self.bucket.get_object(Some(&self.credentials), key);
        let query = action.query_mut();
        query.insert(
            "response-content-type",
            content_type_of(ext).unwrap_or("application/octet-stream"),
        );
        if ext == "bin" {
            query.insert("response-content-disposition", "attachment");
        }
        action.sign(ttl).to_string()
    }
}

/// `s3_prefix` as a key prefix: empty, or ending with one '/'.
fn normalise_prefix(prefix: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// `<Code>..</Code>` of an S3 error document.
fn s3_error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let len = body[start..].find("</Code>")?;
    let code = &body[start..start + len];
    (!code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some(code)
}

/// A transport error without the request URL (its query carries a signature).
fn unreachable(what: &str, e: &ureq::Error) -> io::Error {
    let why = match e {
        ureq::Error::Io(io) => io.to_string(),
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::BodyExceedsLimit(n) => format!("object over {n} bytes"),
        other => other
            .to_string()
            .split('?')
            .next()
            .unwrap_or("")
            .to_string(),
    };
    let e = io::Error::other(format!("object store {what}: {why}"));
    log::error!("upload: {e}");
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: &str, path_style: bool) -> UploadConfig {
        UploadConfig {
            backend: "s3".into(),
            s3_endpoint: endpoint.into(),
            s3_bucket: "wx-files".into(),
            s3_access_key: "AKID".into(),
            s3_secret_key: "secret".into(),
            s3_path_style: path_style,
            s3_prefix: "chat/files".into(),
            ..UploadConfig::default()
        }
    }

    #[test]
    fn keys_and_urls_follow_the_style() {
        let s = S3Store::new(&config("http://127.0.0.1:9000", true)).unwrap();
        let h = "a".repeat(64);
        assert_eq!(s.key(&h, "png"), format!("chat/files/{h}.png"));
        let url = s.presigned_get(&s.key(&h, "png"), "png", Duration::from_secs(300));
        assert!(
            url.starts_with(&format!(
                "http://127.0.0.1:9000/wx-files/chat/files/{h}.png?"
            )),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=300"), "{url}");
        assert!(url.contains("response-content-type=image%2Fpng"), "{url}");
        assert!(!url.contains("secret"), "{url}");
        let v = S3Store::new(&config("https://cos.ap-guangzhou.myqcloud.com", false)).unwrap();
        let url = v.presigned_get(&v.key(&h, "bin"), "bin", Duration::from_secs(60));
        assert!(
            url.starts_with("https://wx-files.cos.ap-guangzhou.myqcloud.com/chat/files/"),
            "{url}"
        );
        assert!(
            url.contains("response-content-disposition=attachment"),
            "{url}"
        );
    }

    #[test]
    fn unusable_endpoints_are_start_up_errors() {
        let e = S3Store::new(&config("http://127.0.0.1:9000", false))
            .err()
            .unwrap();
        assert!(e.contains("s3_path_style"), "{e}");
        let e = S3Store::new(&config("ftp://x.example", true))
            .err()
            .unwrap();
        assert!(e.contains("http"), "{e}");
    }

    #[test]
    fn prefixes_and_error_codes() {
        assert_eq!(normalise_prefix(""), "");
        assert_eq!(normalise_prefix("/"), "");
        assert_eq!(normalise_prefix("a/b"), "a/b/");
        assert_eq!(normalise_prefix("a/b//"), "a/b/");
        let body = "<?xml version=\"1.0\"?><Error><Code>InvalidAccessKeyId</Code><Message>x</Message></Error>";
        assert_eq!(s3_error_code(body), Some("InvalidAccessKeyId"));
        assert_eq!(s3_error_code("<html>500</html>"), None);
        assert_eq!(s3_error_code("<Code><script></Code>"), None);
    }
}
