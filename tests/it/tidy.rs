//! Tidy checks, run under `cargo test` (rust-analyzer's habit): formatting, the module import
//! graph (no cycles, nothing imported against the data flow of ARCHITECTURE.md), kernel
//! headers naming CPU functions that exist, every environment variable documented, and no
//! machine path committed. Each failure names the file and says how to fix it.
//!
//! Reads the checkout only (no network, no build): the import graph comes from the `use`
//! statements and `crate::`/`super::` paths of `src/`, parsed here without a Rust parser
//! (comments and string literals removed first), which is exact enough for this code base.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir` (recursively), sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

// ---------------------------------------------------------------------------
// formatting
// ---------------------------------------------------------------------------

#[test]
fn tidy_formatting() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let installed = std::process::Command::new(&cargo).args(["fmt", "--version"]).output().is_ok_and(|o| o.status.success());
    if !installed {
        println!("skipped: rustfmt is not installed (`rustup component add rustfmt`)");
        return;
    }
    let out = std::process::Command::new(&cargo).current_dir(repo()).args(["fmt", "--all", "--check", "--", "-l"]).output().expect("cargo fmt runs");
    let root = format!("{}/", repo().display());
    let files = String::from_utf8_lossy(&out.stdout).replace(&root, "");
    assert!(out.status.success(), "not formatted as rustfmt.toml says (run `cargo fmt --all`):\n{files}{}", String::from_utf8_lossy(&out.stderr));
}

// ---------------------------------------------------------------------------
// the module import graph
// ---------------------------------------------------------------------------

/// The top-level modules in data-flow order (ARCHITECTURE.md, `src/lib.rs`): a module may
/// import from its own layer or an earlier one, never from a later one.
const LAYERS: &[&[&str]] = &[
    &["npy", "gguf"],
    &["quantize"],
    &["fetch", "vocab_fetch"],
    &["tokenizer", "chat"],
    &["model"],
    &["sampler"],
    &["backend"],
    &["engine"],
    &["reference", "trace"],
    &["run"],
    &["replay"],
    &["server"],
    &["fuzz"],
];

/// Cycles tolerated, each as its sorted member list (none; the test fails on an entry that is no
/// longer a cycle).
const KNOWN_CYCLES: &[&[&str]] = &[];

/// `text` with comments, string and char literals blanked (newlines kept), so that paths are
/// only found in code.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if b[i] == b'r' && (i == 0 || !ident(b[i - 1])) && matches!(b.get(i + 1), Some(b'"' | b'#')) {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
            if b.get(i + 1 + hashes) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat(b'#').take(hashes)).collect();
            i += 2 + hashes;
            while i < b.len() && !b[i..].starts_with(&close) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i] == b'\'' && (b.get(i + 2) == Some(&b'\'') || b.get(i + 1) == Some(&b'\\')) {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime.
            i += 1;
            while i < b.len() && b[i] != b'\'' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// `a::{b, c::{d, e as f}}` -> `[a, b]`, `[a, c, d]`, `[a, c, e]`.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn split_top(s: &str) -> Vec<&str> {
        let (mut depth, mut start, mut out) = (0, 0, Vec::new());
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    out.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        out.push(&s[start..]);
        out
    }
    fn rec(prefix: &[String], s: &str, out: &mut Vec<Vec<String>>) {
        for item in split_top(s) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            if let Some(k) = item.find('{') {
                let mut p = prefix.to_vec();
                p.extend(item[..k].split("::").map(str::trim).filter(|x| !x.is_empty()).map(String::from));
                rec(&p, &item[k + 1..item.rfind('}').unwrap()], out);
            } else {
                let item = item.split(" as ").next().unwrap();
                let mut p = prefix.to_vec();
                p.extend(item.split("::").map(str::trim).filter(|x| !x.is_empty()).map(String::from));
                out.push(p);
            }
        }
    }
    let flat: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    rec(&[], &flat, &mut out);
    out
}

type Module = Vec<String>;

