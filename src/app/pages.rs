//! The pages the client listener serves (`web/`: agent console, visitor widget, demo, QR login,
//! and the SDK): the built-in copy, or `[web] dir` read on a worker.

use crate::http::{Request, Response};
use crate::net::{ConnId, Ctx, Reply};
use crate::rt::reply::later_or_busy;
use crate::rt::{App, Completion};

/// `[web] enabled` and `[web] dir`, decided once at start.
pub struct Pages {
    enabled: bool,
    /// `[web] dir`, when the pages are served from a directory instead of the built-in copy.
    dir: Option<std::path::PathBuf>,
}

impl Pages {
    pub fn new(config: &crate::config::Config) -> Pages {
        Pages {
            enabled: config.web_enabled(),
            dir: (!config.web.dir.is_empty()).then(|| std::path::PathBuf::from(&config.web.dir)),
        }
    }

    /// A GET or HEAD the pages may answer.
    pub fn serves(&self, req: &Request) -> bool {
        self.enabled && (req.method == "GET" || req.method == "HEAD")
    }

    /// A page file: the built-in copy answers at once; `[web] dir` is looked up and read on a
    /// worker (a directory lookup is file I/O, which the reactor never does).
    pub fn serve(
        &self,
        app: &mut App,
        ctx: &mut dyn Ctx<Completion>,
        conn: ConnId,
        path: &str,
    ) -> Reply {
        let Some(dir) = self.dir.clone() else {
            return Reply::Now(page_response(None, path));
        };
        let path = path.to_string();
        let ok = app.job(
            ctx,
            move |_b| page_response(Some(&dir), &path),
            move |_app, ctx, resp| ctx.respond(conn, resp),
        );
        later_or_busy(ok)
    }
}

/// The answer to a GET of a page path: from `dir` when set (the SDK stays built in), else the
/// built-in copy; a folder path redirects to its own URL; anything else is 404.
fn page_response(dir: Option<&std::path::Path>, path: &str) -> Response {
    let Some(target) = crate::web::target(path, |p| crate::web::exists(dir, p)) else {
        return Response::error(404, "no such page");
    };
    let file = match target {
        crate::web::Target::Redirect(to) => return crate::web::redirect(&to),
        crate::web::Target::File(f) => f,
    };
    let from_disk = dir
        .filter(|_| !file.starts_with("/sdk/"))
        .and_then(|d| crate::web::file_in(d, &file));
    let body = match from_disk {
        Some(disk) => match std::fs::read(disk) {
            Ok(body) => body,
            Err(_) => return Response::error(404, "no such page"),
        },
        None => crate::web::built_in(&file).unwrap_or_default().to_vec(),
    };
    crate::web::response(&file, body)
}
