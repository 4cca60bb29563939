//! Keeps the words true: every Rust file of the workspace opens with a `//!` paragraph, and
//! what those paragraphs name exists. A file named in backticks must exist in the
//! repository; an item named in backticks or an intra-doc link must be defined somewhere in
//! the workspace's sources. Environment variables and constants (all capitals) and plain
//! lower-case words are taken as prose. It reads the
//! sources only; it builds and runs nothing.
//!
//! For example, a header that names a file no_such_file.rs or an item NoSuchType in
//! backticks fails it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

/// Every `.rs` file of the workspace, `target/` and hidden directories left out.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if p.is_dir() {
            sources(&p, out);
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// Every file of the repository (any extension), `target/` and hidden directories left out.
fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The `//!` paragraph a file opens with (its leading run of `//!` lines).
fn header(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .take_while(|l| l.trim_start().starts_with("//!"))
        .map(|l| l.trim_start().trim_start_matches("//!"))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The backticked spans of a header.
fn ticks(h: &str) -> Vec<String> {
    h.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// Names defined anywhere in the sources: items, fields, variants, modules and files.
fn defined(files: &[(PathBuf, String)]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let kinds = [
        "struct ",
        "enum ",
        "fn ",
        "trait ",
        "type ",
        "mod ",
        "const ",
        "static ",
        "macro_rules! ",
    ];
    for (path, text) in files {
        if let Some(stem) = path.file_stem() {
            names.insert(stem.to_string_lossy().into_owned());
        }
        for line in text.lines() {
            let l = line.trim_start();
            for k in kinds {
                if let Some(at) = l.find(k) {
                    let rest = &l[at + k.len()..];
                    let name: String = rest
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        names.insert(name);
                    }
                }
            }
            // Wire names written as string literals (`"not_active"`, a JSON error code).
            for (i, part) in line.split('"').enumerate() {
                if i % 2 == 1
                    && !part.is_empty()
                    && part.chars().all(|c| c.is_alphanumeric() || c == '_')
                {
                    names.insert(part.to_string());
                }
            }
            // Fields (`pub name: T`) and enum variants (`Name,` / `Name {` / `Name(`).
            let word: String = l
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub(super) ")
                .trim_start_matches("pub ")
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !word.is_empty() {
                let after = l[l.find(&word).map_or(0, |i| i + word.len())..].trim_start();
                if after.starts_with(':')
                    || after.starts_with(',')
                    || after.starts_with('{')
                    || after.starts_with('(')
                    || after.starts_with('=')
                {
                    names.insert(word);
                }
            }
        }
    }
    names
}

/// A backticked span that names a file: `x.rs`, `dir/x.rs`, `dir/`.
fn file_like(t: &str) -> bool {
    !t.contains(' ')
        && !t.contains("::")
        && !t.contains('{')
        && !t.contains('*')
        && (t.ends_with(".rs") || t.ends_with(".md") || t.ends_with(".toml"))
}

/// A backticked span that names one Rust item: `Core`, `Core::tick`, `run_session`.
fn item_like(t: &str) -> Option<Vec<String>> {
    let t = t.trim_end_matches("()");
    let parts: Vec<&str> = t
        .split("::")
        .filter(|p| !matches!(*p, "super" | "crate" | "self" | "std"))
        .collect();
    let ident = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_alphanumeric() || c == '_')
            && s.chars().next().is_some_and(|c| c.is_alphabetic())
    };
    if parts.is_empty() || !parts.iter().all(|p| ident(p)) {
        return None;
    }
    if parts.iter().any(|p| p.chars().all(|c| !c.is_lowercase())) {
        return None; // `RUST_LOG`, `BATON_CHAOS_SEED`: environment variables and constants
    }
    // Plain lower-case words are as often prose (`crash`, `error`) as items; only names with a
    // capital or an underscore or a path are checked.
    let t = parts.join("::");
    let checked = parts.len() > 1
        || t.contains('_')
        || t.chars().next().is_some_and(|c| c.is_uppercase())
            && t.chars().any(|c| c.is_lowercase());
    checked.then(|| parts.iter().map(|p| p.to_string()).collect())
}

/// Whether a file named in a header exists: some file of the repository whose path ends with
/// it (headers name files the way a reader would: `node.rs`, `repl/leader.rs`,
/// `replica/src/node.rs`).
fn file_exists(all: &[PathBuf], name: &str) -> bool {
    let name = name.trim_start_matches("./");
    if name.starts_with("../shared/") {
        return true; // the product contract, outside this repository
    }
    all.iter().any(|p| {
        let p = p.to_string_lossy();
        p.ends_with(&format!("/{name}"))
    })
}

#[test]
fn every_rust_file_opens_with_a_header_whose_names_exist() {
    let repo = repo();
    let mut paths = Vec::new();
    sources(&repo, &mut paths);
    paths.sort();
    assert!(
        paths.len() > 50,
        "found only {} sources under {repo:?}",
        paths.len()
    );
    let files: Vec<(PathBuf, String)> = paths
        .iter()
        .map(|p| {
            (
                p.clone(),
                std::fs::read_to_string(p).expect("read a source"),
            )
        })
        .collect();
    let names = defined(&files);
    let mut paths_all = Vec::new();
    all_files(&repo, &mut paths_all);
    let mut problems = Vec::new();
    for (path, text) in &files {
        let rel = path
            .strip_prefix(&repo)
            .unwrap_or(path)
            .display()
            .to_string();
        let Some(h) = header(text) else {
            problems.push(format!("{rel}: does not open with a `//!` paragraph"));
            continue;
        };
        for t in ticks(&h) {
            let t = t.trim_start_matches('[').trim_end_matches(']').to_string();
            if file_like(&t) {
                if !file_exists(&paths_all, &t) {
                    problems.push(format!(
                        "{rel}: its header names `{t}`, which does not exist"
                    ));
                }
            } else if let Some(parts) = item_like(&t) {
                for p in parts {
                    if !names.contains(&p) {
                        problems.push(format!(
                            "{rel}: its header names `{t}`, but `{p}` is defined nowhere"
                        ));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "stale headers:\n{}",
        problems.join("\n")
    );
}

/// The check itself fails on a stale header (a test that cannot fail is a defect).
#[test]
fn the_header_check_catches_a_missing_file_and_a_missing_item() {
    let repo = repo();
    let here = repo.join("tests/tests/headers.rs");
    let mut all = Vec::new();
    all_files(&repo, &mut all);
    assert!(!file_exists(&all, "no_such_file.rs"));
    assert!(file_exists(&all, "headers.rs"));
    assert!(file_exists(&all, "tests/headers.rs"));
    assert!(!file_exists(&all, "replica/headers.rs"));
    let files = vec![(
        here.clone(),
        "//! x\npub struct Present;\nfn helper_fn() {}\nconst C: &str = \"wire_name\";\n"
            .to_string(),
    )];
    let names = defined(&files);
    assert!(names.contains("Present") && names.contains("helper_fn"));
    assert!(
        names.contains("wire_name"),
        "string literals name wire values"
    );
    assert_eq!(
        item_like("Absent::go"),
        Some(vec!["Absent".into(), "go".into()])
    );
    assert!(!names.contains("Absent"));
    assert_eq!(item_like("crash"), None, "plain words are prose");
    assert_eq!(
        item_like("RUST_LOG"),
        None,
        "environment variables are prose"
    );
    assert_eq!(item_like("super::Core"), Some(vec!["Core".into()]));
    assert_eq!(header("//! a\n//! b\nfn x() {}"), Some(" a\n b".into()));
    assert_eq!(header("fn x() {}"), None);
}
