//! The shape of the crate: every module's `crate::` references point to a
//! lower layer, so no module depends on one above it and there is no
//! dependency cycle. Read from the source, test modules left out (a test
//! may reach anywhere). Fails naming each wrong-way reference, file and
//! line; a new module must be given its layer here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each module's layer: a module may use only modules of lower layers.
/// Bottom: the wire format and leaves; then the relay's core; then what
/// is built on it (admission, sessions, cluster, API); then configuration,
/// which names the types of what it configures; then the server, the one
/// reader of the configuration; then the tools.
const LAYERS: &[(&str, u32)] = &[
    ("wire", 0),
    ("metrics", 0),
    ("query", 0),
    ("forwarded", 0),
    ("origin", 0),
    ("tls", 0),
    ("logging", 0),
    ("log", 1),
    ("hub", 2),
    ("relay", 3),
    ("limits", 4),
    ("auth", 4),
    ("upgrade", 5),
    ("backplane", 5),
    ("connection", 6),
    ("api", 6),
    ("config", 7),
    ("server", 8),
    ("client", 9),
    ("bench", 10),
];

fn layer(module: &str) -> Option<u32> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to (`None` for the
/// crate root and the binary).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(name) => Some(name.to_owned()),
        None => Some(first.to_owned()),
    }
}

/// The top-level modules a piece of code names, each with its byte offset:
/// `crate::x` (spaces around `::` allowed), every first segment of a
/// grouped `crate::{x::.., y}` (across lines too), and `super::` chains
/// that climb to the crate root from a file `depth` modules down.
fn references(code: &str, depth: usize) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let ident = |at: usize| -> (String, usize) {
        let rest = &code[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        (rest[..end].to_owned(), at + end)
    };
    let skip_space = |mut at: usize| {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        at
    };
    // After a path that reached the crate root: the module it names, or
    // each first segment of a `{...}` group.
    let root_path = |at: usize, found: &mut Vec<(usize, String)>| {
        let at = skip_space(at);
        if bytes.get(at) == Some(&b'{') {
            let (mut depth, mut start) = (0usize, at + 1);
            for (i, &b) in bytes.iter().enumerate().skip(at) {
                match b {
                    b'{' => depth += 1,
                    b'}' | b',' if depth == 1 => {
                        let (name, _) = ident(skip_space(start));
                        if !name.is_empty() && name != "self" {
                            found.push((start, name));
                        }
                        start = i + 1;
                        if b == b'}' {
                            break;
                        }
                    }
                    b'}' => depth -= 1,
                    _ => {}
                }
            }
        } else {
            let (name, _) = ident(at);
            if !name.is_empty() {
                found.push((at, name));
            }
        }
    };
    let mut at = 0;
    while at < code.len() {
        let (word, end) = ident(at);
        if word.is_empty() {
            at += code[at..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        // Only whole words: not `mycrate::` or `x.crate`.
        let whole = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let mut next = end;
        if whole && (word == "crate" || word == "super") {
            let mut supers = usize::from(word == "super");
            let mut cursor = skip_space(end);
            let mut rooted = word == "crate";
            while code[cursor..].starts_with("::") {
                cursor = skip_space(cursor + 2);
                let (seg, seg_end) = ident(cursor);
                if seg == "super" {
                    supers += 1;
                    cursor = skip_space(seg_end);
                } else {
                    rooted = rooted || supers >= depth;
                    if rooted {
                        root_path(cursor, &mut found);
                    }
                    break;
                }
            }
            next = cursor.max(end);
        }
        at = next;
    }
    found
}

/// How many modules down a file is: `src/x.rs` and `src/x/mod.rs` are 1,
/// `src/x/y.rs` is 2.
fn depth_of(src: &Path, file: &Path) -> usize {
    let rel = file.strip_prefix(src).expect("under src");
    let parts = rel.components().count();
    match rel.file_name().and_then(|n| n.to_str()) {
        Some("mod.rs") => parts - 1,
        _ => parts,
    }
}

/// Pairs of modules that are not in each other's way by layer alone, but
/// must not know each other (see docs/ARCHITECTURE.md).
const FORBIDDEN: &[(&str, &str)] = &[("connection", "backplane"), ("connection", "api")];

#[test]
fn layers_point_down_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut wrong = Vec::new();
    let mut unknown = BTreeMap::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(from) = layer(&module) else {
            unknown.insert(module, file.display().to_string());
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read source");
        // The unit tests: a `mod tests` behind `#[cfg(test)]`, the file's
        // last item. Anything else marked `#[cfg(test)]` is still read.
        let code = match text.find("#[cfg(test)]\nmod tests {") {
            Some(at) => &text[..at],
            None => &text[..],
        };
        for (offset, target) in references(code, depth_of(&src, file)) {
            let line = code[..offset].lines().count().max(1);
            let at = format!("{}:{line}", file.display());
            if target == module {
                continue;
            }
            if FORBIDDEN.contains(&(module.as_str(), target.as_str())) {
                wrong.push(format!("{at}: {module} must not know {target}"));
            }
            match layer(&target) {
                Some(to) if to < from => {}
                Some(to) => wrong.push(format!(
                    "{at}: {module} (layer {from}) uses {target} (layer {to})"
                )),
                None => {
                    unknown.insert(target, at);
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules without a layer (add them to LAYERS): {unknown:?}"
    );
    assert!(
        wrong.is_empty(),
        "references to a module that is not below:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_guard_sees_references() {
    let names = |code: &str, depth: usize| -> Vec<String> {
        references(code, depth)
            .into_iter()
            .map(|(_, m)| m)
            .collect()
    };
    assert_eq!(
        names("use crate::hub::{Hub, Role}; crate::wire::Frame::new(x)", 1),
        ["hub", "wire"]
    );
    // Grouped, across lines, spaced.
    assert_eq!(
        names("use crate::{\n    hub::Hub,\n    server::{self, X},\n};", 1),
        ["hub", "server"]
    );
    assert_eq!(names("crate :: server :: run()", 1), ["server"]);
    // `super` reaching the root from a top-level file, or two levels down.
    assert_eq!(names("use super::server::X;", 1), ["server"]);
    assert_eq!(names("use super::accept::bind;", 2), Vec::<String>::new());
    assert_eq!(names("use super::super::api::Api;", 2), ["api"]);
    assert_eq!(
        names("mycrate::server; no references", 1),
        Vec::<String>::new()
    );
}
