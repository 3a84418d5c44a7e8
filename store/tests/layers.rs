//! The store reads bottom-up: no module uses one above it. The order is the one `src/lib.rs`
//! documents; this test reads every source file and checks its `crate::` paths (comments aside).

use std::path::Path;

/// Top first.
const LAYERS: &[&str] = &[
    "grpc",
    "http",
    "node",
    "auth",
    "forming",
    "membership",
    "raft",
    "events",
    "watch",
    "errors",
    "mvcc",
    "engine",
    "metrics",
    "lease",
    "keys",
];

fn rank(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|m| *m == module)
        .unwrap_or_else(|| panic!("module {module} is not in the layer list"))
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_uses_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong = Vec::new();
    for f in all {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
        let module = rel.split(['/', '.']).next().unwrap().to_string();
        if module == "lib" {
            continue;
        }
        let me = rank(&module);
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (i, _) in line.match_indices("crate::") {
                let used: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if used.is_empty() || used == module {
                    continue;
                }
                if rank(&used) <= me {
                    wrong.push(format!("{rel}:{}: {module} uses {used}", n + 1));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses of a module above:\n{}",
        wrong.join("\n")
    );
}
