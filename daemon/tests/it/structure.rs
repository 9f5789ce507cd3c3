//! The shape ARCHITECTURE.md promises, checked on the sources: the
//! daemon's modules form no cycle (a low room never reaches up), and
//! a waiting call stays small.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, tests left out.
fn sources(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the sources") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "tests" {
                sources(&path, into);
            }
        } else if name.ends_with(".rs") && name != "tests.rs" {
            into.push(path);
        }
    }
}

/// The top-level module a file under `src` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let first = relative.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

/// `crate::NAME` references in `text`, before any `#[cfg(test)]` module.
fn references(text: &str) -> BTreeSet<String> {
    let text = text.split("#[cfg(test)]\nmod ").next().unwrap_or(text);
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let name: String = text[at + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            found.insert(name);
        }
    }
    found
}

#[test]
fn the_daemons_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(&src, file);
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read");
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(references(&text).into_iter().filter(|m| *m != module));
    }
    // Depth-first, with the path so far: a module met again on the path
    // closes a cycle.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|m| m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if !done.insert(module.to_owned()) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let cycle = visit(module, &graph, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "the daemon's modules form a cycle: {}",
            cycle.unwrap_or_default().join(" → ")
        );
    }
    // The lowest rooms depend on nothing of tokd's.
    for low in ["secret", "text"] {
        assert!(graph[low].is_empty(), "{low} depends on {:?}", graph[low]);
    }
}

/// A thousand callers waiting for one refresh each hold their `get`'s
/// future; the request itself (an HTTP exchange and a write, 8 KiB of
/// future) runs boxed in a task of its own, so a waiting caller holds
/// under 1 KiB. Unboxed it was 8.6 KiB, and a 1,000-call burst left
/// tokd 15 MiB bigger (BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_get_holds_a_small_future() {
    let home = tokd_testkit::Home::new();
    let (events, _heard) = tokio::sync::mpsc::unbounded_channel();
    let broker = tokd::broker::Broker::start(
        tokd::config::Config::from_str("").expect("config"),
        None,
        std::sync::Arc::new(tokd::storage::Storage::new(
            tokd::storage::StateFolder::open(home.state_dir()).expect("state folder"),
            None,
        )),
        tokd::oauth::OAuthClient::new().expect("client"),
        events,
        tokd::broker::Options::default(),
    );
    let get = broker.get_token("a", std::time::Duration::from_secs(60));
    let size = std::mem::size_of_val(&get);
    assert!(size <= 1024, "a get's future is {size} bytes");
    let refresh = broker.refresh_now("a");
    let size = std::mem::size_of_val(&refresh);
    assert!(size <= 1024, "a refresh's future is {size} bytes");
}
