//! The module graph points down: every `crate::` path in a module names a
//! module below it in `LAYERS`, and inside a module no two files import
//! each other (directly or around a circle). A new arrow upward fails here
//! with the file that drew it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top to bottom; a module may use only those after it.
const LAYERS: &[&str] = &[
    "main",
    "lib",
    "startup",
    "api",
    "call",
    "echo",
    "sip",
    "webrtc",
    "sdp",
    "metrics",
    "session",
    "directory",
    "logging",
    "ops",
    "media",
    "netif",
    "config",
    "origin",
    "certs",
    "random",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comment lines.
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers right after `prefix`, including those in a `{a, b::c}` group.
fn names_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        let rest = &text[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                found.insert(name);
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found.retain(|n| !n.is_empty() && n.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
    found
}

fn module_of(src: &Path, file: &Path) -> (String, Option<String>) {
    let rel = file.strip_prefix(src).unwrap();
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    let top = parts[0].clone();
    let inner = parts.get(1).filter(|p| *p != "mod").cloned();
    (top, inner)
}

#[test]
fn modules_point_down_and_files_make_no_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut upward = Vec::new();
    // module → (file → files of the same module it uses)
    let mut inner_edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for file in &files {
        let (top, inner) = module_of(&src, file);
        let Some(from) = rank(&top) else {
            panic!("{} is in no layer: add {top:?} to LAYERS", file.display());
        };
        let text = code(file);
        for used in names_after(&text, "crate::") {
            if used == top {
                continue;
            }
            match rank(&used) {
                Some(to) if to > from => {}
                Some(_) => upward.push(format!("{} uses crate::{used}", file.display())),
                None => {}
            }
        }
        if let Some(inner) = inner {
            let mut uses = names_after(&text, "super::");
            uses.extend(names_after(&text, &format!("crate::{top}::")));
            uses.remove(&inner);
            inner_edges
                .entry(top)
                .or_default()
                .entry(inner)
                .or_default()
                .extend(uses);
        }
    }
    assert!(upward.is_empty(), "arrows upward: {upward:#?}");
    for (module, edges) in &inner_edges {
        for start in edges.keys() {
            let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
            let mut seen = BTreeSet::new();
            while let Some((at, path)) = stack.pop() {
                for next in edges.get(&at).into_iter().flatten() {
                    if next == start {
                        panic!("a circle in {module}: {} -> {next}", path.join(" -> "));
                    }
                    if edges.contains_key(next) && seen.insert(next.clone()) {
                        let mut longer = path.clone();
                        longer.push(next.clone());
                        stack.push((next.clone(), longer));
                    }
                }
            }
        }
    }
}

#[test]
fn the_reader_finds_grouped_and_plain_paths() {
    let text = "use crate::{api, sip::ua};\nlet x = crate::media::relay::Relay;\nuse super::Foo;";
    let found = names_after(text, "crate::");
    assert!(found.contains("api") && found.contains("sip") && found.contains("media"));
    assert!(
        names_after(text, "super::").is_empty(),
        "types are not modules"
    );
}
