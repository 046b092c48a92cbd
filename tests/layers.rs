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
    ("queue", 1),
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

/// The modules named by `crate::<module>` on a line.
fn references(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .map(|(at, _)| {
            let rest = &line[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|m| !m.is_empty())
        .collect()
}

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
        // Unit tests sit at the end of a file, after `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            for target in references(line) {
                if target == module {
                    continue;
                }
                match layer(target) {
                    Some(to) if to < from => {}
                    Some(to) => wrong.push(format!(
                        "{}:{}: {module} (layer {from}) uses {target} (layer {to})",
                        file.display(),
                        n + 1
                    )),
                    None => {
                        unknown.insert(target.to_owned(), file.display().to_string());
                    }
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
    assert_eq!(
        references("use crate::hub::{Hub, Role}; crate::wire::Frame::new(x)"),
        ["hub", "wire"]
    );
    assert_eq!(references("no references here"), Vec::<&str>::new());
}
