//! Identity primitives: the online_chat-compatible doLogin signature, tokens, constant-time
//! comparison. Pure (the server's keys are loaded by `secrets`).

use crate::http::url_encode;
use md5::{Digest as _, Md5};
use sha2::Sha256;

/// PHP's `http_build_query` over `params` after `ksort`: keys in byte order, `urlencode`d keys
/// and values joined as `k=v` with `&`.
pub fn php_query(params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::new();
    for (i, (k, v)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&url_encode(k));
        out.push('=');
        out.push_str(&url_encode(v));
    }
    out
}

/// The doLogin fields the server reads, and so the ones the signature covers. online_chat signs a
/// fixed set; any other field a client sends is ignored and need not be signed. A field the
/// server starts reading must be added here, so that it can never be changed without the key.
pub const DOLOGIN_SIGNED_FIELDS: &[&str] = &[
    "app_uid",
    "head_img",
    "name",
    "time",
    "user_type",
    "visitor_token",
];

/// online_chat's doLogin signature, lowercase hex:
///
/// ```php
/// $params = [...the signed fields..., 'sign_key' => KEY];
/// ksort($params);
/// md5(http_build_query($params));
/// ```
///
/// The key is one of the sorted parameters (`...&sign_key=KEY&time=...`), not appended. Of
/// `params` only [`DOLOGIN_SIGNED_FIELDS`] count; a field that was not sent is left out, as PHP's
/// `http_build_query` leaves out a null (`$_POST['name']` of a form without `name`), while an
/// empty one is kept (`name=`).
pub fn dologin_sign(params: &[(String, String)], sign_key: &str) -> String {
    let mut signed: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| DOLOGIN_SIGNED_FIELDS.contains(&k.as_str()))
        .cloned()
        .collect();
    signed.push(("sign_key".to_string(), sign_key.to_string()));
    let mut h = Md5::new();
    h.update(php_query(&signed).as_bytes());
    hex(&h.finalize())
}

/// Compares in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// `n` random bytes from the OS.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; n];
    getrandom::getrandom(&mut buf).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(buf)
}

/// A new token: 256 random bits, hex.
pub fn new_token() -> Result<String, String> {
    random_bytes(32).map(|b| hex(&b))
}

/// What the store keeps of a token: its SHA-256, so a copy of the database logs nobody in.
pub fn token_hash(token: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(token.as_bytes());
    h.finalize().into()
}

/// A token is 64 lowercase hex digits; anything else is refused before any lookup.
pub fn token_well_formed(token: &str) -> bool {
    token.len() == 64
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn php_query_spells_like_http_build_query() {
        let params = fields(&[
            ("app_uid", "10086"),
            ("name", "张三 & O'Brien+/=?~"),
            ("head_img", "https://img.example.com/a b.png?x=1&y=中"),
            ("user_type", "1"),
            ("time", "1714036504"),
        ]);
        assert_eq!(
            php_query(&params),
            "app_uid=10086&head_img=https%3A%2F%2Fimg.example.com%2Fa+b.png%3Fx%3D1%26y%3D%E4%B8%AD&name=%E5%BC%A0%E4%B8%89+%26+O%27Brien%2B%2F%3D%3F%7E&time=1714036504&user_type=1"
        );
    }

    /// Vectors computed by PHP 8.2 running online_chat's check verbatim (`$params = [app_uid,
    /// name, head_img, time, user_type, 'sign_key' => 'k3y!@#']; ksort($params);
    /// md5(http_build_query($params))`).
    #[test]
    fn dologin_sign_matches_online_chat_php() {
        let params = fields(&[
            ("app_uid", "10086"),
            ("name", "张三 & O'Brien+/=?~"),
            ("head_img", "https://img.example.com/a b.png?x=1&y=中"),
            ("time", "1714036504"),
            ("user_type", "1"),
        ]);
        assert_eq!(
            dologin_sign(&params, "k3y!@#"),
            "2bf27606c8655aebe725ec625eb910db"
        );
        // Fields the server does not read are not signed: adding one changes nothing.
        let mut extra = params.clone();
        extra.push(("client".into(), "h5".into()));
        extra.push(("sign_key".into(), "forged".into()));
        assert_eq!(
            dologin_sign(&extra, "k3y!@#"),
            dologin_sign(&params, "k3y!@#")
        );
        // PHP leaves out the nulls of fields that were not posted.
        let sparse = fields(&[
            ("app_uid", "42"),
            ("time", "1714036504"),
            ("user_type", "0"),
        ]);
        assert_eq!(
            dologin_sign(&sparse, "k3y!@#"),
            "16dcdc57a04bced8cb374869dd858922"
        );
        // Empty fields are kept, and visitor_token, which the server reads, is signed.
        let with_visitor = fields(&[
            ("app_uid", "42"),
            ("name", ""),
            ("head_img", ""),
            ("time", "1714036504"),
            ("user_type", "0"),
            ("visitor_token", &"ab".repeat(32)),
        ]);
        assert_eq!(
            dologin_sign(&with_visitor, "k3y!@#"),
            "8f0f535531e2ee3e08aace1227ac8374"
        );
    }

    #[test]
    fn tokens() {
        let t = new_token().unwrap();
        assert!(token_well_formed(&t));
        assert_ne!(t, new_token().unwrap());
        assert!(!token_well_formed("abc"));
        assert!(!token_well_formed(&"G".repeat(64)));
        assert_eq!(token_hash("x"), token_hash("x"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
