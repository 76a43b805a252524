//! The pages the server serves (`[web]`): the files of `web/` and the SDK's sources under
//! `/sdk/`, built into the binary by `build.rs`, or read from `[web] dir`. Pure lookups and
//! headers; reading from a directory happens on a worker.

use crate::http::Response;
use std::path::{Component, Path, PathBuf};

mod built_in {
    include!(concat!(env!("OUT_DIR"), "/web_files.rs"));
}

/// The content type of a page file, by extension; None for a type we do not serve.
pub fn content_type(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.').map(|(_, e)| e)?;
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "txt" | "md" => "text/plain; charset=utf-8",
        "ts" => "text/plain; charset=utf-8",
        "woff2" => "font/woff2",
        _ => return None,
    })
}

/// What a GET of `path` is: a file's URL path, or a redirect to the folder's own URL (so the
/// page's relative links resolve). None: not a page path at all.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    File(String),
    Redirect(String),
}

/// Maps a request path to a page file: `/` and `/agent/` to their `index.html`; `/agent` to a
/// redirect to `/agent/` when that folder has an index. Paths with dot segments, backslashes or
/// NULs are never pages.
pub fn target(path: &str, exists: impl Fn(&str) -> bool) -> Option<Target> {
    if !path.starts_with('/')
        || path.contains('\\')
        || path.contains('\0')
        || path
            .split('/')
            .any(|seg| seg == ".." || seg == "." || seg.starts_with('.') && !seg.is_empty())
    {
        return None;
    }
    if path.ends_with('/') {
        let index = format!("{path}index.html");
        return exists(&index).then_some(Target::File(index));
    }
    if exists(path) {
        return Some(Target::File(path.to_string()));
    }
    let folder_index = format!("{path}/index.html");
    exists(&folder_index).then(|| Target::Redirect(format!("{path}/")))
}

/// A built-in file.
pub fn built_in(path: &str) -> Option<&'static [u8]> {
    built_in::FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, data)| *data)
}

/// Whether `path` is a file of the pages: built in (`/sdk/..` always is), or below `dir`.
pub fn exists(dir: Option<&Path>, path: &str) -> bool {
    match dir {
        Some(d) if !path.starts_with("/sdk/") => file_in(d, path).is_some_and(|p| p.is_file()),
        _ => built_in(path).is_some(),
    }
}

/// `path` below `dir`, made only of normal components (no way out of `dir`).
pub fn file_in(dir: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| dir.join(rel))
}

/// A page file as a response: its type, no sniffing, revalidated on every load (pages change
/// with the server), and a Content-Security-Policy that allows only our own scripts. The
/// visitor widget's frame may be embedded by any site; every other page only by ours.
pub fn response(path: &str, body: Vec<u8>) -> Response {
    let ct = content_type(path).unwrap_or("application/octet-stream");
    let mut resp = Response::new(200)
        .with_body(ct, body)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Cache-Control", "no-cache")
        .with_header("Referrer-Policy", "same-origin");
    if ct.starts_with("text/html") {
        let ancestors = if path.starts_with("/widget/") {
            "*"
        } else {
            "'self'"
        };
        resp = resp.with_header(
            "Content-Security-Policy",
            &format!(
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                 img-src 'self' http: https: data: blob:; media-src 'self' http: https: blob:; \
                 connect-src 'self' ws: wss: http: https:; frame-ancestors {ancestors}"
            ),
        );
    }
    resp
}

/// A redirect to the folder URL of a page.
pub fn redirect(to: &str) -> Response {
    Response::new(301)
        .with_header("Location", to)
        .with_body("text/plain; charset=utf-8", Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_files_and_never_leave_the_pages() {
        let have = |p: &str| ["/index.html", "/agent/index.html", "/sdk/index.js"].contains(&p);
        assert_eq!(target("/", have), Some(Target::File("/index.html".into())));
        assert_eq!(
            target("/agent/", have),
            Some(Target::File("/agent/index.html".into()))
        );
        assert_eq!(
            target("/agent", have),
            Some(Target::Redirect("/agent/".into()))
        );
        assert_eq!(
            target("/sdk/index.js", have),
            Some(Target::File("/sdk/index.js".into()))
        );
        assert_eq!(target("/nope", have), None);
        for bad in [
            "/../secrets.toml",
            "/agent/../index.html",
            "/.git/config",
            "/a\\b",
            "x",
        ] {
            assert_eq!(target(bad, |_| true), None, "{bad}");
        }
        assert_eq!(
            file_in(Path::new("/srv/web"), "/a/b.js"),
            Some(PathBuf::from("/srv/web/a/b.js"))
        );
        assert_eq!(file_in(Path::new("/srv/web"), "/a/../../b.js"), None);
    }

    #[test]
    fn types_and_headers() {
        assert_eq!(
            content_type("/a/index.html"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            content_type("/sdk/index.js"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(content_type("/x.exe"), None);
        let page = response("/agent/index.html", b"<p>".to_vec());
        let csp = page
            .headers
            .iter()
            .find(|(k, _)| k == "Content-Security-Policy")
            .map(|(_, v)| v.clone())
            .unwrap();
        assert!(csp.contains("frame-ancestors 'self'"), "{csp}");
        let frame = response("/widget/frame.html", Vec::new());
        assert!(frame
            .headers
            .iter()
            .any(|(_, v)| v.contains("frame-ancestors *")));
    }
}
