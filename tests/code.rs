//! Checks of the code itself. The floors of `src/` (README, "Code map"): no file imports,
//! through its `use` lines and re-exports (tests excluded), a file that imports it back,
//! however many files lie between.
//! A file's imports are the modules its `use crate::...`, `use super::...`, `use self::...` or
//! `use child::...` paths name, and the modules of its inline `crate::`/`super::` paths.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path ("" for the crate root, "idempotency/guard") to its source, tests cut off.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, found: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let name = path.strip_prefix(root).unwrap().with_extension("").to_string_lossy().replace('\\', "/");
                let name = if name == "lib" || name == "main" { String::new() } else { name };
                let source = std::fs::read_to_string(&path).unwrap();
                let source = source.split("#[cfg(test)]").next().unwrap().to_owned();
                found.insert(name, source);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeMap::new();
    walk(&root, &root, &mut found);
    found
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else { return vec![tree.to_owned()] };
    let (prefix, inner) = (&tree[..open], &tree[open + 1..tree.len() - 1]);
    let (mut items, mut depth, mut current) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items.iter().filter(|item| !item.is_empty()).flat_map(|item| expand(&format!("{prefix}{item}"))).collect()
}

/// The module a path names, seen from module `from`: its longest prefix that is a module.
fn target(from: &str, path: &str, modules: &BTreeMap<String, String>) -> Option<String> {
    let mut base: Vec<&str> = if from.is_empty() { Vec::new() } else { from.split('/').collect() };
    let mut parts: Vec<&str> = path.split("::").map(|p| p.split(" as ").next().unwrap()).collect();
    match parts[0] {
        "crate" => base.clear(),
        "self" => {}
        "super" => {
            while parts.first() == Some(&"super") {
                base.pop();
                parts.remove(0);
            }
            parts.insert(0, "self");
        }
        child if modules.contains_key(&[base.clone(), vec![child]].concat().join("/")) => parts.insert(0, "self"),
        _ => return None,
    }
    (0..parts.len())
        .rev()
        .map(|n| [base.clone(), parts[1..=n].to_vec()].concat().join("/"))
        .find(|m| modules.contains_key(m))
}

fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (name, source) in modules {
        let mut paths = Vec::new();
        for chunk in source.split(';') {
            // The statement ending here, if it is a `use`: from its line to the `;`.
            let mut start = None;
            let mut offset = 0;
            for line in chunk.split_inclusive('\n') {
                let code = line.trim_start();
                let code =
                    code.strip_prefix("pub").map_or(code, |rest| rest.trim_start_matches(|c| c != ' ').trim_start());
                if code.starts_with("use ") {
                    start = Some(offset + line.find("use ").unwrap() + 4);
                }
                offset += line.len();
            }
            if let Some(start) = start {
                paths.extend(expand(&chunk[start..].split_whitespace().collect::<String>()));
            }
        }
        for word in source.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')) {
            if word.starts_with("crate::") || word.starts_with("super::") {
                paths.push(word.trim_end_matches(':').to_owned());
            }
        }
        let targets = paths.iter().filter_map(|p| target(name, p, modules)).filter(|t| t != name).collect();
        edges.insert(name.clone(), targets);
    }
    edges
}

#[test]
fn no_file_of_src_imports_a_file_that_imports_it_back() {
    let modules = modules();
    let edges = imports(&modules);
    assert!(edges["idempotency/guard"].contains("idempotency/store"), "the reader sees imports: {:?}", edges);
    let mut circles = Vec::new();
    for start in edges.keys() {
        // Depth-first from `start`: reaching it again is a circle.
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, trail)) = stack.pop() {
            for next in &edges[&at] {
                if next == start {
                    circles.push(trail.join(" -> ") + " -> " + start);
                } else if seen.insert(next.clone()) {
                    stack.push((next.clone(), [trail.clone(), vec![next.clone()]].concat()));
                }
            }
        }
    }
    assert!(circles.is_empty(), "import circles:\n{}", circles.join("\n"));
}

#[test]
fn the_idempotency_layer_names_no_resource() {
    let modules = modules();
    let edges = imports(&modules);
    for (name, targets) in edges.iter().filter(|(name, _)| name.starts_with("idempotency")) {
        for resource in ["chats", "conversations", "participations", "state", "startup"] {
            assert!(
                !targets.iter().any(|t| t == resource || t.starts_with(&format!("{resource}/"))),
                "{name} imports {resource}"
            );
        }
    }
}

