//! The source layout keeps its promise (README "How it works", `src/lib.rs`):
//! dependencies point one way, down the floors, and no files form a
//! circle. Read from the code itself: every `crate::` path, `use
//! crate::{...}` group, `super::` path and `use child::` of a declared
//! child module in `src/`, outside comments and `#[cfg(test)]` modules (a
//! unit test may cross-check against any module).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom first. A module may use its own folder and any folder below it.
const FLOORS: &[&str] = &[
    "util", "user", "config", "mail", "net", "store", "trust", "send", "read", "receive", "server",
    "admin",
];

/// Module path ("net::tls") → source text.
fn modules(root: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src")
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.path());
        for e in entries {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if p.is_dir() {
                walk(&p, &join(prefix, &name), out);
            } else if let Some(stem) = name.strip_suffix(".rs") {
                let m = match stem {
                    "mod" | "lib" => prefix.to_string(),
                    "main" => continue,
                    s => join(prefix, s),
                };
                out.insert(m, std::fs::read_to_string(&p).expect("read file"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out);
    out
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}::{b}")
    }
}

/// The code without comments and without the unit-test module.
fn code(src: &str) -> String {
    let mut out = String::new();
    let mut lines = src.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|n| n.trim_start().starts_with("mod tests"))
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        let line = match line.find("// ") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every module path a source file names, resolved against its own path.
fn references(module: &str, src: &str) -> BTreeSet<String> {
    let code = code(src);
    let mut refs = BTreeSet::new();
    let children: Vec<String> = code
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect();
    // The module that `super` names from this file.
    // (In `a/mod.rs`, module `a`, and in `a/b.rs`, module `a::b`, alike:
    // the module path without its last name.)
    let parent = match module.rfind("::") {
        Some(i) => module[..i].to_string(),
        None => String::new(),
    };
    let bytes = code.as_bytes();
    for (start, base) in [("crate::", String::new()), ("super::", parent)] {
        let mut from = 0;
        while let Some(i) = code[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            // `foo_crate::x` is not `crate::x`.
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            for p in expand(&code[from..]) {
                refs.insert(join(&base, &p));
            }
        }
    }
    for child in &children {
        for line in code.lines() {
            let t = line.trim();
            let t = t.strip_prefix("pub ").unwrap_or(t);
            if let Some(rest) = t.strip_prefix("use ") {
                if let Some(rest) = rest.strip_prefix(&format!("{child}::")) {
                    for p in expand(rest) {
                        refs.insert(join(&join(module, child), &p));
                    }
                }
            }
        }
    }
    refs
}

/// The paths in `a::b::C`, `a::{b, c::D}` (nested groups too), up to the
/// end of the path expression.
fn expand(s: &str) -> Vec<String> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('{') {
        let mut depth = 1;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = &rest[..end];
        let mut parts = Vec::new();
        let mut depth = 0;
        let mut cur = String::new();
        for c in inner.chars() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(c);
        }
        parts.push(cur);
        return parts
            .iter()
            .filter(|p| !p.trim().is_empty())
            .flat_map(|p| expand(p))
            .collect();
    }
    let mut path = String::new();
    let mut rest = s;
    loop {
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if word.is_empty() || word == "self" {
            break;
        }
        path = join(&path, &word);
        rest = &rest[word.len()..];
        match rest.strip_prefix("::") {
            Some(r) if r.starts_with('{') => {
                return expand(r).into_iter().map(|p| join(&path, &p)).collect();
            }
            Some(r) => rest = r,
            None => break,
        }
    }
    vec![path]
}

/// The graph: module → modules it uses (resolved to known modules).
fn graph(mods: &BTreeMap<String, String>) -> Graph {
    let mut g = Graph::new();
    for (m, src) in mods {
        let mut to = BTreeSet::new();
        for r in references(m, src) {
            // The longest prefix that is a module of ours.
            let mut p = r.as_str();
            loop {
                if mods.contains_key(p) {
                    if p != m && !p.is_empty() {
                        to.insert(p.to_string());
                    }
                    break;
                }
                match p.rfind("::") {
                    Some(i) => p = &p[..i],
                    None => break,
                }
            }
        }
        g.insert(m.clone(), to);
    }
    g
}

type Graph = BTreeMap<String, BTreeSet<String>>;

fn floor(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    FLOORS.iter().position(|f| *f == top)
}

/// Imports that go up a floor, as "from -> to".
fn upward(g: &Graph) -> Vec<String> {
    let mut bad = Vec::new();
    for (from, tos) in g {
        for to in tos {
            let (Some(a), Some(b)) = (floor(from), floor(to)) else {
                continue;
            };
            if b > a {
                bad.push(format!("{from} -> {to}"));
            }
        }
    }
    bad
}

/// A cycle in the graph, if there is one.
fn cycle(g: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &str,
        g: &Graph,
        mark: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        mark.insert(n.to_string(), Mark::Open);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match mark.get(m.as_str()).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let i = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[i..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Mark::New => {
                    if let Some(c) = visit(m, g, mark, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        mark.insert(n.to_string(), Mark::Done);
        None
    }
    let mut mark = BTreeMap::new();
    for n in g.keys() {
        if mark.get(n.as_str()).copied().unwrap_or(Mark::New) == Mark::New {
            if let Some(c) = visit(n, g, &mut mark, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn src_graph() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    graph(&modules(&root))
}

#[test]
fn no_module_imports_a_higher_floor() {
    let g = src_graph();
    // Every folder of src/ has a floor: a new folder must be placed.
    for m in g.keys().filter(|m| !m.is_empty()) {
        assert!(floor(m).is_some(), "{m}: its folder is not in FLOORS");
    }
    let bad = upward(&g);
    assert!(
        bad.is_empty(),
        "imports that go up a floor:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = src_graph();
    let edges: usize = g.values().map(|s| s.len()).sum();
    assert!(edges > 100, "the reader found only {edges} imports");
    if let Some(c) = cycle(&g) {
        panic!("modules in a circle: {}", c.join(" -> "));
    }
}

/// The checker itself sees the forms the code uses, so that a clean result
/// means something.
#[test]
fn the_checker_sees_upward_imports_and_cycles() {
    let mut mods = BTreeMap::new();
    mods.insert(
        "net::dns".to_string(),
        "use crate::{util::rt::timeout, server};\n// crate::trust::x in a comment\n".to_string(),
    );
    mods.insert(
        "server".to_string(),
        "fn f() { crate::net::dns::Resolver::new(); }".to_string(),
    );
    mods.insert("util::rt".to_string(), "use super::timefmt;".to_string());
    mods.insert("util::timefmt".to_string(), String::new());
    mods.insert("trust".to_string(), String::new());
    let g = graph(&mods);
    assert_eq!(
        g["net::dns"],
        BTreeSet::from(["server".to_string(), "util::rt".to_string()])
    );
    assert_eq!(g["util::rt"], BTreeSet::from(["util::timefmt".to_string()]));
    assert_eq!(upward(&g), vec!["net::dns -> server".to_string()]);
    assert!(cycle(&g).is_some());
}
