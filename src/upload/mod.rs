//! Uploads: `multipart/form-data` parsing (as `wx.uploadFile` sends it), content-addressed names,
//! the content types files are served back with, and the [`FileStore`] that keeps the files:
//! [`local::LocalStore`] under `data_dir/files` (one node) or [`s3::S3Store`] in an S3-compatible
//! bucket (every node of a cluster sees the same files). Pure except the stores, whose calls block
//! (disk or network) and so run on workers only.
//!
//! Layer: beside `net`, below the state owner; imports only `config` and `auth`.

use crate::config::Config;
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub mod local;
pub mod s3;

/// What `GET /files/<name>` answers with.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// The file's bytes, sent by this server.
    Bytes(Vec<u8>),
    /// A URL that serves the file for a while (a presigned GET of the object store).
    Redirect(String),
}

/// Where uploaded files live. Names are content-addressed (`<sha256>.<ext>`, [`name_for`]), so a
/// file has the same name on every node and storing it twice is harmless. Every call blocks:
/// workers only, never the reactor.
pub trait FileStore: Send + Sync {
    /// Stores `data` (idempotent); returns its served name.
    fn put(&self, data: &[u8], ext: &str) -> std::io::Result<String>;
    /// A stored file's bytes; None when absent.
    fn get(&self, hash: &str, ext: &str) -> std::io::Result<Option<Vec<u8>>>;
    /// What `GET /files/<hash>.<ext>` answers: the bytes, unless the store hands out URLs.
    fn serve(&self, hash: &str, ext: &str) -> std::io::Result<Option<Served>> {
        Ok(self.get(hash, ext)?.map(Served::Bytes))
    }
}

/// The store `[upload] backend` names, built once at start (a bad bucket URL is a start-up error).
pub fn open(config: &Config) -> Result<Arc<dyn FileStore>, String> {
    match config.upload.backend.as_str() {
        "s3" => Ok(Arc::new(s3::S3Store::new(&config.upload)?)),
        _ => Ok(Arc::new(local::LocalStore::new(&config.server.data_dir))),
    }
}

/// The served name of `data`: `<sha256 hex>.<ext>`, the same on every node and in every store.
pub fn name_for(data: &[u8], ext: &str) -> String {
    format!("{}.{ext}", crate::auth::hex(&Sha256::digest(data)))
}

/// One uploaded file.
#[derive(Debug, PartialEq, Eq)]
pub struct Part<'a> {
    pub field: String,
    pub filename: Option<String>,
    pub content_type: Option<String>,
    pub data: &'a [u8],
}

/// The boundary of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let (media, params) = content_type.split_once(';')?;
    if !media.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    params.split(';').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= 70).then(|| v.to_string())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Parses a multipart body into its parts. Err on a body that is not well formed.
pub fn parse_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, &'static str> {
    let delim = format!("--{boundary}");
    let next_delim = format!("\r\n--{boundary}");
    let mut pos = find(body, delim.as_bytes(), 0).ok_or("no multipart boundary in the body")?;
    let mut parts = Vec::new();
    loop {
        pos += delim.len();
        if body.get(pos..pos + 2) == Some(b"--") {
            return Ok(parts);
        }
        if body.get(pos..pos + 2) != Some(b"\r\n") {
            return Err("malformed multipart boundary line");
        }
        pos += 2;
        let head_end = find(body, b"\r\n\r\n", pos).ok_or("unterminated part headers")?;
        let head =
            std::str::from_utf8(&body[pos..head_end]).map_err(|_| "part headers are not UTF-8")?;
        let data_start = head_end + 4;
        let data_end = find(body, next_delim.as_bytes(), data_start).ok_or("unterminated part")?;
        let mut field = None;
        let mut filename = None;
        let mut content_type = None;
        for line in head.split("\r\n") {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("content-disposition") {
                for param in value.split(';').skip(1) {
                    if let Some((k, v)) = param.split_once('=') {
                        let v = v.trim().trim_matches('"').to_string();
                        match k.trim() {
                            "name" => field = Some(v),
                            "filename" => filename = Some(v),
                            _ => {}
                        }
                    }
                }
            } else if name.trim().eq_ignore_ascii_case("content-type") {
                content_type = Some(value.trim().to_ascii_lowercase());
            }
        }
        parts.push(Part {
            field: field.ok_or("a part without a name")?,
            filename,
            content_type,
            data: &body[data_start..data_end],
        });
        pos = data_end + 2;
    }
}

