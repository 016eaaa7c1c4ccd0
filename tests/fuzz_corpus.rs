//! Replays the fuzzers' kept corpus and every crash they found through the
//! same checks the fuzz targets run (`fuzz/checks.rs`), on stable, in plain
//! `cargo test`. A crash found by `cargo fuzz` is kept by copying its input
//! into `fuzz/regressions/<target>/`; from then on this test holds it fixed.

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(
                outcome.is_ok(),
                "{target}: {} fails its check",
                path.display()
            );
            inputs += 1;
        }
    }
    // The corpus is committed: an empty one means it went missing.
    assert!(inputs > 0, "no kept inputs for {target}");
}

#[test]
fn webhook_body() {
    replay("webhook_body", checks::webhook_body);
}

#[test]
fn state_response() {
    replay("state_response", checks::state_response);
}

#[test]
fn context_id() {
    replay("context_id", checks::context_id);
}

#[test]
fn token() {
    replay("token", checks::token);
}
