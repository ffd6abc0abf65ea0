#![allow(clippy::unwrap_used)] // a build script reports problems by panicking
//! Embeds `migrations/{sqlite,postgres}/*.sql` into the binary, so that a
//! deployed broker migrates its database without the source tree.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let mut out = String::new();
    for backend in ["sqlite", "postgres"] {
        let dir = Path::new("migrations").join(backend);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .collect();
        files.sort();
        writeln!(
            out,
            "pub const {}: &[(i64, &str, &str)] = &[",
            backend.to_uppercase()
        )
        .unwrap();
        for path in files {
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let (version, name) = stem
                .split_once('_')
                .unwrap_or_else(|| panic!("{stem}: expected NNNN_name.sql"));
            let version: i64 = version
                .parse()
                .unwrap_or_else(|_| panic!("{stem}: version must be a number"));
            let abs = std::fs::canonicalize(&path).unwrap();
            writeln!(
                out,
                "    ({version}, {name:?}, include_str!({:?})),",
                abs.display().to_string()
            )
            .unwrap();
        }
        writeln!(out, "];").unwrap();
    }
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("migrations.rs");
    std::fs::write(dest, out).unwrap();
}
