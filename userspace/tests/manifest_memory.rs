//! A `List`'s items are converted one at a time as they are parsed: parsing a `List` needs no
//! more heap at its peak than the same objects as separate documents (without it, the whole
//! list's tree is in memory at once: about twice as much here). Allocation counts are exact,
//! so this is not a timing test.

#![allow(clippy::unwrap_used, reason = "a test")]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap in use at the peak of `f`, above what was in use when it started.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - base)
}

fn service(i: usize) -> String {
    format!(
        r#"{{"apiVersion": "v1", "kind": "Service", "metadata": {{"name": "s{i}", "namespace": "bench", "labels": {{"app": "web-{i}", "tier": "frontend"}}}}, "spec": {{"clusterIP": "10.96.{}.{}", "ports": [{{"name": "http", "port": 80, "targetPort": 8080}}, {{"name": "https", "port": 443, "targetPort": 8443}}]}}}}"#,
        i / 250,
        i % 250 + 1
    )
}

/// One test in this binary: the counters are process-wide.
#[test]
fn a_list_is_converted_item_by_item() {
    let n = 2000;
    let items: Vec<String> = (0..n).map(service).collect();
    let documents = items.join("\n---\n");
    let json_list = format!(
        "{{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n{}\n]}}\n",
        items.join(",\n")
    );
    let yaml_list = format!(
        "apiVersion: v1\nkind: List\nitems:\n{}\n",
        items
            .iter()
            .map(|i| format!("- {i}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let parse = tollgate::source::manifest::parse;
    let (objects, separate) = peak_of(|| parse(&documents).unwrap());
    assert_eq!(objects.len(), n);
    drop(objects);
    for (what, text) in [("JSON", &json_list), ("YAML", &yaml_list)] {
        let (objects, list) = peak_of(|| parse(text).unwrap());
        assert_eq!(objects.len(), n, "{what}");
        drop(objects);
        assert!(
            list * 10 <= separate * 12,
            "a {what} List peaked at {list} bytes, the same objects as documents at {separate}"
        );
    }
}
