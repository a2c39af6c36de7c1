//! ARCHITECTURE.md's rules inside each of the library's crates, which the compiler does not
//! check: no module uses a module that uses it, and where a crate's root only re-exports for
//! users, modules name what they use by its defining module. The layers between crates are the
//! crate graph's, and the compiler's.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every crate of the workspace, by directory: the library's, the lab, the fleet, the
/// sidecar, the command line, the authoring crate and the guest. The crate graph itself (core
/// below runtime and resilience, which do not know each other, bedrock above both, the facade
/// on top, the sidecar and the CLI above it) is the compiler's to enforce, and
/// `.ci/check-deps` keeps wasmtime and the AWS SDK out of the crates below them; what is left
/// to check here is inside each crate.
const CRATES: [&str; 12] = [
    "contract",
    "core",
    "runtime",
    "resilience",
    "bedrock",
    "host",
    "lab",
    "fleet",
    "serve",
    "cli",
    "authoring",
    "policy-guest",
];

/// Crates whose root only declares modules and re-exports for users: no module may use it.
const FACADE_ROOTS: [&str; 2] = ["core", "host"];

/// A module path from the crate root (`["wasm", "engine"]`); the root is empty.
type Module = Vec<String>;

struct Source {
    files: BTreeMap<Module, String>,
}

impl Source {
    fn read(root: &Path) -> Source {
        let mut files = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("source dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).expect("source file");
                    let code = without_test_modules(&strip_comments(&text));
                    files.insert(module_of(root, &path), code);
                }
            }
        }
        Source { files }
    }

    /// Items a facade module (`x/mod.rs`) re-exports from its children: item → child.
    fn reexports(&self, module: &Module) -> BTreeMap<String, String> {
        let mut items = BTreeMap::new();
        let Some(text) = self.files.get(module) else {
            return items;
        };
        for statement in text.split(';') {
            let statement = statement.trim();
            let Some(rest) = statement.strip_prefix("pub use ") else {
                continue;
            };
            let Some((child, names)) = rest.split_once("::") else {
                continue;
            };
            let names = names.trim_matches(|c| c == '{' || c == '}');
            for name in names.split(',') {
                let name = name.trim().rsplit("::").next().unwrap_or("").trim();
                if !name.is_empty() {
                    items.insert(name.to_string(), child.trim().to_string());
                }
            }
        }
        items
    }

    /// The module file an absolute path (`["wasm", "engine", "Engine"]`) lands in.
    fn resolve(&self, path: &[String]) -> Module {
        let mut module: Module = Vec::new();
        for segment in path {
            let mut next = module.clone();
            next.push(segment.clone());
            if self.files.contains_key(&next) {
                module = next;
                continue;
            }
            // An item: a facade's re-export lands in the child that defines it.
            if let Some(child) = self.reexports(&module).get(segment) {
                module.push(child.clone());
            }
            break;
        }
        module
    }

    /// Every module each module uses, by absolute path, relative `super::` and child paths.
    fn edges(&self) -> BTreeMap<Module, BTreeSet<Module>> {
        let mut edges = BTreeMap::new();
        for (module, text) in &self.files {
            let mut used = BTreeSet::new();
            for path in paths(text) {
                let absolute: Vec<String> = match path.first().map(String::as_str) {
                    Some("crate") => path[1..].to_vec(),
                    Some("super") => {
                        // `super` is the parent of the module, for `x/y.rs` and `x/mod.rs` alike.
                        let mut base = module.clone();
                        base.pop();
                        base.into_iter().chain(path[1..].iter().cloned()).collect()
                    }
                    Some(first) => {
                        let mut child = module.clone();
                        child.push(first.to_string());
                        if !self.files.contains_key(&child) {
                            continue;
                        }
                        module.iter().cloned().chain(path.iter().cloned()).collect()
                    }
                    None => continue,
                };
                // The contract is a crate of its own, re-exported as `crate::contract`.
                if absolute.first().is_some_and(|first| first == "contract") {
                    continue;
                }
                let target = self.resolve(&absolute);
                if &target != module {
                    used.insert(target);
                }
            }
            edges.insert(module.clone(), used);
        }
        edges
    }
}

fn module_of(root: &Path, file: &Path) -> Module {
    let relative: PathBuf = file
        .strip_prefix(root)
        .expect("under root")
        .with_extension("");
    let mut parts: Module = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib")
        || parts.len() == 1 && parts[0] == "main"
    {
        parts.pop();
    }
    parts
}

/// The code without comments (doc links may point anywhere) and string literals.
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut code = String::new();
        let mut in_string = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_string && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' {
                in_string = !in_string;
                continue;
            }
            if !in_string {
                code.push(c);
            }
        }
        out.push_str(&code);
        out.push('\n');
    }
    out
}

