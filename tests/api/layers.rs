//! The dependency direction of the source tree: routes call the service layer
//! and the actors, which call the store; nothing below the HTTP edge calls up
//! into it (issue 16: the flow actor used to issue tokens through a route).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Lines of the modules under `layer` that name the routes module.
fn imports_of_routes(layer: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src")
        .join(layer);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(!files.is_empty(), "no sources under {}", root.display());
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("crate::routes") || code.contains("super::routes") {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn actors_store_and_service_never_import_the_routes() {
    for layer in ["actors", "store", "service"] {
        let found = imports_of_routes(layer);
        assert!(
            found.is_empty(),
            "src/{layer} must not depend on src/routes:\n{}",
            found.join("\n")
        );
    }
}
