//! The arrows the design forbids stay out: data flows ingest -> store -> (api, sync, rules), and the
//! helpers every part shares (clock, values, histogram, MQTT client set-up) are leaves.
//!
//! Reads the hub's sources and fails on any `crate::<part>` path, outside comments, that a part
//! may not use. A new forbidden import fails `cargo test` with the file and line.

#![allow(
    clippy::expect_used,
    reason = "a test: a source tree it cannot read is a failure"
)]

use std::path::{Path, PathBuf};

/// Each part (a directory of `src/`, or a leaf file) and the parts it must not import.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "store",
        &[
            "ingest", "api", "sync", "metrics", "commands", "app", "cli", "rules",
        ],
    ),
    (
        "sync",
        &["ingest", "api", "commands", "app", "cli", "rules"],
    ),
    (
        "ingest",
        &["api", "sync", "commands", "app", "cli", "rules"],
    ),
    // Rules follow the store like sync: they act through commands, the live stream and the
    // shared clients, never through ingest, the API or the sinks.
    (
        "rules",
        &["ingest", "api", "sync", "metrics", "auth", "app", "cli"],
    ),
    // Home Assistant discovery follows the store like the rules.
    (
        "homeassistant",
        &[
            "ingest", "api", "sync", "commands", "metrics", "app", "cli", "rules",
        ],
    ),
];

/// Leaf modules: they import no part of the hub at all.
const LEAVES: &[&str] = &[
    "clock.rs",
    "values.rs",
    "histogram.rs",
    "mqtt_client.rs",
    "exposition.rs",
    "patterns.rs",
    "http_client.rs",
    "ratelimit.rs",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `crate::<part>` paths of `text` outside comments, with their line numbers.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let part: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.push((n + 1, part));
            rest = after;
        }
    }
    found
}

/// `file` as a path under `src/`.
fn shown(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap_or(file);
    format!("src/{}", relative.display())
}

#[test]
fn no_part_imports_what_the_design_forbids() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (part, forbidden) in FORBIDDEN {
        let mut files = Vec::new();
        sources(&src.join(part), &mut files);
        assert!(!files.is_empty(), "no sources under src/{part}");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read a source file");
            for (line, used) in crate_paths(&text) {
                if forbidden.contains(&used.as_str()) {
                    violations.push(format!(
                        "{}:{line}: {part} imports crate::{used}",
                        shown(&src, &file)
                    ));
                }
            }
        }
    }
    for leaf in LEAVES {
        let file = src.join(leaf);
        let text = std::fs::read_to_string(&file).expect("read a leaf module");
        for (line, used) in crate_paths(&text) {
            violations.push(format!(
                "{}:{line}: the leaf {leaf} imports crate::{used}",
                shown(&src, &file)
            ));
        }
    }
    assert!(
        violations.is_empty(),
        "forbidden imports:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_check_sees_an_import_and_skips_comments() {
    let text = "use crate::ingest::now_ms;\n// crate::api in a comment\nlet x = crate::sync::y(); // crate::cli\n";
    let parts: Vec<String> = crate_paths(text).into_iter().map(|(_, p)| p).collect();
    assert_eq!(parts, ["ingest", "sync"]);
}