/// The library's modules (from `src/`, without the binaries), each with its code.
fn library_modules() -> BTreeMap<Module, String> {
    let src = repo().join("src");
    let mut files: BTreeMap<PathBuf, Module> = BTreeMap::new();
    for f in rust_files(&src) {
        let r = f.strip_prefix(&src).unwrap();
        if r.starts_with("bin") || r == Path::new("main.rs") {
            continue;
        }
        let mut m: Module = r.with_extension("").iter().map(|c| c.to_string_lossy().into_owned()).collect();
        if matches!(m.last().map(String::as_str), Some("mod" | "lib")) {
            m.pop();
        }
        files.insert(f, m);
    }
    // `#[path = "x.rs"] mod name;` puts x.rs at `module::name`.
    let path_attr = fancy_regex::Regex::new(r#"#\[path\s*=\s*"([^"]+)"\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;"#).unwrap();
    let mut moved = Vec::new();
    for (f, m) in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for c in path_attr.captures_iter(&text) {
            let c = c.unwrap();
            let target = f.parent().unwrap().join(&c[1]);
            let mut sub = m.clone();
            sub.push(c[2].to_string());
            moved.push((target, sub));
        }
    }
    for (target, sub) in moved {
        files.insert(target, sub);
    }
    files.into_iter().map(|(f, m)| (m, code_only(&std::fs::read_to_string(&f).unwrap()))).collect()
}

/// Module-level edges between siblings: `a::b -> a::c` when code in `a::b` (or below it) names
/// something in `a::c` (or below it). Paths through a parent's `pub use child::...` count as
/// paths into the child.
fn sibling_edges() -> BTreeMap<String, BTreeSet<String>> {
    let modules = library_modules();
    let use_stmt = fancy_regex::Regex::new(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);").unwrap();
    let inline_path = fancy_regex::Regex::new(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)").unwrap();
    let inline_mod = fancy_regex::Regex::new(r"\bmod\s+(\w+)\s*\{").unwrap();
    // (module, absolute path, is a re-export)
    let mut refs: Vec<(Module, Vec<String>, bool)> = Vec::new();
    for (m, code) in &modules {
        let mut found: Vec<(usize, Vec<String>, bool)> = Vec::new();
        for c in use_stmt.captures_iter(code) {
            let c = c.unwrap();
            let at = c.get(0).unwrap().start();
            for p in expand_use(&c[2]) {
                found.push((at, p, c.get(1).is_some()));
            }
        }
        for c in inline_path.captures_iter(code) {
            let c = c.unwrap();
            found.push((c.get(0).unwrap().start(), c[1].split("::").map(String::from).collect(), false));
        }
        // Inline `mod name { .. }` blocks: `super::` inside one starts one level deeper.
        let mut blocks = Vec::new();
        for c in inline_mod.captures_iter(code) {
            let c = c.unwrap();
            let open = c.get(0).unwrap().end() - 1;
            let mut depth = 0;
            let mut close = open;
            for (i, ch) in code[open..].char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            close = open + i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            blocks.push((open, close, c[1].to_string()));
        }
        for (at, path, reexport) in found {
            let mut here = m.clone();
            for (open, close, name) in &blocks {
                if *open < at && at < *close {
                    here.push(name.clone());
                }
            }
            let abs: Vec<String> = match path[0].as_str() {
                "crate" => path[1..].to_vec(),
                "super" | "self" => {
                    let mut k = 0;
                    while k < path.len() && (path[k] == "super" || path[k] == "self") {
                        if path[k] == "super" {
                            here.pop();
                        }
                        k += 1;
                    }
                    here.extend(path[k..].iter().cloned());
                    here
                }
                // `use child::x` (2018 paths) names a child module of this one.
                first if modules.contains_key(&[here.as_slice(), &[first.to_string()]].concat()) => {
                    here.extend(path.iter().cloned());
                    here
                }
                _ => continue, // another crate, or a name imported above
            };
            refs.push((m.clone(), abs, reexport));
        }
    }
    let known: BTreeSet<&Module> = modules.keys().collect();
    let mut reexports: BTreeMap<(Module, String), Vec<String>> = BTreeMap::new();
    for (m, abs, reexport) in &refs {
        if *reexport && abs.len() > m.len() + 1 && abs[..m.len()] == m[..] {
            reexports.insert((m.clone(), abs.last().unwrap().clone()), abs.clone());
        }
    }
    // The module a path lands in: its longest module prefix, through re-exports.
    let resolve = |path: &[String]| -> Module {
        let mut path = path.to_vec();
        for _ in 0..8 {
            let mut k = path.len();
            while k > 0 && !known.contains(&path[..k].to_vec()) {
                k -= 1;
            }
            let m = path[..k].to_vec();
            match path.get(k).and_then(|name| reexports.get(&(m.clone(), name.clone()))) {
                Some(target) => {
                    let mut p = target.clone();
                    p.extend(path[k + 1..].iter().cloned());
                    path = p;
                }
                None => return m,
            }
        }
        path
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, abs, _) in &refs {
        let to = resolve(abs);
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        if common < from.len() && common < to.len() {
            edges.entry(from[..=common].join("::")).or_default().insert(to[..=common].join("::"));
        }
    }
    edges
}

