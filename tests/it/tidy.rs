//! Keeps the code map of ARCHITECTURE.md true: every source file says what
//! it is for, and modules import only what their invariants allow.

use std::path::{Path, PathBuf};

fn sources() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    out
}

fn module_of(path: &Path) -> String {
    let rel = path
        .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
        .unwrap();
    rel.components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

/// Lines that are code outside `#[cfg(test)]` modules (tests may use anything).
fn non_test_code(text: &str) -> &str {
    text.split("#[cfg(test)]").next().unwrap_or(text)
}

#[test]
fn every_source_file_starts_with_a_doc_comment() {
    for (path, text) in sources() {
        let first = text
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with("#!["))
            .unwrap_or("");
        assert!(
            first.starts_with("//!"),
            "{} must start with a //! line saying what it does",
            path.display()
        );
    }
}

#[test]
fn modules_import_only_what_their_invariants_allow() {
    // `ecs` is a service the SSH and PostgreSQL rooms call (ECS shells, SSM
    // port routes), not a listener.
    const ROOMS: [&str; 3] = ["ssh", "pg", "web"];
    let mut violations = Vec::new();
    for (path, text) in sources() {
        let module = module_of(&path);
        let code = non_test_code(&text);
        let mut forbid = |needle: &str, why: &str| {
            if code.contains(needle) {
                violations.push(format!("{}: uses `{needle}` ({why})", path.display()));
            }
        };
        if module == "domain" {
            for needle in [
                "crate::",
                "sqlx",
                "tokio",
                "cedar_policy",
                "russh",
                "axum",
                "aws_sdk",
                "aws_config",
            ] {
                if needle != "crate::" || code.contains("use crate::") {
                    forbid(needle, "domain has no I/O and no framework types");
                }
            }
        }
        if ROOMS.contains(&module.as_str()) {
            forbid("crate::store", "rooms reach storage only through services");
            for other in ROOMS {
                if other != module {
                    forbid(
                        &format!("crate::{other}::"),
                        "rooms never import each other",
                    );
                }
            }
        }
        if module != "store" {
            forbid("sqlx::", "only store has SQL");
        }
        if module != "policy" {
            forbid("cedar_policy", "only policy names cedar_policy");
        }
        if module != "aws" {
            forbid("aws_sdk_", "only aws names the AWS SDK");
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn one_random_source_and_constant_time_compares_from_subtle() {
    let mut violations = Vec::new();
    for (path, text) in sources() {
        let code = non_test_code(&text);
        for (needle, why) in [
            ("thread_rng", "the one random source is rand::rngs::OsRng"),
            ("SystemRandom", "the one random source is rand::rngs::OsRng"),
            ("getrandom", "the one random source is rand::rngs::OsRng"),
            (
                "fold(0u8",
                "constant-time compares use subtle::ConstantTimeEq",
            ),
        ] {
            if code.contains(needle) {
                violations.push(format!("{}: uses `{needle}` ({why})", path.display()));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn migrations_are_numbered_and_exist_for_both_backends() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let list = |backend: &str| {
        let mut names: Vec<String> = std::fs::read_dir(root.join(backend))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let sqlite = list("sqlite");
    let postgres = list("postgres");
    assert_eq!(sqlite, postgres, "every migration exists for both backends");
    for (i, name) in sqlite.iter().enumerate() {
        assert!(
            name.starts_with(&format!("{:04}_", i + 1)),
            "{name}: migrations are numbered 0001_, 0002_, ... without gaps"
        );
    }
}
