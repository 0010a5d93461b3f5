//! The engine's layering, checked: no import circle between its source files, and no
//! import from a lower top-level module into a higher one (the order is written down in
//! `engine/src/lib.rs` and repeated in [`LAYERS`]).
//!
//! The check reads the engine's sources with `syn` (tests and loom models left out),
//! resolves every path that names one of the crate's own items — `use` statements,
//! paths in code and types, and `crate::…` inside macro calls — through the modules'
//! imports and re-exports to the file that defines the item, and builds the graph of
//! "this file uses an item of that file". A `pub use` that only re-exports is not an
//! edge; using what it re-exports is an edge to the defining file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// The engine's top-level modules, lowest first. A module may use modules before it in
/// this list, never one after it.
const LAYERS: &[&str] = &[
    "placement",
    "features",
    "model",
    "error",
    "token",
    "admission",
    "telemetry",
    "lanes",
    "router",
    "adapt",
    "remote",
    "op",
    "control",
    "engine",
    "remote_worker",
];

type ModPath = Vec<String>;

#[derive(Default, Debug)]
struct Module {
    file: PathBuf,
    children: BTreeSet<String>,
    items: BTreeSet<String>,
    /// Names brought in by `use`, to the path they name (relative to this module).
    aliases: BTreeMap<String, Vec<String>>,
    globs: Vec<Vec<String>>,
}

#[derive(Debug)]
struct Reference {
    module: ModPath,
    path: Vec<String>,
}

#[derive(Default)]
struct Crate {
    modules: BTreeMap<ModPath, Module>,
    references: Vec<Reference>,
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        let Ok(list) = a.meta.require_list() else {
            return false;
        };
        let text = list.tokens.to_string();
        a.path().is_ident("cfg")
            && ((text.contains("test") && !text.contains("not (test)")) || text.contains("loom"))
    })
}

fn flatten_use(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Option<String>, Vec<String>)>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut path = prefix.clone();
            if name == "self" {
                out.push((prefix.last().cloned(), path));
            } else {
                path.push(name.clone());
                out.push((Some(name), path));
            }
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            if r.ident != "self" {
                path.push(r.ident.to_string());
            }
            out.push((Some(r.rename.to_string()), path));
        }
        syn::UseTree::Glob(_) => out.push((None, prefix.clone())),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix, out);
            }
        }
    }
}

fn is_public(vis: &syn::Visibility) -> bool {
    !matches!(vis, syn::Visibility::Inherited)
}

impl Crate {
    fn load(&mut self, module: ModPath, file: &Path, dir: &Path) {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        self.load_items(module, file, dir, &parsed.items);
    }

    fn load_items(&mut self, module: ModPath, file: &Path, dir: &Path, items: &[syn::Item]) {
        self.modules.entry(module.clone()).or_default().file = file.to_path_buf();
        for item in items {
            let (attrs, ident) = match item {
                syn::Item::Const(i) => (&i.attrs, Some(&i.ident)),
                syn::Item::Enum(i) => (&i.attrs, Some(&i.ident)),
                syn::Item::Fn(i) => (&i.attrs, Some(&i.sig.ident)),
                syn::Item::Macro(i) => (&i.attrs, i.ident.as_ref()),
                syn::Item::Static(i) => (&i.attrs, Some(&i.ident)),
                syn::Item::Struct(i) => (&i.attrs, Some(&i.ident)),
                syn::Item::Trait(i) => (&i.attrs, Some(&i.ident)),
                syn::Item::Type(i) => (&i.attrs, Some(&i.ident)),
                syn::Item::Union(i) => (&i.attrs, Some(&i.ident)),
                syn::Item::Impl(i) => (&i.attrs, None),
                syn::Item::Mod(i) => (&i.attrs, None),
                syn::Item::Use(i) => (&i.attrs, None),
                _ => continue,
            };
            if is_test_only(attrs) {
                continue;
            }
            if let Some(ident) = ident {
                let m = self.modules.get_mut(&module).unwrap();
                m.items.insert(ident.to_string());
            }
            match item {
                syn::Item::Mod(m) => {
                    let name = m.ident.to_string();
                    self.modules.get_mut(&module).unwrap().children.insert(name.clone());
                    let mut child = module.clone();
                    child.push(name.clone());
                    match &m.content {
                        Some((_, inner)) => self.load_items(child, file, &dir.join(&name), inner),
                        None => {
                            let flat = dir.join(format!("{name}.rs"));
                            let (f, d) = if flat.exists() {
                                (flat, dir.join(&name))
                            } else {
                                (dir.join(&name).join("mod.rs"), dir.join(&name))
                            };
                            self.load(child, &f, &d);
                        }
                    }
                }
                syn::Item::Use(u) => {
                    let mut flat = Vec::new();
                    flatten_use(&u.tree, &mut Vec::new(), &mut flat);
                    let m = self.modules.get_mut(&module).unwrap();
                    for (name, path) in flat {
                        // A private import is a use of what it names; a public one
                        // re-exports it, and only its users depend on it.
                        if !is_public(&u.vis) {
                            self.references
                                .push(Reference { module: module.clone(), path: path.clone() });
                        }
                        match name {
                            Some(name) => {
                                m.aliases.insert(name, path);
                            }
                            None => m.globs.push(path),
                        }
                    }
                }
                other => {
                    let mut v = Refs { module: &module, out: &mut self.references };
                    v.visit_item(other);
                }
            }
        }
    }