/// The extensions files are stored and served under, with their content types. Anything else is
/// stored as `.bin` and served as an attachment, so an uploaded HTML page can never run in the
/// server's origin.
const TYPES: &[(&str, &str)] = &[
    ("jpg", "image/jpeg"),
    ("png", "image/png"),
    ("gif", "image/gif"),
    ("webp", "image/webp"),
    ("mp3", "audio/mpeg"),
    ("aac", "audio/aac"),
    ("amr", "audio/amr"),
    ("m4a", "audio/mp4"),
    ("silk", "audio/silk"),
    ("mp4", "video/mp4"),
    ("mov", "video/quicktime"),
    ("pdf", "application/pdf"),
    ("txt", "text/plain; charset=utf-8"),
    ("bin", "application/octet-stream"),
];

/// The storage extension for an upload: from its declared type when that is a listed type, else
/// from its file name when that has a listed extension, else `bin`. `application/octet-stream`
/// says nothing about the file (curl sends it for every `-F file=@v.amr`), so it does not
/// outrank a name; a specific listed type does (a PNG named `x.jpg` is a PNG).
pub fn extension_for(content_type: Option<&str>, filename: Option<&str>) -> &'static str {
    let by_type = content_type.and_then(|ct| {
        let media = ct.split(';').next().unwrap_or("").trim();
        TYPES
            .iter()
            .find(|(_, t)| t.split(';').next() == Some(media))
            .map(|(e, _)| *e)
            .filter(|e| *e != "bin")
    });
    let by_name = filename
        .and_then(|f| f.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase())
        .and_then(|e| {
            let e = if e == "jpeg" { "jpg".to_string() } else { e };
            TYPES.iter().find(|(x, _)| *x == e).map(|(x, _)| *x)
        });
    by_type.or(by_name).unwrap_or("bin")
}

/// The content type a stored extension is served with.
pub fn content_type_of(ext: &str) -> Option<&'static str> {
    TYPES.iter().find(|(e, _)| *e == ext).map(|(_, t)| *t)
}

/// A served file name: 64 hex digits, a dot, a known extension. Nothing else reaches the disk.
pub fn parse_file_name(name: &str) -> Option<(&str, &'static str)> {
    let (hash, ext) = name.split_once('.')?;
    let ok = hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let ext = TYPES.iter().find(|(e, _)| *e == ext).map(|(e, _)| *e)?;
    ok.then_some((hash, ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_wx_upload_file_body() {
        let ct = "multipart/form-data; boundary=----WebKitFormBoundaryx7";
        let b = boundary(ct).unwrap();
        let body = b"------WebKitFormBoundaryx7\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nabc\r\n------WebKitFormBoundaryx7\r\nContent-Disposition: form-data; name=\"file\"; filename=\"wx.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8\r\n\xff\r\n------WebKitFormBoundaryx7--\r\n";
        let parts = parse_multipart(body, &b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].field.as_str(), parts[0].data),
            ("user", &b"abc"[..])
        );
        assert_eq!(parts[1].filename.as_deref(), Some("wx.jpg"));
        assert_eq!(parts[1].content_type.as_deref(), Some("image/jpeg"));
        assert_eq!(parts[1].data, b"\xff\xd8\r\n\xff");
        assert!(parse_multipart(b"garbage", &b).is_err());
        assert!(parse_multipart(b"------WebKitFormBoundaryx7\r\nno end", &b).is_err());
        assert_eq!(boundary("application/json"), None);
    }

    #[test]
    fn types_and_names() {
        assert_eq!(extension_for(Some("image/png"), None), "png");
        assert_eq!(extension_for(None, Some("a.JPEG")), "jpg");
        assert_eq!(extension_for(Some("text/html"), Some("x.html")), "bin");
        // A generic or unlisted type gives way to a listed file name (curl -F file=@v.amr).
        assert_eq!(
            extension_for(Some("application/octet-stream"), Some("v.amr")),
            "amr"
        );
        assert_eq!(extension_for(None, Some("v.AMR")), "amr");
        assert_eq!(
            extension_for(Some("audio/x-whatever"), Some("v.silk")),
            "silk"
        );
        assert_eq!(
            extension_for(Some("application/octet-stream"), Some("v.exe")),
            "bin"
        );
        assert_eq!(extension_for(Some("application/octet-stream"), None), "bin");
        // A specific listed type wins over the name.
        assert_eq!(extension_for(Some("image/png"), Some("x.jpg")), "png");
        assert_eq!(content_type_of("bin"), Some("application/octet-stream"));
        let h = "a".repeat(64);
        assert_eq!(
            parse_file_name(&format!("{h}.png")),
            Some((h.as_str(), "png"))
        );
        assert_eq!(parse_file_name(&format!("{h}.html")), None);
        assert_eq!(parse_file_name("../../etc/passwd.png"), None);
    }

    #[test]
    fn names_are_the_content_hash() {
        let name = name_for(b"hello", "txt");
        assert_eq!(
            name,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824.txt"
        );
        assert_eq!(parse_file_name(&name).map(|(_, e)| e), Some("txt"));
        assert_ne!(name, name_for(b"hello", "bin"));
    }
}
