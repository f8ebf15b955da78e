//! Request kinds are named only in `gestor-api`.
//!
//! Every other crate refers to a kind through its type
//! (`ctx.serve::<ring::Lookup>(…)`, `client.request::<user::Login>(…)`),
//! never by spelling its name. This test reads the workspace's Rust sources
//! and fails on any string literal equal to a kind name, a signal topic or a
//! reserved kind prefix that `gestor-api` declares, outside `plugins/api`
//! (and outside this file and the test fixtures).
//!
//! `GESTOR_SCAN_ROOT` points the scan at another source tree (e.g. an
//! export of an older commit, to see the check fail there).

use gestor_api::{node, ring, status, topics};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What may not be spelled outside the API crate.
fn forbidden() -> BTreeSet<&'static str> {
    let mut set: BTreeSet<&'static str> = gestor_api::all().iter().map(|k| k.name).collect();
    set.extend(topics::ALL.iter().copied());
    set.extend([ring::PREFIX, status::PREFIX, node::PREFIX]);
    set
}

/// The string literals of a Rust source (not byte or C strings, not
/// comments), each with its line number.
fn string_literals(src: &str) -> Vec<(usize, String)> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let is_ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    // Advance over `c[from..to]`, counting newlines.
    let count_lines = |from: usize, to: usize, line: &mut usize| {
        *line += c[from..to.min(c.len())]
            .iter()
            .filter(|&&ch| ch == '\n')
            .count();
    };
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if ch == '/' && next == Some('*') {
            let start = i;
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            count_lines(start, i, &mut line);
            continue;
        }
        if ch == '\'' {
            // A char literal ('x', '\n', '"') or a lifetime ('a).
            if next == Some('\\') {
                let start = i;
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                count_lines(start, i, &mut line);
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
            continue;
        }
        // String literal prefixes: r, b, br, c, cr (only at the start of a token).
        let token_start = i == 0 || !is_ident(c[i - 1]);
        let mut j = i;
        let mut byte_or_c = false;
        let mut raw = false;
        if token_start && matches!(ch, 'b' | 'c') {
            byte_or_c = true;
            j += 1;
        }
        if token_start && c.get(j) == Some(&'r') && matches!(c.get(j + 1), Some('"') | Some('#')) {
            raw = true;
            j += 1;
        }
        let mut hashes = 0;
        if raw {
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
        }
        if c.get(j) != Some(&'"') {
            if is_ident(ch) {
                // Skip the whole identifier, so `xr"` is never read as a prefix.
                while i < c.len() && is_ident(c[i]) {
                    i += 1;
                }
            } else {
                if ch == '\n' {
                    line += 1;
                }
                i += 1;
            }
            continue;
        }
        // c[j] is the opening quote.
        let start_line = line;
        let start = j + 1;
        let mut k = start;
        let mut text = String::new();
        while let Some(&q) = c.get(k) {
            if raw {
                if q == '"' && (1..=hashes).all(|h| c.get(k + h) == Some(&'#')) {
                    break;
                }
                text.push(q);
                k += 1;
            } else if q == '\\' {
                if let Some(&e) = c.get(k + 1) {
                    text.push('\\');
                    text.push(e);
                }
                k += 2;
            } else if q == '"' {
                break;
            } else {
                text.push(q);
                k += 1;
            }
        }
        let end = (k + 1 + if raw { hashes } else { 0 }).min(c.len());
        count_lines(i, end, &mut line);
        i = end;
        if !byte_or_c {
            out.push((start_line, text));
        }
    }
    out
}

fn workspace_root() -> PathBuf {
    match std::env::var_os("GESTOR_SCAN_ROOT") {
        Some(root) => PathBuf::from(root),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent")
            .to_path_buf(),
    }
}

fn rust_files(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let rel_str = rel.to_string_lossy().replace('\\', "/");
        let skipped = rel_str == "target"
            || rel_str.starts_with('.')
            || rel_str == "plugins/api"
            || rel_str == "tests/fixtures"
            || rel_str == "tests/tests/api_literals.rs";
        if skipped {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn kind_names_appear_only_in_the_api_crate() {
    let root = workspace_root();
    let forbidden = forbidden();
    let mut files = Vec::new();
    for top in [
        "plugins",
        "host",
        "client",
        "backends",
        "tests",
        "examples",
        "transports",
        "storage",
    ] {
        rust_files(&root.join(top), &root, &mut files);
    }
    assert!(
        files.iter().any(|f| f.ends_with("plugins/ring/src/lib.rs"))
            && files.iter().any(|f| f.ends_with("client/src/chat/mod.rs")),
        "the scan found no sources under {}",
        root.display()
    );
    let mut found = Vec::new();
    for file in &files {
        let src = std::fs::read_to_string(file).unwrap();
        for (line, text) in string_literals(&src) {
            if forbidden.contains(text.as_str()) {
                let rel = file.strip_prefix(&root).unwrap_or(file);
                found.push(format!("{}:{line}: \"{text}\"", rel.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "kind names spelled outside gestor-api (use the kind's type, e.g. \
         ctx.call::<ring::Lookup>, or a constant from gestor_api):\n  {}",
        found.join("\n  ")
    );
}

#[test]
fn the_scanner_finds_literals_and_skips_the_rest() {
    let src = r####"
// "ring.lookup" in a comment
/* "dir.login" in a /* nested */ block */
/// "user.login" in a doc comment
fn f<'a>(x: &'a str) -> char {
    let _ = b"ring.rpc";
    let _ = c"ring.rpc";
    let _ = br#"ring.rpc"#;
    let _ = ('"', '\'', '\\');
    call("ring.lookup", r#"mail.put"#, "esc\"aped", r"node.ping");
    let bar = "not a kind";
    'x'
}
"####;
    let lits = string_literals(src);
    let texts: Vec<&str> = lits.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        texts,
        [
            "ring.lookup",
            "mail.put",
            "esc\\\"aped",
            "node.ping",
            "not a kind"
        ]
    );
    assert_eq!(lits[0].0, 10, "line numbers count from 1");
    let forbidden = forbidden();
    for name in [
        "ring.lookup",
        "mail.put",
        "node.ping",
        "replica.hb",
        "status.",
    ] {
        assert!(forbidden.contains(name), "{name}");
    }
}
