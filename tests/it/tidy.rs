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

/// The first segment of every `crate::` path in `code`, including each
/// member of a `crate::{a, b::c}` group.
fn crate_imports(code: &str) -> Vec<String> {
    let ident = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            out.push(ident(rest));
            continue;
        };
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    out.push(ident(&group[start..i]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(ident(&group[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
    }
    out.retain(|m| !m.is_empty());
    out
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
        if module != "web" {
            forbid("axum", "only web names axum (HTTP is the web room's)");
            forbid("maud", "only web names maud (HTML is the web room's)");
        }
        let imports = crate_imports(code);
        let mut import = |name: &str, why: &str| {
            if imports.iter().any(|m| m == name) {
                violations.push(format!(
                    "{}: imports `crate::{name}` ({why})",
                    path.display()
                ));
            }
        };
        // Services (and the domain, protocols and wiring helpers) serve the
        // rooms; only `app` (wiring) and `cli` (the client) may name them.
        if !ROOMS.contains(&module.as_str())
            && !["app", "cli", "lib", "main"].contains(&module.as_str())
        {
            for room in ROOMS {
                import(room, "services never import rooms");
            }
        }
        if module == "identity" {
            // Identity returns its own types (`Login`, `DeviceStart`,
            // `Principal`); the web room puts them on the wire.
            import("api", "identity builds no wire types");
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
fn the_repository_stands_alone_comments_cite_only_its_own_documents() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = sources();
    let mut stack = vec![
        root.join("tests"),
        root.join("benches"),
        root.join("scripts"),
    ];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(text) = std::fs::read_to_string(&path) {
                files.push((path, text));
            }
        }
    }
    let mut violations = Vec::new();
    for (path, text) in &files {
        if path.ends_with("tidy.rs") {
            continue;
        }
        for outside in [
            "PROTOCOLS.md",
            "RECIPES.md",
            "STACK.md",
            "STYLE.md",
            "../shared",
            "/work/shared",
        ] {
            if text.contains(outside) {
                violations.push(format!(
                    "{}: cites `{outside}`, a document outside the repository",
                    path.display()
                ));
            }
        }
        for (at, _) in text.match_indices("docs/") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || matches!(c, '/' | '-' | '_' | '.'))
                .collect();
            let name = name.trim_end_matches('.');
            if name.ends_with(".md") && !root.join(name).is_file() {
                violations.push(format!(
                    "{}: cites {name}, which does not exist",
                    path.display()
                ));
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

#[test]
fn the_release_binary_ships_without_debug_info() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&manifest).unwrap();
    let profiles = manifest["profile"].as_table().unwrap();
    let release = profiles["release"].as_table().unwrap();
    assert!(
        matches!(
            release.get("strip").and_then(|s| s.as_str()),
            Some("debuginfo" | "symbols")
        ),
        "[profile.release] must strip debug info: {release:?}"
    );
    // The same code with its line tables, for a split debug file.
    let symbols = profiles["symbols"].as_table().unwrap();
    assert_eq!(symbols["inherits"].as_str(), Some("release"));
    assert_eq!(symbols["strip"].as_str(), Some("none"));
}
