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

/// Every `.rs` file under `dirs` (relative to the repository).
fn rust_files(dirs: &[&str]) -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| root.join(d)).collect();
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

fn relative(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Files split at their seams before they reach this many lines (a
/// `mod tests` in a sibling `tests.rs` counts as a split).
const MAX_FILE_LINES: usize = 800;

#[test]
fn no_source_or_test_file_is_over_800_lines() {
    // (file, why it may be longer): keep this list short and give a reason.
    const ALLOWED: &[(&str, &str)] = &[];
    let mut violations = Vec::new();
    for (path, text) in rust_files(&["src", "tests"]) {
        let lines = text.lines().count();
        let name = relative(&path);
        if lines > MAX_FILE_LINES && !ALLOWED.iter().any(|(file, _)| *file == name) {
            violations.push(format!(
                "{name}: {lines} lines; split it at its seams (at most {MAX_FILE_LINES})"
            ));
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// `code` with comments, string and character literals blanked out (lines
/// kept), so that braces can be counted.
fn code_only(code: &str) -> String {
    let bytes = code.as_bytes();
    let mut out = String::with_capacity(code.len());
    let blank = |text: &str, out: &mut String| {
        out.extend(text.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
    };
    let mut i = 0;
    while i < bytes.len() {
        let rest = &code[i..];
        let after_ident = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let end = if rest.starts_with("//") {
            rest.find('\n').unwrap_or(rest.len())
        } else if let Some(comment) = rest.strip_prefix("/*") {
            comment.find("*/").map_or(rest.len(), |at| at + 4)
        } else if !after_ident
            && (rest.starts_with("r\"") || rest.starts_with("r#") || rest.starts_with("br"))
        {
            let open = rest.find('"').unwrap_or(0);
            let hashes_from = rest.find('r').unwrap() + 1;
            if open < hashes_from || !rest[hashes_from..open].chars().all(|c| c == '#') {
                1
            } else {
                let hashes = &rest[hashes_from..open];
                let close = format!("\"{hashes}");
                rest[open + 1..]
                    .find(&close)
                    .map_or(rest.len(), |at| open + 1 + at + close.len())
            }
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() && rest.as_bytes()[j] != b'"' {
                j += if rest.as_bytes()[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(rest.len())
        } else if let Some(body) = rest.strip_prefix('\'') {
            // A character literal ('x', '\n', '\u{..}'); a lifetime otherwise.
            let len = if body.starts_with('\\') {
                body.get(2..)
                    .and_then(|tail| tail.find('\''))
                    .map(|at| at + 4)
            } else {
                body.chars()
                    .next()
                    .filter(|_| body.chars().nth(1) == Some('\''))
                    .map(|c| c.len_utf8() + 2)
            };
            len.unwrap_or(1)
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
            continue;
        };
        if end == 1 && !rest.starts_with('"') {
            out.push(rest.chars().next().unwrap());
            i += 1;
            continue;
        }
        blank(&rest[..end], &mut out);
        i += end;
    }
    out
}

/// (name, first line, length in lines) of every function with a body.
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let code = code_only(text);
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(at) = line.find("fn ") else { continue };
        let head = line[..at].trim();
        let qualifiers = head.split_whitespace().all(|word| {
            matches!(word, "pub" | "const" | "async" | "unsafe" | "extern")
                || word.starts_with("pub(")
                || word.starts_with('"')
        });
        if !qualifiers {
            continue;
        }
        let name: String = line[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue;
        }
        let (mut depth, mut opened) = (0usize, false);
        'body: for (offset, body_line) in lines[start..].iter().enumerate() {
            for c in body_line.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => {
                        depth = depth.saturating_sub(1);
                        if opened && depth == 0 {
                            out.push((name.clone(), start + 1, offset + 1));
                            break 'body;
                        }
                    }
                    ';' if !opened => break 'body,
                    _ => {}
                }
            }
        }
    }
    out
}

/// Functions are split before they reach this many lines.
const MAX_FUNCTION_LINES: usize = 120;

#[test]
fn no_source_function_is_over_120_lines() {
    // (file, function, why it is still longer): to be split at their
    // seams; none may be added.
    const ALLOWED: &[(&str, &str, &str)] = &[
        (
            "src/app.rs",
            "run_with",
            "the wiring, one service after another",
        ),
        (
            "src/pg/startup.rs",
            "handle",
            "the startup sequence; weak-auth work under way",
        ),
        ("src/pg/relay.rs", "run", "the relay's select loop"),
        (
            "src/pg/query.rs",
            "on_client",
            "one arm per frontend message",
        ),
        (
            "src/pg/upstream.rs",
            "login_on",
            "one arm per authentication request",
        ),
        (
            "src/discovery/resource.rs",
            "to_target",
            "one arm per source; discovery under way",
        ),
        (
            "src/discovery/check.rs",
            "check_role",
            "one check after another",
        ),
        (
            "src/ssh/forward.rs",
            "run",
            "a forward's whole lifecycle, like channel::run was",
        ),
        (
            "src/ssh/upstream.rs",
            "connect",
            "transport then each authentication method",
        ),
        ("src/export/mod.rs", "run", "a sink's delivery loop"),
        (
            "src/export/verify.rs",
            "verify_copy",
            "one check after another",
        ),
        ("src/export/ocsf.rs", "event", "one arm per OCSF class"),
        (
            "src/store/audit.rs",
            "list_sql",
            "one clause per filter; search under way",
        ),
        (
            "src/cli/audit.rs",
            "events_command",
            "one option after another",
        ),
        ("src/web/ui/sessions.rs", "session", "one maud page"),
        (
            "src/metrics.rs",
            "render",
            "one line per metric, in exposition order",
        ),
    ];
    let mut violations = Vec::new();
    for (path, text) in rust_files(&["src"]) {
        let name = relative(&path);
        for (function, line, length) in functions(&text) {
            if length > MAX_FUNCTION_LINES
                && !ALLOWED.iter().any(|&(f, n, _)| f == name && n == function)
            {
                violations.push(format!(
                    "{name}:{line}: fn {function} is {length} lines (at most {MAX_FUNCTION_LINES})"
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn function_lengths_are_measured_past_strings_and_comments() {
    let text = r##"
fn short() {
    let s = "}{";
    let c = '}';
    let q = '\'';
    let r = r#"}}"#;
    // }
}

pub(crate) async fn longer<'a>(x: &'a str) -> &'a str {
    /* { */
    if x.is_empty() {
        x
    } else {
        x
    }
}

fn declared();
"##;
    assert_eq!(
        functions(text),
        vec![("short".into(), 2, 7), ("longer".into(), 10, 8)]
    );
}
