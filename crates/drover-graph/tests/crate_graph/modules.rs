//! Rooms of a readable size (issue 19): no module cycle inside a crate, and no source file
//! over [`MAX_LINES`] lines.
//!
//! **Module cycles.** Each workspace crate's `src/` tree is read as text. A crate's top-level
//! modules are the entries of `src/` (`x.rs` or `x/`, not `lib.rs`/`main.rs`); a file belongs
//! to the top-level module of its first path component. An edge `a -> b` is a path in a file
//! of `a` that names `b`:
//!
//! - `crate::b::...`, `crate::{b, ...}` (also `$crate::` in macros), in `use` or in a path;
//! - `super::` resolved from the file's module path, inline `mod x { ... }` blocks included
//!   (`super::super::b` from a `mod tests` in `src/a/c.rs` is `a`, not `b`); when the `super`s
//!   reach the crate root, the next name is resolved as after `crate::`;
//! - a name at the crate root that the root file re-exports from `b` (`pub use b::Thing;`
//!   makes `crate::Thing` an edge to `b`); glob re-exports are not followed.
//!
//! Comments, string and character literals are blanked out first, so a path in a doc comment
//! or a message is no edge. A cycle among a crate's top-level modules fails the test, naming
//! it with the file and line of each edge, unless it is in [`KNOWN_CYCLES`], which only
//! shrinks: an entry that no longer matches a cycle fails too, so it is removed when the cycle
//! is broken.
//!
//! **Long files.** A `.rs` file under `crates/*/src` over [`MAX_LINES`] lines fails the test,
//! unless it is [`GENERATED`] (with the reason) or in [`SPLITTING`], the files being cut up
//! today; an entry of either that is no longer over the limit (or no longer exists) fails, so
//! the lists shrink as the splits land. Tests (`crates/*/tests`) are not counted.
//!
//! **The change map.** Every path in `crates/README.md`'s "To change X, open Y" table exists,
//! so the map follows the files when they move.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The most lines a source file under `crates/*/src` may have.
const MAX_LINES: usize = 700;

/// Generated source files allowed over [`MAX_LINES`]: `(path from the workspace root, why)`.
/// None today: every generated artefact (`schemas/`, the config reference) is written outside
/// `src/` by `drover schemas`.
const GENERATED: &[(&str, &str)] = &[];

/// Files over [`MAX_LINES`] that other work of issue 19 is splitting; remove an entry when its
/// split lands (the test says so once the file is short enough).
const SPLITTING: &[&str] = &[];

/// Module cycles that exist today and are being broken elsewhere: `(crate, its modules in the
/// cycle, sorted)`. Remove an entry when its cycle goes (the test says so).
const KNOWN_CYCLES: &[(&str, &[&str])] = &[];

/// The workspace root.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

