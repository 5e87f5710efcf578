//! The house's rules, checked from the code's own imports (`use crate::…`, `super::…`, and
//! paths written out in code), so that they hold as the code grows:
//!
//! 1. **No import circle** between the files of `src/` (a `pub use` re-export of a module's own
//!    child is a facade, not a dependency, `mod` lines declare rather than import, and
//!    `#[cfg(test)]` modules are tests, not rooms of the house).
//! 2. **Imports point down the layers** (docs/architecture.md draws them):
//!
//!    | layer | modules | what it may know |
//!    |---|---|---|
//!    | 0 support | `support` | nothing of the domain |
//!    | 1 domain | `event`, `cases` | signals, cases, plans, rails, decisions; no I/O |
//!    | 2 configuration | `config` | reads the environment |
//!    | 3 ingress | `ingress` | pure checks over bytes and headers |
//!    | 4 ports | `ledger`, `queue`, `vault`, `graph` | one port each, adapters beside it |
//!    | 5 actions | `actions` | one module per remediation step |
//!    | 6 the work | `respond` | investigate, plan, act, tell, write back, sweep |
//!    | 7 composition | `http`, `console`, `app`, `replay`, `demo` | routers and roots |
//!    | 8 entry points | `src/bin` | thin mains |
//!
//!    A module may use its own layer's modules (the Graph client keeps its rate windows in the
//!    ledger) as long as no circle forms.
//! 3. **No file over about a thousand lines** in `src/` or the simulator crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of each top-level module of the crate.
const LAYERS: &[(&str, u8)] = &[
    ("support", 0),
    ("event", 1),
    ("cases", 1),
    ("config", 2),
    ("ingress", 3),
    ("ledger", 4),
    ("queue", 4),
    ("vault", 4),
    ("graph", 4),
    ("actions", 5),
    ("respond", 6),
    ("http", 7),
    ("console", 7),
    ("app", 7),
    ("replay", 7),
    ("demo", 7),
];