    fn module(&self, path: &[String]) -> Option<&Module> {
        self.modules.get(path)
    }

    /// The file that defines what `path`, written in `module`, names; `None` for what
    /// is not the crate's own (std, other crates, locals, generics).
    fn resolve(&self, module: &[String], path: &[String], depth: usize) -> Option<PathBuf> {
        if depth > 16 || path.is_empty() {
            return None;
        }
        let here = self.module(module)?;
        let first = path[0].as_str();
        let (start, rest): (ModPath, &[String]) = match first {
            "crate" => (Vec::new(), &path[1..]),
            "self" => (module.to_vec(), &path[1..]),
            "super" => {
                let ups = path.iter().take_while(|s| *s == "super").count();
                let keep = module.len().checked_sub(ups)?;
                (module[..keep].to_vec(), &path[ups..])
            }
            // A module alone is no value or type: a one-segment path with a module's
            // name is a local (a field shorthand, a variable).
            name if here.children.contains(name) && path.len() == 1 => return None,
            name if here.children.contains(name) => {
                let mut m = module.to_vec();
                m.push(name.to_string());
                (m, &path[1..])
            }
            name if here.items.contains(name) => return Some(here.file.clone()),
            name => {
                if let Some(target) = here.aliases.get(name) {
                    let mut full = target.clone();
                    full.extend_from_slice(&path[1..]);
                    return self.resolve(module, &full, depth + 1);
                }
                return None;
            }
        };
        self.walk(start, rest, depth)
    }

    fn walk(&self, module: ModPath, rest: &[String], depth: usize) -> Option<PathBuf> {
        let here = self.module(&module)?;
        let Some(first) = rest.first() else {
            return Some(here.file.clone());
        };
        if here.children.contains(first) {
            let mut m = module.clone();
            m.push(first.clone());
            return self.walk(m, &rest[1..], depth);
        }
        if here.items.contains(first) {
            return Some(here.file.clone());
        }
        if let Some(target) = here.aliases.get(first) {
            let mut full = target.clone();
            full.extend_from_slice(&rest[1..]);
            return self.resolve(&module, &full, depth + 1);
        }
        for glob in &here.globs {
            let mut full = glob.clone();
            full.extend_from_slice(rest);
            if let Some(found) = self.resolve(&module, &full, depth + 1) {
                return Some(found);
            }
        }
        Some(here.file.clone())
    }
}

struct Refs<'a> {
    module: &'a ModPath,
    out: &'a mut Vec<Reference>,
}

