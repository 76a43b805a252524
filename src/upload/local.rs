//! Uploads on this node's disk: `data_dir/files/<first two hex digits>/<sha256>.<ext>`. The
//! default; one node only (another node does not see these files).

use super::{name_for, FileStore};
use std::path::{Path, PathBuf};

/// Files under `data_dir/files`.
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    pub fn new(data_dir: &Path) -> LocalStore {
        LocalStore {
            dir: data_dir.join("files"),
        }
    }

    fn path(&self, hash: &str, ext: &str) -> PathBuf {
        self.dir
            .join(hash.get(..2).unwrap_or("00"))
            .join(format!("{hash}.{ext}"))
    }
}

impl FileStore for LocalStore {
    /// Written to a temporary name and renamed, so a reader never sees half a file.
    fn put(&self, data: &[u8], ext: &str) -> std::io::Result<String> {
        let name = name_for(data, ext);
        let path = self.path(&name[..64], ext);
        let Some(dir) = path.parent() else {
            return Err(std::io::Error::other("no directory for the file"));
        };
        std::fs::create_dir_all(dir)?;
        if !path.exists() {
            let tmp = dir.join(format!("{name}.tmp{}", std::process::id()));
            std::fs::write(&tmp, data)?;
            std::fs::rename(&tmp, &path)?;
        }
        Ok(name)
    }

    fn get(&self, hash: &str, ext: &str) -> std::io::Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(hash, ext)) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::{parse_file_name, Served};

    #[test]
    fn content_addressed_storage() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        let a = store.put(b"hello", "txt").unwrap();
        assert_eq!(a, store.put(b"hello", "txt").unwrap());
        let (hash, ext) = parse_file_name(&a).unwrap();
        assert!(dir.path().join("files").join(&hash[..2]).join(&a).is_file());
        assert_eq!(
            store.get(hash, ext).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(
            store.serve(hash, ext).unwrap(),
            Some(Served::Bytes(b"hello".to_vec()))
        );
        assert_eq!(store.get(&"b".repeat(64), "txt").unwrap(), None);
    }
}
