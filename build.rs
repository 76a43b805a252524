//! Builds the pages (`web/`) and the JavaScript SDK's sources (`sdk/js/src/`, served under
//! `/sdk/`) into the binary, so `./server` serves them with nothing beside it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Files of `dir` below it, skipping dot files, `node_modules` and the test folders.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.')
            || matches!(
                name,
                "node_modules" | "tests" | "test-results" | "package.json" | "package-lock.json"
            )
        {
            continue;
        }
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let mut table = String::from("/// (URL path, contents) of every built-in page file.\npub static FILES: &[(&str, &[u8])] = &[\n");
    for (dir, prefix) in [(root.join("web"), ""), (root.join("sdk/js/src"), "/sdk")] {
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files = Vec::new();
        walk(&dir, &mut files);
        for file in files {
            println!("cargo:rerun-if-changed={}", file.display());
            let rel = file.strip_prefix(&dir).expect("below dir");
            let url = format!("{prefix}/{}", rel.to_string_lossy().replace('\\', "/"));
            let _ = writeln!(
                table,
                "    ({url:?}, include_bytes!({:?})),",
                file.display().to_string()
            );
        }
    }
    table.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("web_files.rs");
    std::fs::write(out, table).expect("write web_files.rs");
}
