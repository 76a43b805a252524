//! The client's address behind a reverse proxy. Only a trusted peer (the nginx in front) may name
//! the client; anyone else could put any address in a header, so their own address is used.

use super::Request;
use std::net::IpAddr;

fn is_trusted(peer: IpAddr, trusted: &[String]) -> bool {
    trusted
        .iter()
        .any(|t| t.parse::<IpAddr>().is_ok_and(|t| t == peer))
}

/// `X-Real-IP`, else the last `X-Forwarded-For` entry, when `peer` is a trusted proxy.
pub fn client_ip(peer: IpAddr, req: &Request, trusted: &[String]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let named = req
        .header_str("x-real-ip")
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .or_else(|| {
            // nginx appends the address it saw: the last entry is the one it vouches for.
            req.header_str("x-forwarded-for")
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
        });
    named.unwrap_or(peer)
}

/// The client reached the proxy over TLS: a trusted proxy says `X-Forwarded-Proto: https` (the
/// last entry, the one it added) or `X-Forwarded-Ssl: on`. The server itself never terminates
/// TLS, so nothing else can say so.
pub fn came_over_tls(peer: IpAddr, req: &Request, trusted: &[String]) -> bool {
    if !is_trusted(peer, trusted) {
        return false;
    }
    let proto = req
        .header_str("x-forwarded-proto")
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    proto
        || req
            .header_str("x-forwarded-ssl")
            .is_some_and(|v| v.eq_ignore_ascii_case("on"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".into(),
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
    fn only_trusted_peers_name_the_client() {
        let trusted = vec!["127.0.0.1".to_string()];
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        let r = req(&[("X-Real-IP", "198.51.100.7")]);
        assert_eq!(
            client_ip(local, &r, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(outsider, &r, &trusted), outsider);
        let r = req(&[("X-Forwarded-For", "10.0.0.1, 198.51.100.8")]);
        assert_eq!(
            client_ip(local, &r, &trusted),
            "198.51.100.8".parse::<IpAddr>().unwrap()
        );
        let r = req(&[("X-Real-IP", "not an ip")]);
        assert_eq!(client_ip(local, &r, &trusted), local);
        assert_eq!(client_ip(local, &req(&[]), &trusted), local);
    }

    #[test]
    fn only_trusted_peers_say_tls() {
        let trusted = vec!["127.0.0.1".to_string()];
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        let r = req(&[("X-Forwarded-Proto", "https")]);
        assert!(came_over_tls(local, &r, &trusted));
        assert!(!came_over_tls(outsider, &r, &trusted));
        assert!(!came_over_tls(
            local,
            &req(&[("X-Forwarded-Proto", "http")]),
            &trusted
        ));
        assert!(came_over_tls(
            local,
            &req(&[("X-Forwarded-Ssl", "on")]),
            &trusted
        ));
        assert!(!came_over_tls(local, &req(&[]), &trusted));
    }
}
