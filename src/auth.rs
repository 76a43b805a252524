//! Identity primitives: the online_chat-compatible doLogin signature, tokens, and the server's
//! generated secrets. Pure except `Secrets::load_or_create`, which runs once at start-up.

use crate::config::Config;
use crate::http::url_encode;
use md5::{Digest as _, Md5};
use sha2::Sha256;
use std::path::Path;

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

/// `md5(http_build_query(ksort(params)) . sign_key)`, lowercase hex. `params` excludes `sign`.
pub fn dologin_sign(params: &[(String, String)], sign_key: &str) -> String {
    let mut h = Md5::new();
    h.update(php_query(params).as_bytes());
    h.update(sign_key.as_bytes());
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

/// The keys the server signs and authenticates with.
#[derive(Clone)]
pub struct Secrets {
    pub sign_key: String,
    pub api_key: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct SecretsFile {
    #[serde(default)]
    sign_key: String,
    #[serde(default)]
    api_key: String,
}

impl Secrets {
    /// Keys from the config; missing ones come from `data_dir/secrets.toml`, generated there
    /// (mode 0600) on first start. Nothing is ever accepted unsigned.
    pub fn load_or_create(config: &Config) -> Result<Secrets, String> {
        let path = config.server.data_dir.join("secrets.toml");
        let mut file: SecretsFile = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SecretsFile::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let mut changed = false;
        if config.auth.sign_key.is_empty() && file.sign_key.is_empty() {
            file.sign_key = hex(&random_bytes(24)?);
            changed = true;
        }
        if config.api.key.is_empty() && file.api_key.is_empty() {
            file.api_key = hex(&random_bytes(24)?);
            changed = true;
        }
        if changed {
            write_private(&path, &toml::to_string(&file).map_err(|e| e.to_string())?)?;
            log::info!(
                "generated the doLogin sign_key and/or the server API key into {} (set [auth] sign_key / [api] key to choose your own)",
                path.display()
            );
        }
        Ok(Secrets {
            sign_key: if config.auth.sign_key.is_empty() {
                file.sign_key
            } else {
                config.auth.sign_key.clone()
            },
            api_key: if config.api.key.is_empty() {
                file.api_key
            } else {
                config.api.key.clone()
            },
        })
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed by PHP 8.2 itself:
    /// `$p = [...]; ksort($p); $q = http_build_query($p); md5($q . 'k3y!@#')`.
    #[test]
    fn dologin_sign_matches_php() {
        let params: Vec<(String, String)> = [
            ("app_uid", "10086"),
            ("name", "张三 & O'Brien+/=?~"),
            ("head_img", "https://img.example.com/a b.png?x=1&y=中"),
            ("user_type", "1"),
            ("time", "1714036504"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            php_query(&params),
            "app_uid=10086&head_img=https%3A%2F%2Fimg.example.com%2Fa+b.png%3Fx%3D1%26y%3D%E4%B8%AD&name=%E5%BC%A0%E4%B8%89+%26+O%27Brien%2B%2F%3D%3F%7E&time=1714036504&user_type=1"
        );
        assert_eq!(
            dologin_sign(&params, "k3y!@#"),
            "e6b8dc215c4d2473780576fbf811259d"
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

    #[test]
    fn secrets_are_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.server.data_dir = dir.path().to_path_buf();
        let a = Secrets::load_or_create(&c).unwrap();
        let b = Secrets::load_or_create(&c).unwrap();
        assert_eq!(
            (a.sign_key.clone(), a.api_key.clone()),
            (b.sign_key, b.api_key)
        );
        assert_eq!(a.sign_key.len(), 48);
        c.api.key = "mine".into();
        assert_eq!(Secrets::load_or_create(&c).unwrap().api_key, "mine");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secrets.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