#[test]
fn no_line_of_src_is_over_120_characters() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut long = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let source = std::fs::read_to_string(&path).unwrap();
                for (n, line) in source.lines().enumerate() {
                    if line.chars().count() > 120 {
                        long.push(format!("{}:{}", path.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(long.is_empty(), "lines over 120 characters: {long:?}");
}

/// `.ci/run` builds with `SQLX_OFFLINE=true`, so a query without offline data fails it; this
/// fails on the other kind of drift, a file in `.sqlx/` whose query is no longer in `src/`:
/// one literal, or literals that a `query!` joins with `+`.
#[test]
fn every_offline_query_file_belongs_to_a_query_in_src() {
    let literals: Vec<String> = literals().into_iter().map(|(_, literal)| literal).filter(|l| !l.is_empty()).collect();
    let joined = |query: &str| {
        let mut rest = query;
        while let Some(longest) = literals.iter().filter(|l| rest.starts_with(l.as_str())).max_by_key(|l| l.len()) {
            rest = &rest[longest.len()..];
        }
        rest.is_empty()
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".sqlx");
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let data: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        if !joined(data["query"].as_str().unwrap()) {
            stale.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    assert!(stale.is_empty(), "stale files in .sqlx/ (regenerate: README, Two commands): {stale:?}");
}

/// The string literals of `src/` that hold SQL statements, with the file each is in.
fn statements() -> Vec<(String, String)> {
    let statement = |literal: &String| {
        let upper = literal.to_uppercase();
        ["SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM"].iter().any(|k| upper.contains(k)).then_some(upper)
    };
    literals()
        .into_iter()
        .filter_map(|(module, literal)| {
            Some((module, statement(&literal)?.split_whitespace().collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// The string literals of `src/` as written (escapes and all), with the file each is in.
fn literals() -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (module, source) in modules() {
        let mut rest = source.as_str();
        while let Some(start) = rest.find('"') {
            if rest[..start].ends_with('\'') && rest[start + 1..].starts_with('\'') {
                // The character '"'.
                rest = &rest[start + 2..];
                continue;
            }
            let raw = rest[..start].ends_with("r#");
            let body = &rest[start + 1..];
            let end = if raw {
                body.find("\"#").unwrap()
            } else {
                let mut escaped = false;
                body.char_indices()
                    .find(|&(_, c)| {
                        let closes = c == '"' && !escaped;
                        escaped = c == '\\' && !escaped;
                        closes
                    })
                    .map(|(i, _)| i)
                    .unwrap()
            };
            found.push((module.clone(), body[..end].to_owned()));
            rest = &body[end + 1..];
        }
    }
    found
}

/// Citus (README, "Scaling out") refuses these forms on distributed tables: a function that is
/// not IMMUTABLE in `ON CONFLICT ... DO UPDATE` (its `SET` and its `WHERE`), `ctid`, and
/// `FOR UPDATE` over more than one row (`SKIP LOCKED`, `LIMIT`, a list of keys).
#[test]
fn no_statement_uses_sql_that_citus_refuses() {
    const NOT_IMMUTABLE: &[&str] = &[
        "NOW()",
        "CLOCK_TIMESTAMP",
        "STATEMENT_TIMESTAMP",
        "TRANSACTION_TIMESTAMP",
        "CURRENT_TIMESTAMP",
        "RANDOM()",
        "GEN_RANDOM_UUID",
        "NEXTVAL",
    ];
    let statements = statements();
    assert!(statements.len() > 40, "the statements are found: {}", statements.len());
    let mut refused = Vec::new();
    for (module, sql) in &statements {
        if let Some(at) = sql.find("DO UPDATE") {
            // To its RETURNING, or to the parenthesis that closes the CTE it is in.
            let mut depth = 0;
            let end = sql[at..]
                .char_indices()
                .find(|&(i, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth < 0 || sql[at + i..].starts_with(" RETURNING ")
                })
                .map_or(sql.len(), |(i, _)| at + i);
            let clause = &sql[at..end];
            refused.extend(
                NOT_IMMUTABLE.iter().filter(|f| clause.contains(*f)).map(|f| format!("{module}: {f} in DO UPDATE")),
            );
        }
        if sql.contains("CTID") {
            refused.push(format!("{module}: ctid"));
        }
        for (at, _) in sql.match_indices("FOR UPDATE") {
            let select = &sql[sql[..at].rfind("SELECT ").unwrap()..at];
            if ["SKIP LOCKED", " LIMIT ", " ANY", " IN "].iter().any(|many| select.contains(many))
                || sql[at..].starts_with("FOR UPDATE SKIP LOCKED")
                || !select.contains(" WHERE ")
            {
                refused.push(format!("{module}: FOR UPDATE of many rows: {select}"));
            }
        }
    }
    assert!(refused.is_empty(), "statements Citus refuses:\n{}", refused.join("\n"));
}