/// Longest a source file may grow ("about 1,000 lines").
const MAX_LINES: usize = 1_100;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/` (`cases/case.rs` → `cases::case`).
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The code without its `#[cfg(test)]` modules: tests may reach across the house (a rail's
/// test plans a whole case), the house itself may not.
fn without_tests(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let Some(open) = after.find('{') else {
            rest = "";
            break;
        };
        if !after[..open].contains("mod ") {
            out.push_str("#[cfg(test)]");
            rest = &after["#[cfg(test)]".len()..];
            continue;
        }
        let mut depth = 0;
        let mut end = after.len();
        for (i, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The source without comments and string literals (so that a path in a doc comment or a
/// message is not read as an import).
fn code_only(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let chars: Vec<char> = source.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && matches!(chars.get(i + 1), Some('#' | '"')) && {
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            chars.get(j) == Some(&'"') && !chars[i.saturating_sub(1)].is_alphanumeric()
        } {
            let mut hashes = 0;
            i += 1;
            while chars[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            loop {
                if i >= chars.len() {
                    break;
                }
                if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\''
            && chars.get(i + 2) == Some(&'\'')
            && chars.get(i + 1).is_some_and(|c| *c != '\\')
        {
            i += 3;
        } else if c == '\'' && chars.get(i + 1) == Some(&'\\') {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap().trim().to_owned()];
    };
    let prefix = &tree[..open];
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand)
        .map(|p| {
            if p == "self" {
                prefix.trim_end_matches("::").to_owned()
            } else {
                format!("{prefix}{p}")
            }
        })
        .collect()
}

/// The paths a file refers to: its `use` items (re-exports left out) and the paths it writes
/// out in code, each starting with `crate`, `super` or `self`.
fn references(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut rest = String::with_capacity(code.len());
    let mut from = 0;
    while let Some(found) = code[from..].find("use ") {
        let at = from + found;
        let starts = code[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || matches!(c, ';' | '{' | '}'));
        if !starts {
            rest.push_str(&code[from..at + 4]);
            from = at + 4;
            continue;
        }
        let end = code[at..].find(';').map_or(code.len(), |e| at + e);
        let line_start = code[..at].rfind('\n').map_or(0, |n| n + 1);
        let reexport = code[line_start..at].trim_start().starts_with("pub");
        if !reexport {
            paths.extend(expand(&code[at + 4..end]));
        }
        rest.push_str(&code[from..at]);
        from = end;
    }
    rest.push_str(&code[from..]);
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(found) = rest[from..].find(root) {
            let start = from + found;
            let boundary = !rest[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            let end = rest[start..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(rest.len(), |e| start + e);
            if boundary {
                paths.push(rest[start..end].trim_end_matches(':').to_owned());
            }
            from = end.max(start + root.len());
        }
    }
    paths
}

/// The module a path lands in: the longest prefix that is a module of the crate.
fn resolve(path: &str, from: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    // `self` is the module itself; `super` its parent, whether the module is a file or a
    // folder's `mod.rs` (the module path of `a/b.rs` is `a::b`, of `a/mod.rs` it is `a`).
    let mut base: Vec<String> = match segments.first().copied() {
        Some("crate") => Vec::new(),
        Some("self") => from.to_vec(),
        Some("super") => {
            let mut base = from.to_vec();
            base.pop();
            while segments.get(1) == Some(&"super") {
                base.pop();
                segments.remove(1);
            }
            base
        }
        _ => return None,
    };
    for segment in &segments[1..] {
        base.push((*segment).to_owned());
    }
    while !base.is_empty() {
        if modules.contains(&base) {
            return Some(base);
        }
        base.pop();
    }
    None
}

struct House {
    /// File module path -> (file, the modules it refers to).
    files: BTreeMap<Vec<String>, (PathBuf, BTreeSet<Vec<String>>)>,
}

fn read_house() -> House {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    paths.retain(|p| !p.starts_with(root.join("bin")));
    let mut sources = BTreeMap::new();
    for path in &paths {
        let relative = path.strip_prefix(&root).unwrap();
        let module = module_of(relative);
        let code = without_tests(&code_only(&std::fs::read_to_string(path).unwrap()));
        sources.insert(module, (path.clone(), code));
    }
    let modules: BTreeSet<Vec<String>> = sources.keys().cloned().collect();
    let mut files = BTreeMap::new();
    for (module, (path, code)) in &sources {
        let mut refers = BTreeSet::new();
        for reference in references(code) {
            if let Some(target) = resolve(&reference, module, &modules)
                && &target != module
            {
                refers.insert(target);
            }
        }
        files.insert(module.clone(), (path.clone(), refers));
    }
    House { files }
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "lib".into()
    } else {
        module.join("::")
    }
}

/// Strongly connected components of more than one file (Tarjan).
fn circles(house: &House) -> Vec<Vec<String>> {
    struct State<'a> {
        house: &'a House,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let house = s.house;
        for w in &house.files[v].1 {
            let Some((w, _)) = house.files.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(name(w));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        house,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in house.files.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn layer(module: &[String]) -> Option<u8> {
    let top = module.first()?;
    LAYERS
        .iter()
        .find(|(name, _)| name == top)
        .map(|(_, layer)| *layer)
}

#[test]
fn there_is_no_import_circle_in_src() {
    let house = read_house();
    let found = circles(&house);
    assert!(
        found.is_empty(),
        "import circles between files (each file takes something from the next): {found:#?}"
    );
}

#[test]
fn imports_point_down_the_layers() {
    let house = read_house();
    let mut wrong = Vec::new();
    for (module, (path, refers)) in &house.files {
        if module.is_empty() {
            continue;
        }
        let Some(from) = layer(module) else {
            wrong.push(format!(
                "{} ({}) is in no layer: add its top-level module to LAYERS and docs/architecture.md",
                name(module),
                path.display()
            ));
            continue;
        };
        for target in refers {
            let Some(to) = layer(target) else { continue };
            if to > from {
                wrong.push(format!(
                    "{} (layer {from}) imports {} (layer {to})",
                    name(module),
                    name(target)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that point up: {wrong:#?}");
}

#[test]
fn every_top_level_module_has_a_layer() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        if let Some(module) = line.trim().strip_prefix("pub mod ") {
            let module = module.trim_end_matches(';');
            assert!(
                LAYERS.iter().any(|(name, _)| *name == module),
                "module {module} is in no layer"
            );
        }
    }
}

#[test]
fn no_source_file_is_over_about_a_thousand_lines() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    rust_files(&manifest.join("src"), &mut paths);
    rust_files(&manifest.join("crates"), &mut paths);
    let long: Vec<String> = paths
        .iter()
        .filter_map(|p| {
            let lines = std::fs::read_to_string(p).unwrap().lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", p.display()))
        })
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

#[test]
fn the_check_sees_a_circle_and_an_upward_import() {
    // The checker itself: two files that import each other are a circle; a domain file that
    // imports the work path points up.
    let code = code_only(
        "use crate::respond::worker::Worker; // use crate::nothing;\nlet x = \"crate::not::this\";\nuse super::{a::B, c};",
    );
    let found = references(&code);
    let tests_cut = without_tests(&code_only(
        "use crate::a::B;\n#[cfg(test)]\nmod tests {\n    use crate::c::D;\n    fn f() { if x { y } }\n}\nuse crate::e::F;",
    ));
    let kept = references(&tests_cut);
    assert!(kept.contains(&"crate::a::B".to_owned()) && kept.contains(&"crate::e::F".to_owned()));
    assert!(!kept.iter().any(|p| p.contains("c::D")), "{kept:?}");
    assert!(found.contains(&"crate::respond::worker::Worker".to_owned()));
    assert!(found.contains(&"super::a::B".to_owned()));
    assert!(found.contains(&"super::c".to_owned()));
    assert!(
        !found
            .iter()
            .any(|p| p.contains("nothing") || p.contains("not::this"))
    );
    let modules: BTreeSet<Vec<String>> = [
        vec!["cases".to_owned()],
        vec!["cases".to_owned(), "case".to_owned()],
        vec!["respond".to_owned(), "worker".to_owned()],
    ]
    .into();
    let from = vec!["cases".to_owned(), "case".to_owned()];
    let target = resolve("crate::respond::worker::Worker", &from, &modules).unwrap();
    // `super` of a file module is its folder's module, of a `mod.rs` the one above.
    let worker = vec!["respond".to_owned(), "worker".to_owned()];
    assert_eq!(
        resolve("super::case::Case", &from, &modules),
        Some(from.clone())
    );
    assert_eq!(
        resolve("self::Worker", &worker, &modules),
        Some(worker.clone())
    );
    assert!(layer(&target) > layer(&from));
    let mut house = House {
        files: BTreeMap::new(),
    };
    house
        .files
        .insert(from.clone(), (PathBuf::from("a"), [target.clone()].into()));
    house
        .files
        .insert(target.clone(), (PathBuf::from("b"), [from.clone()].into()));
    assert_eq!(circles(&house).len(), 1);
}
