//! The routing table: exact segments and `{name}` parameters, method per route.

struct Route<H> {
    method: String,
    segments: Vec<Segment>,
    handler: H,
}

enum Segment {
    Exact(String),
    Param(String),
}

/// Result of a lookup.
pub enum RouteMatch<'r, H> {
    Found {
        handler: &'r H,
        params: Vec<(String, String)>,
    },
    NotFound,
    /// The path exists for other methods, listed for the `Allow` header.
    MethodNotAllowed {
        allow: Vec<String>,
    },
}

pub struct Router<H> {
    routes: Vec<Route<H>>,
}

impl<H> Default for Router<H> {
    fn default() -> Self {
        Router { routes: Vec::new() }
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

impl<H> Router<H> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route. `method` "*" matches any method; GET routes also answer HEAD.
    pub fn add(&mut self, method: &str, pattern: &str, handler: H) {
        let segments = split(pattern)
            .map(
                |s| match s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                    Some(name) => Segment::Param(name.to_string()),
                    None => Segment::Exact(s.to_string()),
                },
            )
            .collect();
        self.routes.push(Route {
            method: method.to_ascii_uppercase(),
            segments,
            handler,
        });
    }

    fn path_params(route: &Route<H>, parts: &[&str]) -> Option<Vec<(String, String)>> {
        if route.segments.len() != parts.len() {
            return None;
        }
        let mut params = Vec::new();
        for (seg, part) in route.segments.iter().zip(parts) {
            match seg {
                Segment::Exact(s) if s == part => {}
                Segment::Exact(_) => return None,
                Segment::Param(name) => params.push((name.clone(), super::url_decode(part))),
            }
        }
        Some(params)
    }

    pub fn find(&self, method: &str, path: &str) -> RouteMatch<'_, H> {
        let parts: Vec<&str> = split(path).collect();
        let mut allow: Vec<String> = Vec::new();
        for route in &self.routes {
            let Some(params) = Self::path_params(route, &parts) else {
                continue;
            };
            let method_ok = route.method == "*"
                || route.method == method
                || (method == "HEAD" && route.method == "GET");
            if method_ok {
                return RouteMatch::Found {
                    handler: &route.handler,
                    params,
                };
            }
            if !allow.contains(&route.method) {
                allow.push(route.method.clone());
            }
            if route.method == "GET" && !allow.iter().any(|m| m == "HEAD") {
                allow.push("HEAD".into());
            }
        }
        if allow.is_empty() {
            RouteMatch::NotFound
        } else {
            RouteMatch::MethodNotAllowed { allow }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(r: &Router<u8>, m: &str, p: &str) -> Option<(u8, Vec<(String, String)>)> {
        match r.find(m, p) {
            RouteMatch::Found { handler, params } => Some((*handler, params)),
            _ => None,
        }
    }

    #[test]
    fn matches_exact_params_and_methods() {
        let mut r = Router::new();
        r.add("GET", "/healthz", 1);
        r.add("POST", "/api/doLogin", 2);
        r.add("*", "/wechat/{app}/callback", 3);
        assert_eq!(found(&r, "GET", "/healthz"), Some((1, vec![])));
        assert_eq!(found(&r, "HEAD", "/healthz"), Some((1, vec![])));
        assert_eq!(
            found(&r, "POST", "/wechat/mini%20a/callback"),
            Some((3, vec![("app".into(), "mini a".into())]))
        );
        assert!(matches!(r.find("GET", "/nope"), RouteMatch::NotFound));
        assert!(matches!(
            r.find("GET", "/wechat/a/b/callback"),
            RouteMatch::NotFound
        ));
        match r.find("GET", "/api/doLogin") {
            RouteMatch::MethodNotAllowed { allow } => assert_eq!(allow, vec!["POST"]),
            _ => panic!("expected 405"),
        }
        match r.find("DELETE", "/healthz") {
            RouteMatch::MethodNotAllowed { allow } => assert_eq!(allow, vec!["GET", "HEAD"]),
            _ => panic!("expected 405"),
        }
    }
}