/// The strongly connected components of more than one module (Tarjan), each sorted.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        for w in t.edges.get(v).into_iter().flatten() {
            if !t.index.contains_key(w.as_str()) {
                visit(t, w);
                let lw = t.low[w.as_str()];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.stack.contains(&w.as_str()) {
                let iw = t.index[w.as_str()];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T { edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), out: Vec::new() };
    let nodes: BTreeSet<&str> = edges.iter().flat_map(|(a, bs)| std::iter::once(a.as_str()).chain(bs.iter().map(String::as_str))).collect();
    for v in nodes {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out.sort();
    t.out
}

#[test]
fn tidy_no_import_cycles_between_modules() {
    let edges = sibling_edges();
    let found = cycles(&edges);
    let known: Vec<Vec<String>> = KNOWN_CYCLES.iter().map(|c| c.iter().map(|s| s.to_string()).collect()).collect();
    let new: Vec<&Vec<String>> = found.iter().filter(|c| !known.contains(c)).collect();
    let describe = |c: &Vec<String>| {
        let inside: Vec<String> = c.iter().flat_map(|a| edges[a].iter().filter(|b| c.contains(b)).map(move |b| format!("{a} -> {b}"))).collect();
        format!("{{{}}}: {}", c.join(", "), inside.join(", "))
    };
    println!("import cycles: {}", if found.is_empty() { "none".to_string() } else { found.iter().map(describe).collect::<Vec<_>>().join("; ") });
    assert!(
        new.is_empty(),
        "import cycles between modules (move the shared item to the module it belongs to):\n{}",
        new.iter().map(|c| describe(c)).collect::<Vec<_>>().join("\n")
    );
    let gone: Vec<&Vec<String>> = known.iter().filter(|c| !found.contains(c)).collect();
    assert!(gone.is_empty(), "cycles listed in KNOWN_CYCLES are gone, remove them from tests/it/tidy.rs: {gone:?}");
}

#[test]
fn tidy_imports_follow_the_data_flow() {
    let layer = |m: &str| LAYERS.iter().position(|l| l.contains(&m));
    let lib = std::fs::read_to_string(repo().join("src/lib.rs")).unwrap();
    let declared: Vec<String> = lib.lines().filter_map(|l| l.trim().strip_prefix("pub mod ")).map(|m| m.trim_end_matches(';').to_string()).collect();
    let unplaced: Vec<&String> = declared.iter().filter(|m| layer(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules missing from LAYERS in tests/it/tidy.rs (place each in the data flow of ARCHITECTURE.md): {unplaced:?}");
    let mut against = Vec::new();
    for (from, tos) in sibling_edges() {
        if from.contains("::") {
            continue;
        }
        for to in tos {
            if let (Some(a), Some(b)) = (layer(&from), layer(&to)) {
                if b > a {
                    against.push(format!("{from} -> {to}"));
                }
            }
        }
    }
    assert!(against.is_empty(), "imports against the data flow (ARCHITECTURE.md; LAYERS in tests/it/tidy.rs): {against:?}");
}

#[test]
fn tidy_the_parsers_find_what_they_look_for() {
    let edges: BTreeMap<String, BTreeSet<String>> =
        [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e"), ("e", "d")].iter().fold(BTreeMap::new(), |mut m, (a, b)| {
            m.entry(a.to_string()).or_insert_with(BTreeSet::new).insert(b.to_string());
            m
        });
    assert_eq!(cycles(&edges), vec![vec!["a", "b", "c"], vec!["d", "e"]]);
    assert_eq!(
        expand_use("crate::a::{b, c::{d, e as f}, g::*}"),
        vec![vec!["crate", "a", "b"], vec!["crate", "a", "c", "d"], vec!["crate", "a", "c", "e"], vec!["crate", "a", "g", "*"]]
    );
    assert_eq!(
        named_cpu_functions("// matches backend::cpu::kquant::vec_dot_q{2..3}_K_q8_K and ops::Rope::cache(pos), not backend::cuda::ops::rope."),
        [("kquant", "vec_dot_q2_K_q8_K"), ("kquant", "vec_dot_q3_K_q8_K"), ("ops", "cache")].map(|(f, n)| (format!("src/backend/cpu/{f}.rs"), n.to_string()))
    );
    assert_eq!(code_only("let s = \"use crate::x;\"; // crate::y\nlet c = '\"'; crate::z"), "let s = \"\"; \nlet c = ' '; crate::z");
}

// ---------------------------------------------------------------------------
// kernel headers
// ---------------------------------------------------------------------------

/// The CPU functions a kernel header names: `backend::cpu::MOD::NAME`, `MOD::NAME` for the
/// spec modules, `CpuBackend::NAME`, with `q{2..6}` ranges expanded; as (module file, name).
fn named_cpu_functions(header: &str) -> Vec<(String, String)> {
    let re = fancy_regex::Regex::new(r"(?<![\w:])(?:backend::cpu::)?((?:ops|quant|kquant|lanes|simd|CpuBackend)(?:::[A-Za-z_][\w{}.]*)+)").unwrap();
    let range = fancy_regex::Regex::new(r"\{(\d+)\.\.(\d+)\}").unwrap();
    let mut out = Vec::new();
    for c in re.captures_iter(header) {
        let path = c.unwrap()[1].trim_end_matches('.').to_string();
        let segs: Vec<&str> = path.split("::").collect();
        let file = match segs[0] {
            "CpuBackend" => "mod",
            m => m,
        };
        let name = *segs.last().unwrap();
        if name.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
            continue; // a type (`ops::Rope`), not a function
        }
        let names = match range.captures(name).unwrap() {
            Some(r) => {
                let (lo, hi): (u32, u32) = (r[1].parse().unwrap(), r[2].parse().unwrap());
                let whole = r.get(0).unwrap();
                (lo..=hi).map(|i| format!("{}{i}{}", &name[..whole.start()], &name[whole.end()..])).collect()
            }
            None => vec![name.to_string()],
        };
        out.extend(names.into_iter().map(|n| (format!("src/backend/cpu/{file}.rs"), n)));
    }
    // The sampler's device twin (kernels/sample.cu) names `sampler::NAME` and `exact::NAME`.
    let sampler = fancy_regex::Regex::new(r"(?<![\w:])(sampler::exact|sampler|exact)::([a-z_][a-z0-9_]*)\b").unwrap();
    for c in sampler.captures_iter(header) {
        let c = c.unwrap();
        let file = if &c[1] == "sampler" { "src/sampler/mod.rs" } else { "src/sampler/exact.rs" };
        out.push((file.to_string(), c[2].to_string()));
    }
    out
}

/// Names in kernel headers that are not CPU functions (none: a header names what exists).
const KERNEL_HEADER_ALLOW: &[(&str, &str)] = &[];

#[test]
fn tidy_kernel_headers_name_cpu_functions_that_exist() {
    let mut missing = Vec::new();
    let mut allowed_and_missing = Vec::new();
    let mut silent = Vec::new();
    let mut kernels: Vec<PathBuf> =
        std::fs::read_dir(repo().join("kernels")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "cu")).collect();
    kernels.sort();
    assert!(!kernels.is_empty(), "no kernels/*.cu");
    for k in kernels {
        let text = std::fs::read_to_string(&k).unwrap();
        let header: String = text.lines().take_while(|l| l.starts_with("//")).collect::<Vec<_>>().join("\n");
        let named = named_cpu_functions(&header);
        let kname = k.file_name().unwrap().to_string_lossy().into_owned();
        if named.is_empty() {
            silent.push(kname.clone());
        }
        for (file, name) in named {
            let src = std::fs::read_to_string(repo().join(&file)).unwrap_or_default();
            let defined = fancy_regex::Regex::new(&format!(r"\bfn\s+{}\b", fancy_regex::escape(&name))).unwrap().is_match(&src).unwrap();
            match KERNEL_HEADER_ALLOW.iter().find(|a| **a == (kname.as_str(), name.as_str())) {
                Some(a) if !defined => allowed_and_missing.push(*a),
                _ if !defined => missing.push(format!("{kname}: {name} (no `fn {name}` in {file})")),
                _ => {}
            }
        }
    }
    let stale: Vec<&(&str, &str)> = KERNEL_HEADER_ALLOW.iter().filter(|a| !allowed_and_missing.contains(a)).collect();
    assert!(stale.is_empty(), "no longer needed, remove from KERNEL_HEADER_ALLOW: {stale:?}");
    assert!(silent.is_empty(), "kernel headers that name no CPU function they match (`matches backend::cpu::ops::NAME`): {silent:?}");
    assert!(missing.is_empty(), "kernel headers naming CPU functions that do not exist (fix the header or the name):\n{}", missing.join("\n"));
}

