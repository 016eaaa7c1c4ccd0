//! The layout's invariants (ARCHITECTURE.md), checked on the source so a
//! change that breaks one fails here rather than in review.

use std::{fs, path::Path};

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((
                path.display().to_string(),
                fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    out
}

/// The code of a file, without comments (which may name anything).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn src() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
}

#[test]
fn the_core_knows_no_protocol_and_no_network_client() {
    let files = sources(&src().join("core"));
    assert!(files.len() >= 5, "{files:?}");
    for (path, text) in files {
        let code = code(&text);
        for name in [
            "tonic",
            "prost",
            "axum",
            "hyper",
            "reqwest",
            "crate::serve",
            "crate::sim",
        ] {
            assert!(
                !code.contains(&format!("{name}::")),
                "{path} uses {name}: the core is protocol-free"
            );
        }
    }
}

#[test]
fn nothing_but_the_command_line_imports_the_simulator() {
    for (path, text) in sources(src()) {
        // Unit tests (a `tests.rs` beside the code, or after `#[cfg(test)]`)
        // may use the simulator like the integration tests do.
        let inside = path.contains("/src/sim/")
            || path.ends_with("/src/cli.rs")
            || path.ends_with("/tests.rs");
        let tests_only = text
            .find("#[cfg(test)]")
            .map_or(text.as_str(), |i| &text[..i]);
        if !inside {
            assert!(
                !code(tests_only).contains("sim::"),
                "{path} imports the simulator outside its tests"
            );
        }
    }
}

#[test]
fn only_the_grpc_layer_the_server_builder_and_the_client_know_protobuf() {
    for (path, text) in sources(src()) {
        // The client commands speak the public contract as any client would.
        let allowed = path.contains("/src/serve/")
            || path.contains("/src/client/")
            || path.ends_with("/src/pb.rs")
            || path.ends_with("/src/lib.rs");
        if !allowed {
            let code = code(&text);
            assert!(
                !code.contains("pb::") && !code.contains("prost::"),
                "{path} uses protobuf types"
            );
        }
    }
}

/// ARCHITECTURE.md's code map finds every room: each file under `src/` is
/// named there by its path (`src/app.rs`), or within its folder's entry
/// (the paragraph that starts with `` - `src/<folder>/` ``) by its name
/// (`` `ledger.rs` ``); a file one folder further down is named in its
/// grandparent's entry as `` `store/apply.rs` ``, and a `mod.rs` by its
/// folder's entry.
#[test]
fn every_source_file_is_named_in_the_code_map() {
    let map = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/ARCHITECTURE.md")).unwrap();
    let entry = |folder: &str| -> Option<String> {
        let head = format!("- `src/{folder}/`");
        let start = map.find(&head)?;
        let rest = &map[start + head.len()..];
        let end = rest.find("\n- ").unwrap_or(rest.len());
        Some(rest[..end].to_owned())
    };
    let root = src();
    let mut missing = Vec::new();
    for (path, _) in sources(root) {
        let rel = Path::new(&path)
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let named = map.contains(&format!("src/{rel}"))
            || match rel.rsplit_once('/') {
                None => false,
                Some((folder, name)) => match entry(folder) {
                    Some(e) => name == "mod.rs" || e.contains(&format!("`{name}")),
                    None => folder.rsplit_once('/').is_some_and(|(parent, sub)| {
                        entry(parent).is_some_and(|e| {
                            e.contains(&format!("`{sub}/{name}"))
                                || (name == "mod.rs" && e.contains(&format!("`{sub}/")))
                        })
                    }),
                },
            };
        if !named {
            missing.push(rel);
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map does not name: {missing:?}"
    );
}