impl Refs<'_> {
    fn push(&mut self, path: Vec<String>) {
        self.out.push(Reference { module: self.module.clone(), path });
    }

    /// `crate::a::b` and `super::a` inside a macro call's tokens.
    fn scan(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => self.scan(g.stream()),
                TokenTree::Ident(id) if id == "crate" || id == "super" => {
                    let mut path = vec![id.to_string()];
                    let mut j = i + 1;
                    loop {
                        let colons = matches!((&trees.get(j), &trees.get(j + 1)),
                            (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) if a.as_char() == ':' && b.as_char() == ':');
                        match (colons, trees.get(j + 2)) {
                            (true, Some(TokenTree::Ident(next))) => {
                                path.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    self.push(path);
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Refs<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let test_only = match item {
            syn::Item::Fn(i) => is_test_only(&i.attrs),
            syn::Item::Impl(i) => is_test_only(&i.attrs),
            syn::Item::Mod(i) => is_test_only(&i.attrs),
            syn::Item::Struct(i) => is_test_only(&i.attrs),
            _ => false,
        };
        if !test_only {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if !is_test_only(&f.attrs) {
            syn::visit::visit_impl_item_fn(self, f);
        }
    }

    /// `pub(super)` names no item.
    fn visit_visibility(&mut self, _: &'ast syn::Visibility) {}

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.leading_colon.is_none() {
            self.push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        self.scan(mac.tokens.clone());
    }
}

fn load() -> (Crate, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("engine/src");
    let mut krate = Crate::default();
    krate.load(Vec::new(), &src.join("lib.rs"), &src);
    (krate, src)
}

/// Every "file uses file" edge, with one example path for each.
fn edges(krate: &Crate, src: &Path) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for r in &krate.references {
        let Some(to) = krate.resolve(&r.module, &r.path, 0) else {
            continue;
        };
        let from = &krate.modules[&r.module].file;
        if *from == to {
            continue;
        }
        let rel = |p: &Path| p.strip_prefix(src).unwrap().display().to_string();
        out.entry((rel(from), rel(&to))).or_insert_with(|| r.path.join("::"));
    }
    out
}

fn top(file: &str) -> &str {
    let first = file.split('/').next().unwrap();
    first.strip_suffix(".rs").unwrap_or(first)
}

/// Strongly connected components of more than one node (Tarjan).
fn circles(edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let index_of: BTreeMap<&String, usize> =
        nodes.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let names: Vec<&String> = nodes.iter().copied().collect();
    let mut adj = vec![Vec::new(); names.len()];
    for (a, b) in edges {
        adj[index_of[a]].push(index_of[b]);
    }
    struct T {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn strong(v: usize, adj: &[Vec<usize>], t: &mut T) {
        t.index[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on[v] = true;
        for &w in &adj[v] {
            match t.index[w] {
                None => {
                    strong(w, adj, t);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(i) if t.on[w] => t.low[v] = t.low[v].min(i),
                _ => {}
            }
        }
        if Some(t.low[v]) == t.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                t.out.push(scc);
            }
        }
    }
    let n = names.len();
    let mut t = T {
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            strong(v, &adj, &mut t);
        }
    }
    t.out
        .into_iter()
        .map(|scc| {
            let mut s: Vec<String> = scc.into_iter().map(|i| names[i].clone()).collect();
            s.sort();
            s
        })
        .collect()
}

#[test]
fn no_import_circle_between_files() {
    let (krate, src) = load();
    let edges = edges(&krate, &src);
    let graph: BTreeSet<(String, String)> = edges.keys().cloned().collect();
    let found = circles(&graph);
    let mut report = String::new();
    for scc in &found {
        report.push_str(&format!("circle: {}\n", scc.join(", ")));
        for ((a, b), example) in &edges {
            if scc.contains(a) && scc.contains(b) {
                report.push_str(&format!("    {a} -> {b}   ({example})\n"));
            }
        }
    }
    assert!(found.is_empty(), "import circles between the engine's files:\n{report}");
}

#[test]
fn no_upward_import_between_modules() {
    let (krate, src) = load();
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut upward = Vec::new();
    for ((a, b), example) in edges(&krate, &src) {
        let (ta, tb) = (top(&a), top(&b));
        if ta == tb || ta == "lib" || tb == "lib" {
            continue;
        }
        let (Some(ra), Some(rb)) = (rank(ta), rank(tb)) else {
            panic!("top-level module {ta} or {tb} is missing from LAYERS (tests/it/layers.rs)");
        };
        if ra < rb {
            upward.push(format!("{a} -> {b}   ({example})"));
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a lower layer into a higher one (order: {}):\n{}",
        LAYERS.join(" < "),
        upward.join("\n")
    );
}

/// The check itself: a made-up upward import is caught.
#[test]
fn the_layer_check_sees_an_upward_import() {
    let (mut krate, src) = load();
    krate.references.push(Reference {
        module: vec!["token".into()],
        path: vec!["crate".into(), "engine".into(), "Engine".into()],
    });
    let e = edges(&krate, &src);
    assert!(e.contains_key(&("token/mod.rs".to_string(), "engine/mod.rs".to_string())), "{e:?}");
}
