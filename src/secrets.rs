//! The server's own keys: the doLogin `sign_key` and the server API key, from the configuration
//! or generated once into `data_dir/secrets.toml` (mode 0600). Runs once at start-up.

use crate::auth::{hex, random_bytes};
use crate::config::Config;
use std::path::Path;

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