/// Every `.rs` file under `dir`, as paths relative to `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path.strip_prefix(dir).expect("under dir").to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// `crates/<name>/src` for every crate directory, by crate directory name.
fn crate_sources() -> BTreeMap<String, PathBuf> {
    let crates = workspace().join("crates");
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(&crates).expect("crates/") {
        let dir = entry.expect("crates/ entry").path();
        if dir.join("Cargo.toml").is_file() && dir.join("src").is_dir() {
            let name = dir.file_name().expect("name").to_string_lossy().into_owned();
            out.insert(name, dir.join("src"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Reading Rust source just well enough to find paths.

/// `src` with comments, string literals and character literals replaced by spaces (newlines
/// kept, so line numbers stay right). Lifetimes and labels are kept.
fn blank(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out: Vec<char> = c.clone();
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let blank_range = |out: &mut Vec<char>, from: usize, to: usize| {
        for ch in out.iter_mut().take(to.min(c.len())).skip(from) {
            if *ch != '\n' {
                *ch = ' ';
            }
        }
    };
    let mut i = 0;
    while i < c.len() {
        let prev_ident = i > 0 && ident(c[i - 1]);
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                let end = c[i..].iter().position(|&ch| ch == '\n').map_or(c.len(), |p| i + p);
                blank_range(&mut out, i, end);
                i = end;
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                let (mut depth, mut j) = (1, i + 2);
                while j < c.len() && depth > 0 {
                    if c[j] == '/' && c.get(j + 1) == Some(&'*') {
                        depth += 1;
                        j += 2;
                    } else if c[j] == '*' && c.get(j + 1) == Some(&'/') {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                blank_range(&mut out, i, j);
                i = j;
            }
            // A raw string: r"..", r#".."#, br"..", cr"..".
            'r' if !prev_ident
                || (i >= 1 && matches!(c[i - 1], 'b' | 'c') && (i < 2 || !ident(c[i - 2]))) =>
            {
                let hashes = c[i + 1..].iter().take_while(|&&ch| ch == '#').count();
                if c.get(i + 1 + hashes) == Some(&'"') {
                    let mut j = i + 2 + hashes;
                    loop {
                        if j >= c.len() {
                            break;
                        }
                        if c[j] == '"'
                            && c[j + 1..].iter().take(hashes).filter(|&&h| h == '#').count()
                                == hashes
                        {
                            j += 1 + hashes;
                            break;
                        }
                        j += 1;
                    }
                    blank_range(&mut out, i, j);
                    i = j;
                } else {
                    i += 1;
                }
            }
            '"' => {
                let mut j = i + 1;
                while j < c.len() && c[j] != '"' {
                    j += if c[j] == '\\' { 2 } else { 1 };
                }
                blank_range(&mut out, i, j + 1);
                i = j + 1;
            }
            '\'' => {
                // '\n', '\u{..}', '\'' are characters; 'x' is one; 'a (no closing quote) is a
                // lifetime or a label.
                if c.get(i + 1) == Some(&'\\') {
                    let mut j = i + 3;
                    while j < c.len() && c[j] != '\'' {
                        j += 1;
                    }
                    blank_range(&mut out, i, j + 1);
                    i = j + 1;
                } else if c.get(i + 2) == Some(&'\'') {
                    blank_range(&mut out, i, i + 3);
                    i += 3;
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out.into_iter().collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Punct(char),
}

/// Tokens of blanked source with their 1-based line numbers (numbers and lifetimes are
/// skipped: no path starts with either).
fn tokens(blanked: &str) -> Vec<(Tok, usize)> {
    let c: Vec<char> = blanked.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '\'' || ch.is_ascii_digit() {
            // A lifetime or a number: skip it whole.
            i += 1;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            out.push((Tok::Ident(word.trim_start_matches("r#").to_owned()), line));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push((Tok::Path, line));
            i += 2;
        } else {
            out.push((Tok::Punct(ch), line));
            i += 1;
        }
    }
    out
}

fn ident(tok: Option<&(Tok, usize)>) -> Option<&str> {
    match tok {
        Some((Tok::Ident(w), _)) => Some(w),
        _ => None,
    }
}

/// The first segment of every item of the use-tree group opening at `toks[open]` (`{`), and
/// the index after its closing `}`.
fn group_heads(toks: &[(Tok, usize)], open: usize) -> (Vec<String>, usize) {
    let (mut heads, mut depth, mut i, mut expect_head) = (Vec::new(), 0usize, open, false);
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => {
                depth += 1;
                expect_head = depth == 1;
            }
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return (heads, i + 1);
                }
            }
            Tok::Punct(',') if depth == 1 => expect_head = true,
            Tok::Ident(w) if expect_head => {
                heads.push(w.clone());
                expect_head = false;
            }
            _ => expect_head = false,
        }
        i += 1;
    }
    (heads, i)
}

/// Every name a root-level `use` of the root file brings in, by the top-level module it comes
/// from (`pub use session::{Session, MAX as LIMIT};` gives `Session` and `LIMIT` -> `session`).
fn root_reexports(root: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let toks = tokens(&blank(root));
    let mut out = BTreeMap::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth = depth.saturating_sub(1),
            Tok::Ident(w) if w == "use" && depth == 0 => {
                let mut j = i + 1;
                if matches!(ident(toks.get(j)), Some("crate" | "self")) {
                    j += 2;
                }
                if let Some(module) = ident(toks.get(j)).filter(|m| modules.contains(*m)) {
                    let module = module.to_owned();
                    // Every leaf name up to the `;`: an identifier not followed by `::` (or
                    // the alias after `as`).
                    while j < toks.len() && toks[j].0 != Tok::Punct(';') {
                        if let Tok::Ident(w) = &toks[j].0 {
                            let next = toks.get(j + 1).map(|t| &t.0);
                            let aliased = ident(toks.get(j + 1)) == Some("as");
                            if next != Some(&Tok::Path) && !aliased && w != "as" && w != "self" {
                                out.insert(w.clone(), module.clone());
                            }
                        }
                        j += 1;
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// One module edge found in a file: `(from, to, line)`.
type Found = (String, String, usize);

/// The top-level module of a file under `src/` (`None` for the crate roots) and its module
/// path (`a/b/mod.rs` and `a/b.rs` are both `[a, b]`).
fn module_path(rel: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> =
        rel.iter().map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned()).collect();
    if parts.len() == 1 && matches!(parts[0].as_str(), "lib" | "main") {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    Some(parts)
}

/// The edges to other top-level modules in one file of top-level module `path[0]`.
fn file_edges(
    path: &[String],
    src: &str,
    modules: &BTreeSet<String>,
    reexports: &BTreeMap<String, String>,
) -> Vec<Found> {
    let toks = tokens(&blank(src));
    let from = &path[0];
    let mut found = Vec::new();
    let mut add = |name: &str, line: usize| {
        let to = if modules.contains(name) {
            Some(name)
        } else {
            reexports.get(name).map(String::as_str)
        };
        if let Some(to) = to.filter(|to| *to != from) {
            found.push((from.clone(), to.to_owned(), line));
        }
    };
    // Inline modules: (name, brace depth inside them).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = (&toks[i].0, toks[i].1);
        let after_path = i > 0 && toks[i - 1].0 == Tok::Path;
        match tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some(name), Some((Tok::Punct('{'), _))) =
                    (ident(toks.get(i + 1)), toks.get(i + 2))
                {
                    inline.push((name.to_owned(), depth + 1));
                }
            }
            Tok::Ident(w)
                if w == "crate"
                    && !after_path
                    && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Path) =>
            {
                i += 2;
                match toks.get(i) {
                    Some((Tok::Ident(name), l)) => add(name, *l),
                    Some((Tok::Punct('{'), _)) => {
                        let (heads, _) = group_heads(&toks, i);
                        heads.iter().for_each(|h| add(h, line));
                    }
                    _ => {}
                }
                continue;
            }
            Tok::Ident(w)
                if w == "super"
                    && !after_path
                    && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Path) =>
            {
                let mut ups = 0;
                while ident(toks.get(i)) == Some("super")
                    && toks.get(i + 1).map(|t| &t.0) == Some(&Tok::Path)
                {
                    ups += 1;
                    i += 2;
                }
                let here = path.len() + inline.len();
                if ups >= here {
                    // At the crate root: the next name (or group) is a root name.
                    match toks.get(i) {
                        Some((Tok::Ident(name), l)) => add(name, *l),
                        Some((Tok::Punct('{'), _)) => {
                            let (heads, _) = group_heads(&toks, i);
                            heads.iter().for_each(|h| add(h, line));
                        }
                        _ => {}
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Every edge between the top-level modules of the crate whose sources are `files`
/// (`(path under src/, text)`), with the file and line of each occurrence.
fn module_edges(files: &[(PathBuf, String)]) -> BTreeMap<(String, String), Vec<String>> {
    let modules: BTreeSet<String> =
        files.iter().filter_map(|(rel, _)| module_path(rel)).map(|p| p[0].clone()).collect();
    let mut reexports = BTreeMap::new();
    for (rel, text) in files {
        if module_path(rel).is_none() {
            reexports.extend(root_reexports(text, &modules));
        }
    }
    let mut edges: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (rel, text) in files {
        let Some(path) = module_path(rel) else { continue };
        for (from, to, line) in file_edges(&path, text, &modules, &reexports) {
            edges.entry((from, to)).or_default().push(format!("src/{}:{line}", rel.display()));
        }
    }
    edges
}

/// The strongly connected components with more than one module, each sorted.
fn cycles(edges: &BTreeMap<(String, String), Vec<String>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let reach = |start: &String| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![start.clone()];
        while let Some(n) = stack.pop() {
            for ((a, b), _) in edges.iter() {
                if *a == n && seen.insert(b.clone()) {
                    stack.push(b.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> = nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for n in &nodes {
        if !reach[n].contains(*n) {
            continue;
        }
        let mut scc: Vec<String> = nodes
            .iter()
            .filter(|m| reach[n].contains(**m) && reach[*m].contains(*n))
            .map(|m| (*m).clone())
            .collect();
        scc.sort();
        if scc.len() > 1 && !out.contains(&scc) {
            out.push(scc);
        }
    }
    out
}

/// One cycle through `scc[0]` inside `scc`, as `a -> b -> a` with where each edge is.
fn describe(scc: &[String], edges: &BTreeMap<(String, String), Vec<String>>) -> String {
    // Breadth-first from scc[0] back to itself.
    let start = &scc[0];
    let mut parent: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.clone()]);
    let mut last = None;
    'search: while let Some(n) = queue.pop_front() {
        for (a, b) in edges.keys().filter(|(a, b)| *a == n && scc.contains(b)) {
            if b == start {
                last = Some(a.clone());
                break 'search;
            }
            if !parent.contains_key(b) {
                parent.insert(b.clone(), a.clone());
                queue.push_back(b.clone());
            }
        }
    }
    let mut path = vec![start.clone()];
    let mut at = last.expect("a strongly connected component has a cycle");
    while at != *start {
        path.push(at.clone());
        at = parent[&at].clone();
    }
    path.push(start.clone());
    path.reverse();
    let steps: Vec<String> = path
        .windows(2)
        .map(|w| {
            format!("{} -> {} ({})", w[0], w[1], edges[&(w[0].clone(), w[1].clone())].join(", "))
        })
        .collect();
    format!("{} [{}]", path.join(" -> "), steps.join("; "))
}

#[test]
fn no_module_cycles() {
    let mut problems = Vec::new();
    let mut seen_known = BTreeSet::new();
    for (krate, src) in crate_sources() {
        let files: Vec<(PathBuf, String)> = rust_files(&src)
            .into_iter()
            .map(|rel| {
                let text = fs::read_to_string(src.join(&rel)).expect("read source");
                (rel, text)
            })
            .collect();
        let edges = module_edges(&files);
        for scc in cycles(&edges) {
            let known = KNOWN_CYCLES
                .iter()
                .any(|(k, members)| *k == krate && members.iter().eq(scc.iter()));
            if known {
                seen_known.insert((krate.clone(), scc.clone()));
            } else {
                problems.push(format!(
                    "{krate}: a module cycle among {scc:?}, for one: {}",
                    describe(&scc, &edges)
                ));
            }
        }
    }
    for (krate, members) in KNOWN_CYCLES {
        let members: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
        if !seen_known.contains(&((*krate).to_owned(), members.clone())) {
            problems.push(format!(
                "{krate}: the known cycle {members:?} is gone or changed; update KNOWN_CYCLES in crates/drover-graph/tests/crate_graph/modules.rs"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_long_source_files() {
    let root = workspace();
    let mut long = BTreeMap::new();
    for src in crate_sources().values() {
        for rel in rust_files(src) {
            let path = src.join(&rel);
            let lines = fs::read_to_string(&path).expect("read source").lines().count();
            let name =
                path.strip_prefix(&root).expect("in workspace").to_string_lossy().into_owned();
            long.insert(name, lines);
        }
    }
    let excused: BTreeSet<&str> =
        GENERATED.iter().map(|(p, _)| *p).chain(SPLITTING.iter().copied()).collect();
    let mut problems = Vec::new();
    for (file, lines) in &long {
        if *lines > MAX_LINES && !excused.contains(file.as_str()) {
            problems.push(format!(
                "{file} has {lines} lines (at most {MAX_LINES}): cut it along its seams"
            ));
        }
    }
    for file in excused {
        match long.get(file) {
            Some(lines) if *lines > MAX_LINES => {}
            Some(lines) => problems.push(format!(
                "{file} is down to {lines} lines: remove it from the lists in crates/drover-graph/tests/crate_graph/modules.rs"
            )),
            None => problems.push(format!(
                "{file} no longer exists: remove it from the lists in crates/drover-graph/tests/crate_graph/modules.rs"
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scanner_sees_paths_and_only_paths() {
    let file = |path: &str, text: &str| (PathBuf::from(path), text.to_owned());
    let files = [
        file("lib.rs", "mod a; mod b; mod c; mod d;\npub use c::{Thing, other::Deep as Alias};\n"),
        // `a` uses `b` through a group and `c` through the root's re-export of `Thing`; the
        // comment, the string and the lifetime name nothing.
        file(
            "a.rs",
            "use crate::{b::X, Thing};\n// crate::d::Nope in a comment\nconst S: &str = \"crate::d::Nope\";\nfn f<'a>(x: &'a str) -> char { 'x' }\n",
        ),
        // `super::super` from an inline module of a submodule stays inside `b`.
        file("b/mod.rs", "mod inner;\n"),
        file(
            "b/inner.rs",
            "#[cfg(test)]\nmod tests {\n    use super::super::Y;\n    use super::*;\n}\nfn g() { super::super::a::f(); }\n",
        ),
        file("c/mod.rs", "pub mod other;\npub struct Thing;\n"),
        file(
            "c/other.rs",
            "pub struct Deep; fn h() -> crate::Alias { todo!() }\nconst R: &str = r#\"use crate::d;\"#;\n",
        ),
        file("d.rs", "pub(crate) fn d() {}\n"),
    ];
    let edges = module_edges(&files);
    let keys: Vec<(&str, &str)> = edges.keys().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(keys, [("a", "b"), ("a", "c"), ("b", "a")], "{edges:?}");
    assert_eq!(edges[&("b".to_owned(), "a".to_owned())], ["src/b/inner.rs:6"]);
    let found = cycles(&edges);
    assert_eq!(found, [vec!["a".to_owned(), "b".to_owned()]]);
    let said = describe(&found[0], &edges);
    assert_eq!(said, "a -> b -> a [a -> b (src/a.rs:1); b -> a (src/b/inner.rs:6)]");
}

#[test]
fn the_change_map_names_real_paths() {
    // Every path in crates/README.md's "To change X, open Y" table exists: full paths from
    // crates/ (or the workspace root for `schemas/`), shorter paths in the `src/` of the crate
    // named before them, bare file names in the directory of the path before them, `<name>`
    // placeholders standing for any file in their directory.
    let root = workspace();
    let readme = fs::read_to_string(root.join("crates/README.md")).expect("crates/README.md");
    let table = readme
        .split("## To change X, open Y")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("crates/README.md has a \"To change X, open Y\" section");
    let mut checked = 0;
    let mut missing = Vec::new();
    for row in table.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| To change")) {
        let (mut dir, mut src) = (PathBuf::new(), PathBuf::new());
        for (i, piece) in row.split('`').enumerate() {
            let looks_like_path = piece.ends_with(".rs")
                || piece.ends_with(".md")
                || piece.ends_with(".json")
                || piece.ends_with('/');
            if i % 2 == 0 || !looks_like_path || piece.contains(' ') {
                continue;
            }
            let path = if piece.starts_with("schemas/") {
                root.join(piece)
            } else if piece.contains('/') && piece.starts_with("drover") {
                let krate = piece.split('/').next().expect("a crate name");
                src = root.join("crates").join(krate).join("src");
                root.join("crates").join(piece)
            } else if piece.contains('/') {
                src.join(piece)
            } else {
                dir.join(piece)
            };
            dir = if piece.ends_with('/') {
                path.clone()
            } else {
                path.parent().expect("a parent").to_path_buf()
            };
            let exists = if piece.contains("<name>") { dir.is_dir() } else { path.exists() };
            if !exists {
                missing.push(format!("{piece} (read as {})", path.display()));
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} paths found in the table");
    assert!(missing.is_empty(), "crates/README.md names paths that do not exist: {missing:?}");
}