// ---------------------------------------------------------------------------
// environment variables
// ---------------------------------------------------------------------------

/// Set by cargo or the operating system, documented there.
fn standard_env_var(name: &str) -> bool {
    name.starts_with("CARGO") || matches!(name, "HOME" | "PATH" | "TMPDIR" | "OUT_DIR" | "XDG_CACHE_HOME")
}

/// Read but not documented (none; the test fails on an entry that is no longer needed).
const UNDOCUMENTED_ENV_ALLOW: &[&str] = &[];

#[test]
fn tidy_every_environment_variable_read_is_documented() {
    let read = fancy_regex::Regex::new(r#"(?:env::var(?:_os)?|option_env!|env!)\(\s*"([A-Z][A-Z0-9_]*)""#).unwrap();
    let ours = fancy_regex::Regex::new(r#""(WORKER_ORCD_[A-Z0-9_]+)""#).unwrap();
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let this = repo().join("tests/it/tidy.rs");
    let mut files: Vec<PathBuf> = ["src", "xtask/src", "tests", "benches"].iter().flat_map(|d| rust_files(&repo().join(d))).filter(|f| *f != this).collect();
    files.push(repo().join("build.rs"));
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for re in [&read, &ours] {
            for c in re.captures_iter(&text) {
                found.entry(c.unwrap()[1].to_string()).or_default().insert(rel(&f));
            }
        }
    }
    let docs = ["README.md", "ARCHITECTURE.md"].map(|d| std::fs::read_to_string(repo().join(d)).unwrap()).join("\n");
    let word = |name: &str| docs.match_indices(name).any(|(i, _)| !docs[i + name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'));
    let undocumented: Vec<String> = found
        .iter()
        .filter(|(name, _)| !standard_env_var(name) && !word(name) && !UNDOCUMENTED_ENV_ALLOW.contains(&name.as_str()))
        .map(|(name, files)| format!("{name} (read in {})", files.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    assert!(undocumented.is_empty(), "environment variables read but documented in neither README.md nor ARCHITECTURE.md:\n{}", undocumented.join("\n"));
    let stale: Vec<&&str> = UNDOCUMENTED_ENV_ALLOW.iter().filter(|n| word(n) || !found.contains_key(**n)).collect();
    assert!(stale.is_empty(), "documented or no longer read, remove from UNDOCUMENTED_ENV_ALLOW: {stale:?}");
}

// ---------------------------------------------------------------------------
// machine paths
// ---------------------------------------------------------------------------

/// Absolute paths of one machine (home directories, work trees, the sibling `../shared`
/// folder). Generic examples use `/path/to/...` or `~/`; nothing is allow-listed.
const MACHINE_PATHS: &[&str] = &["/work/", "/tmp/wt-", "/root/", "/home/", "../shared"];

/// Committed files: `git ls-files`, else every file outside `target/` and `.git/`.
fn committed_files() -> Vec<PathBuf> {
    let git = std::process::Command::new("git").current_dir(repo()).args(["ls-files", "-z"]).output();
    if let Some(o) = git.ok().filter(|o| o.status.success()) {
        return o.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()).map(|p| repo().join(String::from_utf8_lossy(p).as_ref())).collect();
    }
    let mut out = Vec::new();
    let mut stack = vec![repo()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                if !matches!(name.as_str(), "target" | ".git") {
                    stack.push(p);
                }
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn tidy_no_machine_paths_are_committed() {
    let this = repo().join("tests/it/tidy.rs");
    let mut found = Vec::new();
    for f in committed_files() {
        if f == this {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&f) else { continue }; // binary data
        for (n, line) in text.lines().enumerate() {
            if let Some(p) = MACHINE_PATHS.iter().find(|p| line.contains(*p)) {
                found.push(format!("{}:{}: {p}", rel(&f), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "machine paths committed (use a path relative to the checkout, `~/`, or `/path/to/`):\n{}", found.join("\n"));
}
