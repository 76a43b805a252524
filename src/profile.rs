//! The user fields clients and business backends may set: `name`, `head_img` and `user_type`.
//! One rule each, shared by doLogin, WeChat login, `POST /api/me` and the server API. Pure.

use crate::store::{USER_TYPE_CONSULTANT, USER_TYPE_CONVERTED, USER_TYPE_USER, USER_TYPE_VISITOR};

/// Longest display name, in characters (WeChat nicknames are at most 32).
pub const MAX_NAME_CHARS: usize = 64;
/// Longest avatar URL, in bytes.
pub const MAX_HEAD_IMG_BYTES: usize = 1024;

/// A display name: trimmed, at most [`MAX_NAME_CHARS`] characters, no control characters. Empty
/// is allowed (no name).
pub fn name(raw: &str) -> Result<String, String> {
    let name = raw.trim();
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("name over {MAX_NAME_CHARS} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    Ok(name.to_string())
}

/// An avatar: an `http(s)://` URL or a path on the client's site (`/files/..`,
/// `/static/a.png`), at most [`MAX_HEAD_IMG_BYTES`], no control characters. Empty is allowed (no
/// avatar). Anything else (`javascript:`, `data:`, a protocol-relative `//host`) is refused,
/// since clients put it in an `<img src>`. Inner spaces are kept: online_chat clients send URLs
/// as their users typed them, and browsers encode the space when they load the image.
pub fn head_img(raw: &str) -> Result<String, String> {
    let url = raw.trim();
    if url.is_empty() {
        return Ok(String::new());
    }
    let scheme_ok = url.starts_with("https://")
        || url.starts_with("http://")
        || (url.starts_with('/') && !url.starts_with("//"));
    if url.len() > MAX_HEAD_IMG_BYTES || !scheme_ok || url.chars().any(char::is_control) {
        return Err(format!(
            "head_img must be an http(s) URL or a /path, at most {MAX_HEAD_IMG_BYTES} bytes"
        ));
    }
    Ok(url.to_string())
}

/// `user_type` as clients send it: a JSON number or, as online_chat's forms do, a numeric string.
/// 0 user, 1 agent, 2 consultant; 3 and 4 belong to anonymous visitors and cannot be chosen.
pub fn user_type(raw: &str) -> Result<i64, String> {
    const CHOICES: &str = "0 (user), 1 (agent) or 2 (consultant)";
    match raw.trim().parse::<i64>() {
        Ok(t @ USER_TYPE_USER..=USER_TYPE_CONSULTANT) => Ok(t),
        Ok(USER_TYPE_VISITOR) | Ok(USER_TYPE_CONVERTED) => Err(format!(
            "user_type {} is reserved for anonymous visitors; use {CHOICES}",
            raw.trim()
        )),
        _ => Err(format!("user_type must be {CHOICES}, not {:?}", raw.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name("  张三 ").unwrap(), "张三");
        assert_eq!(name("").unwrap(), "");
        assert!(name(&"字".repeat(64)).is_ok());
        assert!(name(&"字".repeat(65)).is_err());
        assert!(name("a\u{0}b").is_err());
        assert!(name("a\nb").is_err());
    }

    #[test]
    fn avatars() {
        for ok in [
            "https://thirdwx.qlogo.cn/mmopen/vi_32/abc/132",
            "http://img.example.com/a.png?x=1&y=%E4%B8%AD",
            "/files/ab.png",
            "/static/avatar.png",
            "https://img.example.com/a b.png?x=1&y=中",
            "",
        ] {
            assert_eq!(head_img(ok).unwrap(), ok);
        }
        for bad in [
            "javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "//evil.example.com/a.png",
            "avatar.png",
            "https://a/b\n.png",
        ] {
            assert!(head_img(bad).is_err(), "{bad}");
        }
        assert!(head_img(&format!("https://a/{}", "x".repeat(1024))).is_err());
    }

    #[test]
    fn user_types_as_online_chat_sends_them() {
        assert_eq!(user_type("0"), Ok(0));
        assert_eq!(user_type("1"), Ok(1));
        assert_eq!(user_type(" 2 "), Ok(2));
        assert!(user_type("3").unwrap_err().contains("reserved"));
        assert!(user_type("4").unwrap_err().contains("reserved"));
        assert!(user_type("-1").unwrap_err().contains("0 (user)"));
        assert!(user_type("agent").unwrap_err().contains("\"agent\""));
        assert!(user_type("1.0").is_err());
    }
}
