//! The layers of the runtime, lowest first, and the test that holds the code to them.
//!
//! The crates already keep the pure cores (`herdgate-core`), the wire contract
//! (`herdgate-wire`) and the client apart: the compiler refuses an import the other way.
//! Inside this crate the same rule is checked here: a module may import from its own
//! module tree or from a module of a lower rank, never from a higher rank or from another
//! module of its own rank. ARCHITECTURE.md draws the same table.

/// (module, rank): a file's module is the first path segment under `src/`.
pub const LAYERS: &[(&str, u8)] = &[
    // Foundations: names and plumbing that know nothing of the proxy.
    ("metrics", 0),
    ("io", 0),
    ("clock", 0),
    ("fdlimit", 0),
    ("systemd", 0),
    ("tls", 0),
    ("lograte", 0),
    ("shards", 0),
    // TOML -> validated Config (pure data).
    ("config", 1),
    // Live node state, connecting to nodes, health.
    ("backend", 2),
    // What a connection holds; the immutable snapshot; the tunnel registry.
    ("conn", 3),
    ("registry", 3),
    ("snapshot", 3),
    // The shared state (snapshot cell, node table, registry, caps).
    ("state", 4),
    // Run-time glue over the pure cores, and the WebSocket relay.
    ("admission", 5),
    ("routing", 5),
    ("websocket", 5),
    // Fleet admission: shares of each node's rate leased from Redis.
    ("fleet", 5),
    // The request pipeline.
    ("proxy", 6),
    // Accept loops.
    ("listener", 7),
    // Control plane.
    ("drain", 8),
    ("reload", 9),
    ("admin", 9),
    // Composition and process wiring.
    ("server", 10),
    ("signals", 11),
    ("layers", 12),
];

/// The rank of a top-level module, if it is listed.
pub fn rank(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every `crate::<module>` named in code (not in comments) of one file.
    fn imports(src: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, line) in src.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(p) = rest.find("crate::") {
                let after = &rest[p + "crate::".len()..];
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // `herdgate_core::...` and friends are other crates, and `$crate` is a macro's.
                let before = &rest[..p];
                let other_crate = before.ends_with('_') || before.ends_with('$');
                if !name.is_empty() && !other_crate {
                    out.push((i + 1, name));
                }
                rest = after;
            }
        }
        out
    }

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn no_module_imports_from_a_layer_above_or_beside_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut violations = Vec::new();
        let mut checked = 0;
        for path in all {
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_string();
            // The binary's own tree (main.rs, cli/) and the crate root sit above everything.
            if matches!(module.as_str(), "main" | "cli" | "lib") {
                continue;
            }
            let Some(own) = rank(&module) else {
                violations.push(format!("{}: module {module} has no layer", rel.display()));
                continue;
            };
            let text = std::fs::read_to_string(&path).unwrap();
            for (line, target) in imports(&text) {
                checked += 1;
                if target == module {
                    continue;
                }
                match rank(&target) {
                    Some(r) if r < own => {}
                    Some(r) => violations.push(format!(
                        "{}:{line}: {module} (rank {own}) imports {target} (rank {r})",
                        rel.display()
                    )),
                    None => violations.push(format!(
                        "{}:{line}: imports {target}, which has no layer",
                        rel.display()
                    )),
                }
            }
        }
        assert!(checked > 50, "the scan found only {checked} imports");
        assert!(
            violations.is_empty(),
            "layer violations:\n{}",
            violations.join("\n")
        );
    }

    /// Files around a few hundred lines; past 600 (tests inside a file excepted), split
    /// by concept. Checked over this crate and every member crate.
    #[test]
    fn no_source_file_is_over_600_lines_before_its_tests() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut all = Vec::new();
        files(&root.join("src"), &mut all);
        for e in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
            let src = e.path().join("src");
            if src.is_dir() {
                files(&src, &mut all);
            }
        }
        assert!(all.len() > 40, "found only {} files", all.len());
        let long: Vec<String> = all
            .iter()
            .filter_map(|p| {
                let text = std::fs::read_to_string(p).unwrap();
                let n = text
                    .lines()
                    .take_while(|l| !l.starts_with("#[cfg(test)]"))
                    .count();
                (n > 600).then(|| format!("{}: {n} lines", p.display()))
            })
            .collect();
        assert!(
            long.is_empty(),
            "split these by concept:\n{}",
            long.join("\n")
        );
    }

    #[test]
    fn the_scanner_sees_imports_and_skips_comments_and_other_crates() {
        let src = "use crate::state::Shared;\n// crate::server is a comment\nlet x = herdgate_core::x; crate::drain::f(); $crate::m";
        let got: Vec<String> = imports(src).into_iter().map(|(_, m)| m).collect();
        assert_eq!(got, vec!["state".to_string(), "drain".to_string()]);
    }
}
