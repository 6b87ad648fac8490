//! The crate's modules depend on each other in one direction only. Read from the source, not the
//! compiler: every `crate::<module>` and `super::<file>` path in `src/` is an edge, and
//!
//! - the top-level modules form no cycle, and each imports only modules of a lower layer;
//! - inside each folder (`src/api`, `src/operator`, ...) the files form no cycle (the folder's
//!   `mod.rs`, which declares them and holds their shared types, is left out).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, lowest first: a module may use the modules of the layers below its own.
const LAYERS: &[&[&str]] = &[
    &[
        "ident",
        "model",
        "contract",
        "crd",
        "postgres",
        "telemetry",
        "tls",
        "http",
    ],
    &["names", "format"],
    &["helseid", "export"],
    &["api", "operator", "client"],
];

fn layer_of(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&module))
        .unwrap_or_else(|| panic!("src/{module} is in no layer of tests/layering.rs"))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The identifiers that follow `prefix` in `text` (`crate::api::x` with prefix `crate::` gives `api`).
fn names_after(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (index, _) in text.match_indices(prefix) {
        let before = text[..index].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &text[index + prefix.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
        // `use super::{a, b::c}` and `use crate::{x, y}`: every name in the braces.
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
    }
    found
}

/// Code only: line comments (doc comments included) name modules in prose.
fn code_of(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| match line.find("//") {
            Some(index) => &line[..index],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A cycle in `graph`, if there is one, as the path around it.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(1) => {
                let start = path.iter().position(|n| n == node).unwrap();
                let mut found = path[start..].to_vec();
                found.push(node.to_owned());
                return Some(found);
            }
            Some(2) => return None,
            _ => {}
        }
        state.insert(node.to_owned(), 1);
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, state, path) {
                return Some(found);
            }
        }
        path.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if let Some(found) = visit(node, graph, &mut state, &mut Vec::new()) {
            return Some(found);
        }
    }
    None
}

#[test]
fn top_level_modules_only_use_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
        if module == "bin" || module == "lib" {
            continue;
        }
        let uses = names_after(&code_of(file), "crate::");
        let entry = graph.entry(module.clone()).or_default();
        for used in uses.into_iter().filter(|u| *u != module) {
            entry.insert(used);
        }
    }
    assert_eq!(cycle(&graph), None, "a cycle between top-level modules");
    let mut wrong = Vec::new();
    for (module, uses) in &graph {
        for used in uses {
            if layer_of(used) >= layer_of(module) {
                wrong.push(format!("{module} uses {used}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "a module uses one of its own or a higher layer: {wrong:?}"
    );
}

#[test]
fn the_files_of_each_folder_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut folders = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() && path.file_name().unwrap() != "bin" {
            folders.push(path);
        }
    }
    assert!(folders.len() >= 8);
    for folder in folders {
        let name = folder.file_name().unwrap().to_str().unwrap().to_owned();
        let mut files = Vec::new();
        rust_files(&folder, &mut files);
        let siblings: BTreeSet<String> = files
            .iter()
            .filter(|f| f.parent() == Some(folder.as_path()))
            .map(|f| f.file_stem().unwrap().to_str().unwrap().to_owned())
            .chain(
                std::fs::read_dir(&folder)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .filter(|p| p.is_dir())
                    .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned()),
            )
            .filter(|f| f != "mod")
            .collect();
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let relative = file.strip_prefix(&folder).unwrap();
            let first = relative.components().next().unwrap().as_os_str();
            let node = first.to_str().unwrap().trim_end_matches(".rs").to_owned();
            if node == "mod" {
                continue;
            }
            let code = code_of(file);
            // A file of the folder reaches its siblings as `super::x`; a file one folder down
            // (`ingest/store.rs`) reaches the folder's other files as `crate::api::x`.
            let mut uses = names_after(&code, &format!("crate::{name}::"));
            if file.parent() == Some(folder.as_path()) {
                uses.extend(names_after(&code, "super::"));
            }
            let entry = graph.entry(node.clone()).or_default();
            for used in uses
                .into_iter()
                .filter(|u| *u != node && siblings.contains(u))
            {
                entry.insert(used);
            }
        }
        assert_eq!(
            cycle(&graph),
            None,
            "a cycle between the files of src/{name}"
        );
    }
}