/// Every path that starts with `crate::`, `super::` or a lowercase segment followed by `::`,
/// with `a::{b::C, d}` groups expanded.
fn paths(text: &str) -> Vec<Vec<String>> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        // `$crate::…` in a macro is a path in the crate that expands it, not this one's.
        let starts_word = i == 0
            || !(bytes[i - 1].is_ascii_alphanumeric()
                || bytes[i - 1] == b'_'
                || bytes[i - 1] == b':'
                || bytes[i - 1] == b'$');
        if starts_word && (bytes[i].is_ascii_lowercase() || bytes[i] == b'_') {
            let (prefix, end) = path_at(text, i);
            if prefix.len() >= 2 || text[end..].starts_with("::{") {
                if text[end..].starts_with("::{") {
                    let close = matching_brace(text, end + 2);
                    for inner in split_top_level(&text[end + 3..close]) {
                        let (tail, _) = path_at(inner.trim(), 0);
                        let mut full = prefix.clone();
                        full.extend(tail);
                        found.push(full);
                    }
                    i = close;
                    continue;
                }
                found.push(prefix);
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    found
}

/// The code without its inline `#[cfg(test)] mod … { … }` blocks: their `super` is the file's
/// own module, and tests may use what they like.
fn without_test_modules(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = &rest[at + "#[cfg(test)]".len()..];
        let item = after.trim_start();
        // Only an inline module: `mod tests;` is a file of its own, read as one.
        let inline = item.starts_with("mod ")
            && item
                .find('{')
                .is_some_and(|brace| item.find(';').is_none_or(|semi| brace < semi));
        if !inline {
            out.push_str(&rest[..at + "#[cfg(test)]".len()]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..at]);
        let Some(open) = after.find('{') else {
            break;
        };
        let close = matching_brace(after, open);
        rest = after.get(close + 1..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

fn path_at(text: &str, start: usize) -> (Vec<String>, usize) {
    let bytes = text.as_bytes();
    let mut segments = Vec::new();
    let mut i = start;
    loop {
        let begin = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        if i == begin {
            break;
        }
        segments.push(text[begin..i].to_string());
        if text[i..].starts_with("::")
            && text[i + 2..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            i += 2;
        } else {
            break;
        }
    }
    (segments, i)
}

fn matching_brace(text: &str, open: usize) -> usize {
    let mut depth = 0;
    for (i, c) in text[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return open + i;
                }
            }
            _ => {}
        }
    }
    text.len()
}

fn split_top_level(group: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&group[start..]);
    parts
}

fn crate_source(dir: &str) -> Source {
    Source::read(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(dir)
            .join("src"),
    )
}

fn name(module: &Module) -> String {
    if module.is_empty() {
        "lib.rs".to_string()
    } else {
        module.join("::")
    }
}

/// The first cycle in `krate`'s module graph, as `a -> b -> a`.
fn first_cycle(krate: &str, mut edges: BTreeMap<Module, BTreeSet<Module>>) -> Option<String> {
    if FACADE_ROOTS.contains(&krate) {
        // The root only re-exports for users; no module uses it (the next test), so it is no
        // link.
        edges.remove(&Vec::new());
    }
    // Any cycle shows up as a module reaching itself.
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(Module, Vec<Module>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((at, trail)) = stack.pop() {
            for next in edges.get(&at).into_iter().flatten() {
                if next == start {
                    let cycle: Vec<String> = trail.iter().chain([next]).map(name).collect();
                    return Some(format!("{krate}: {}", cycle.join(" -> ")));
                }
                if seen.insert(next.clone()) {
                    let mut trail = trail.clone();
                    trail.push(next.clone());
                    stack.push((next.clone(), trail));
                }
            }
        }
    }
    None
}

#[test]
fn no_module_uses_a_module_that_uses_it() {
    let cycles: Vec<String> = CRATES
        .iter()
        .filter_map(|krate| first_cycle(krate, crate_source(krate).edges()))
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn modules_name_what_they_use_by_its_defining_module() {
    for krate in FACADE_ROOTS {
        let edges = crate_source(krate).edges();
        let offenders: Vec<String> = edges
            .iter()
            .filter(|(module, used)| !module.is_empty() && used.contains(&Vec::new()))
            .map(|(module, _)| name(module))
            .collect();
        assert!(
            offenders.is_empty(),
            "these use {krate}'s root re-exports; name the defining module instead \
             (crate::decision::verdict::Verdict): {offenders:?}"
        );
    }
}

/// The checker itself: a cycle written the ways modules really import.
#[test]
fn the_checker_sees_cycles_in_every_import_form() {
    let mut source = Source {
        files: BTreeMap::new(),
    };
    let module = |path: &str| -> Module { path.split("::").map(str::to_string).collect() };
    source
        .files
        .insert(Vec::new(), "pub mod wasm; pub mod decision;".into());
    source.files.insert(
        module("decision"),
        "mod verdict; pub use verdict::{Verdict, Clamp};".into(),
    );
    source.files.insert(
        module("decision::verdict"),
        "use crate::wasm::{engine::Engine};".into(),
    );
    source
        .files
        .insert(module("wasm"), "pub mod engine;".into());
    source.files.insert(
        module("wasm::engine"),
        "fn f() -> crate::decision::Verdict { todo!() }".into(),
    );
    let edges = source.edges();
    assert!(edges[&module("wasm::engine")].contains(&module("decision::verdict")));
    assert!(edges[&module("decision::verdict")].contains(&module("wasm::engine")));
}

/// What is not an import of the module: an inline test module's `super` (the file's own
/// module) and a macro's `$crate::…` (a path in the crate that expands it).
#[test]
fn the_checker_reads_test_modules_and_macros_as_the_compiler_does() {
    let mut source = Source {
        files: BTreeMap::new(),
    };
    source.files.insert(
        Vec::new(),
        "pub mod glue; pub trait Policy {} macro_rules! export { () => { $crate::glue::run() } }"
            .into(),
    );
    source.files.insert(
        vec!["glue".to_string()],
        without_test_modules(
            "use crate::Policy; pub fn run() {}\n#[cfg(test)]\nmod tests { use super::run; }\n\
             #[cfg(test)]\nmod more;\nfn after() {}",
        ),
    );
    assert!(source.files[&vec!["glue".to_string()]].contains("fn after"));
    let edges = source.edges();
    assert!(edges[&Vec::new()].is_empty(), "{edges:?}");
    assert_eq!(first_cycle("glue", edges), None);
}
