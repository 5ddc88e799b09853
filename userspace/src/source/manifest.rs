//! Reading ordinary Kubernetes manifests: multi-document YAML, JSON, or a `List` (also
//! `ServiceList` & co.) of Services, EndpointSlices, Nodes, Pods and ServiceCIDRs. Other kinds
//! are ignored.

use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::ServiceCIDR,
};
use serde::de::DeserializeOwned;

use crate::enls::Object;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not valid YAML/JSON: {0}")]
    Syntax(String),
    #[error("document {document} (from line {line}): {kind} {name:?}: {error}")]
    Object {
        document: usize,
        line: usize,
        kind: String,
        name: String,
        error: String,
    },
    #[error("document {document} (from line {line}): {error}")]
    Document {
        document: usize,
        line: usize,
        error: String,
    },
}

/// What follows a YAML document marker (`---` alone or before blanks) that starts `line`;
/// `None` when the line is no marker.
fn after_marker(line: &str) -> Option<&str> {
    line.strip_prefix("---")
        .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// First line (1-based) of each YAML document in `text` that the parser yields: it skips
/// empty documents and those that are only a null (`~`, `null`), so the n-th here is the
/// parser's n-th. A document starts on the line after its `---`, or on that line when content
/// follows the marker.
fn document_lines(text: &str) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut start = 1;
    // The document's content lines so far, and whether the only one is a null.
    let mut content_lines = 0;
    let mut only_null = false;
    let mut close = |start: usize, content_lines: usize, only_null: bool| {
        if content_lines > 1 || (content_lines == 1 && !only_null) {
            starts.push(start);
        }
    };
    for (i, line) in text.lines().enumerate() {
        let after_marker = after_marker(line);
        if after_marker.is_some() {
            close(start, content_lines, only_null);
            start = i + 2;
            content_lines = 0;
        }
        let content = after_marker.unwrap_or(line);
        let content = content
            .split_once(" #")
            .map_or(content, |(before, _)| before)
            .trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if content_lines == 0 {
            only_null = matches!(content, "~" | "null" | "Null" | "NULL");
            if after_marker.is_some() {
                start = i + 1;
            }
        }
        content_lines += 1;
    }
    close(start, content_lines, only_null);
    starts
}

/// An object that did not convert: its kind, name and the reason (the document and line are
/// added by [`objects_of`] and [`parse`]).
#[derive(Debug)]
struct ItemError {
    kind: String,
    name: String,
    error: String,
}

impl ItemError {
    fn at(self, document: usize) -> ManifestError {
        ManifestError::Object {
            document,
            line: 0,
            kind: self.kind,
            name: self.name,
            error: self.error,
        }
    }
}

fn typed<T: DeserializeOwned>(value: serde_json::Value, kind: &str) -> Result<T, ItemError> {
    let name = value
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .unwrap_or("")
        .to_owned();
    serde_json::from_value(value).map_err(|e| ItemError {
        kind: kind.to_owned(),
        name,
        error: e.to_string(),
    })
}

/// One object of `kind`; `None` for kinds the ENLS does not use.
fn convert(item: serde_json::Value, kind: &str) -> Result<Option<Object>, ItemError> {
    Ok(Some(match kind {
        "Service" => Object::Service(Box::new(typed::<Service>(item, kind)?)),
        "EndpointSlice" => Object::EndpointSlice(Box::new(typed::<EndpointSlice>(item, kind)?)),
        "Node" => Object::Node(Box::new(typed::<Node>(item, kind)?)),
        "Pod" => Object::Pod(Box::new(typed::<Pod>(item, kind)?)),
        "ServiceCIDR" => Object::ServiceCidr(Box::new(typed::<ServiceCIDR>(item, kind)?)),
        _ => return Ok(None),
    }))
}

/// The parser's budget, scaled to the input: a cluster's worth of objects (10,000 Services
/// and their slices are 20,000 documents and over a million nodes) fits, since documents,
/// nodes, events and scalar bytes cannot outnumber the input's bytes without aliases; alias
/// expansion keeps the library's limits (billion-laughs protection).
fn options(text: &str) -> serde_saphyr::Options {
    let n = text.len().saturating_add(1024);
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: n,
            max_nodes: n,
            max_events: n.saturating_mul(2),
            max_total_scalar_bytes: n,
        },
    }
}

/// Parses every object of the kinds the ENLS uses. Any error rejects the whole text (the
/// caller keeps its last good state); a syntax error anywhere is reported before an object's.
pub fn parse(text: &str) -> Result<Vec<Object>, ManifestError> {
    if let Some(parsed) = parse_json(text) {
        return parsed;
    }
    let objects: Objects =
        serde_saphyr::from_str_multiple_with_options::<Doc, Objects>(text, options(text))
            .map_err(|e| ManifestError::Syntax(e.to_string()))?;
    objects.finish(|| {
        let lines = document_lines(text);
        move |document| lines.get(document - 1).copied().unwrap_or(1)
    })
}

/// JSON text (an object, a `List` as `kubectl get -o json` prints it, or objects one after
/// another, also with YAML's `---` lines between them) through serde_json, several times faster
/// than the YAML parser on a cluster-sized file. `None` when the text is not JSON: the YAML
/// parser then reads it (flow-style YAML also starts with `{`) and reports any syntax error.
fn parse_json(text: &str) -> Option<Result<Vec<Object>, ManifestError>> {
    let body = text.trim_start();
    if !body.starts_with('{') {
        return None;
    }
    let mut objects = Objects::default();
    let mut starts = Vec::new();
    // Where the current JSON stream began: after the last `---`.
    let mut base = 0;
    'streams: loop {
        let mut stream = serde_json::Deserializer::from_str(&text[base..]).into_iter::<Doc>();
        loop {
            let from = base + stream.byte_offset();
            let rest = &text[from..];
            let at = from + (rest.len() - rest.trim_start().len());
            match stream.next() {
                None => break 'streams,
                Some(Ok(value)) => {
                    starts.push(at);
                    objects.extend([value]);
                }
                // A document marker at the start of a line: the next stream begins after it.
                Some(Err(_)) if document_marker(text, at) => {
                    base = at + 3;
                    continue 'streams;
                }
                Some(Err(_)) => return None,
            }
        }
    }
    Some(objects.finish(|| {
        move |document: usize| {
            starts
                .get(document - 1)
                .map_or(1, |&at| text[..at].matches('\n').count() + 1)
        }
    }))
}

/// Is there a YAML document marker at `at`, the start of a line?
fn document_marker(text: &str, at: usize) -> bool {
    let line_start = at == 0 || text[..at].ends_with('\n');
    line_start && text[at..].lines().next().and_then(after_marker).is_some()
}

impl ManifestError {
    /// Fills in the first line of the error's document (unknown while the parser streams).
    fn set_line(&mut self, line_of: impl Fn(usize) -> usize) {
        match self {
            Self::Object { document, line, .. } | Self::Document { document, line, .. } => {
                *line = line_of(*document);
            }
            Self::Syntax(_) => {}
        }
    }
}

/// The objects of the documents so far, converted one document at a time as the parser
/// yields it, and a `List`'s items one at a time (see [`Doc`]): only one object's tree is in
/// memory at once (all of a 10,000-Service manifest's trees together took ≈ 200 MB, and the
/// allocator kept most of it). After the first error the rest is only parsed.
#[derive(Default)]
struct Objects {
    out: Vec<Object>,
    documents: usize,
    error: Option<ManifestError>,
}

impl Objects {
    /// The objects, or the first error with its document's first line (`line_of`, built only
    /// when there is an error: the parser streams, so lines are worked out afterwards).
    fn finish<F: Fn(usize) -> usize>(
        self,
        line_of: impl FnOnce() -> F,
    ) -> Result<Vec<Object>, ManifestError> {
        match self.error {
            Some(mut error) => {
                error.set_line(line_of());
                Err(error)
            }
            None => Ok(self.out),
        }
    }
}

impl Extend<Doc> for Objects {
    fn extend<I: IntoIterator<Item = Doc>>(&mut self, docs: I) {
        for doc in docs {
            self.documents += 1;
            if self.error.is_none()
                && let Err(error) = objects_of(doc, self.documents, &mut self.out)
            {
                self.error = Some(error);
            }
        }
    }
}

/// One document. A mapping keeps its fields as a tree, except `items`, whose elements are
/// converted as they are parsed when they name their kind (as in `kubectl get -o json`);
/// whether they are used is decided at the end, when the document's own kind is known (a
/// mapping's keys come in any order, and kubectl prints `items` before `kind`).
enum Doc {
    Null,
    /// A scalar or a sequence.
    NotAMapping,
    Mapping {
        fields: serde_json::Map<String, serde_json::Value>,
        items: Option<Items>,
    },
}

enum Items {
    List(Vec<Item>),
    NotAList,
}

enum Item {
    /// An element with its own `kind`, converted while parsing (`None`: a kind not used).
    Converted(Result<Option<Object>, ItemError>),
    /// An element without one (a typed list's, such as `ServiceList`): converted at the end.
    Untyped(serde_json::Value),
}

/// A visitor's answer to any scalar.
macro_rules! scalars_are {
    ($ty:ty, $value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<$ty, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<$ty, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<$ty, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<$ty, E> {
            Ok($value)
        }
        fn visit_str<E>(self, _: &str) -> Result<$ty, E> {
            Ok($value)
        }
    };
}

impl<'de> serde::Deserialize<'de> for Doc {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Doc;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a Kubernetes object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
                let mut fields = serde_json::Map::new();
                let mut items = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "items" {
                        items = Some(map.next_value::<Items>()?);
                    } else {
                        fields.insert(key, map.next_value()?);
                    }
                }
                Ok(Doc::Mapping { fields, items })
            }
            fn visit_unit<E>(self) -> Result<Doc, E> {
                Ok(Doc::Null)
            }
            fn visit_none<E>(self) -> Result<Doc, E> {
                Ok(Doc::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Doc::NotAMapping)
            }
            scalars_are!(Doc, Doc::NotAMapping);
        }
        d.deserialize_any(V)
    }
}

impl<'de> serde::Deserialize<'de> for Items {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Items;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of objects")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Items, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<serde_json::Value>()? {
                    items.push(match item.get("kind").and_then(|k| k.as_str()) {
                        Some(kind) => {
                            let kind = kind.to_owned();
                            Item::Converted(convert(item, &kind))
                        }
                        None => Item::Untyped(item),
                    });
                }
                Ok(Items::List(items))
            }
            fn visit_unit<E>(self) -> Result<Items, E> {
                Ok(Items::List(Vec::new()))
            }
            fn visit_none<E>(self) -> Result<Items, E> {
                Ok(Items::List(Vec::new()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Items, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Items::NotAList)
            }
            scalars_are!(Items, Items::NotAList);
        }
        d.deserialize_any(V)
    }
}

/// The objects of one document (one object, or a `List`'s items) into `out`; the error's
/// line is filled in by [`parse`].
fn objects_of(doc: Doc, document: usize, out: &mut Vec<Object>) -> Result<(), ManifestError> {
    let no_kind = || ManifestError::Document {
        document,
        line: 0,
        error: "no `kind`".into(),
    };
    let (fields, items) = match doc {
        Doc::Null => return Ok(()),
        Doc::NotAMapping => return Err(no_kind()),
        Doc::Mapping { fields, items } => (fields, items),
    };
    let kind = match fields.get("kind").and_then(|k| k.as_str()) {
        Some(kind) if !kind.is_empty() => kind.to_owned(),
        _ => return Err(no_kind()),
    };
    let Some(list_kind) = kind.strip_suffix("List") else {
        // One object (an `items` field means nothing to the kinds used, and is dropped).
        let object =
            convert(serde_json::Value::Object(fields), &kind).map_err(|e| e.at(document))?;
        if object.is_none() {
            tracing::debug!(
                document,
                kind,
                "manifest: ignoring a kind the node-local state does not use"
            );
        }
        out.extend(object);
        return Ok(());
    };
    let items = match items {
        Some(Items::List(items)) => items,
        None => Vec::new(),
        Some(Items::NotAList) => {
            return Err(ManifestError::Document {
                document,
                line: 0,
                error: format!("{kind}.items is not a list"),
            });
        }
    };
    for item in items {
        let object = match item {
            Item::Converted(object) => object,
            // A `List`'s untyped items name no kind: ignored, as an unknown kind.
            Item::Untyped(item) => convert(item, list_kind),
        };
        let object = object.map_err(|e| e.at(document))?;
        if object.is_none() {
            tracing::debug!(
                document,
                "manifest: ignoring a list item of a kind the node-local state does not use"
            );
        }
        out.extend(object);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_lists_and_json() {
        let text = r#"
# comment
apiVersion: v1
kind: Service
metadata: {name: a, namespace: default}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: v1
kind: List
items:
  - apiVersion: v1
    kind: Pod
    metadata: {name: p, namespace: default}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: ignored}
---
{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "items": [
  {"metadata": {"name": "s", "namespace": "default"}, "addressType": "IPv4", "endpoints": []}
]}
---
apiVersion: networking.k8s.io/v1
kind: ServiceCIDR
metadata: {name: kubernetes}
spec: {cidrs: [10.96.0.0/16]}
---
"#;
        let objs = parse(text).unwrap();
        let kinds: Vec<_> = objs.iter().map(|o| o.kind().as_str()).collect();
        assert_eq!(kinds, ["Service", "Pod", "EndpointSlice", "ServiceCIDR"]);
    }

    #[test]
    fn json_lists_and_objects_one_after_another() {
        // As `kubectl get services,endpointslices -A -o json` prints them...
        let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "d"},
   "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}},
  {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
   "metadata": {"name": "a-1", "namespace": "d"}, "addressType": "IPv4", "endpoints": []}
]}
"#;
        let names = |objs: Vec<Object>| -> Vec<(String, String)> {
            objs.iter()
                .map(|o| {
                    let name = match o {
                        Object::Service(s) => s.metadata.name.clone(),
                        Object::EndpointSlice(e) => e.metadata.name.clone(),
                        _ => None,
                    };
                    (o.kind().as_str().to_owned(), name.unwrap_or_default())
                })
                .collect()
        };
        let want = [
            ("Service".to_owned(), "a".to_owned()),
            ("EndpointSlice".to_owned(), "a-1".to_owned()),
        ];
        assert_eq!(names(parse(list).unwrap()), want);
        // ... and as `jq -c '.items[]'` does: one object per line, no `---` (not YAML).
        let lines = "{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {\"name\": \"a\", \"namespace\": \"d\"}, \"spec\": {\"clusterIP\": \"10.96.0.1\", \"ports\": [{\"port\": 80}]}}\n{\"apiVersion\": \"discovery.k8s.io/v1\", \"kind\": \"EndpointSlice\", \"metadata\": {\"name\": \"a-1\", \"namespace\": \"d\"}, \"addressType\": \"IPv4\", \"endpoints\": []}\n";
        assert_eq!(names(parse(lines).unwrap()), want);

        // An object's error names its document and line.
        let bad = format!(
            "{lines}\n  {{\"kind\": \"Service\", \"metadata\": {{\"name\": \"b\"}}, \"spec\": {{\"ports\": [{{\"port\": \"x\"}}]}}}}\n"
        );
        let err = parse(&bad).unwrap_err().to_string();
        assert!(
            err.contains("document 3 (from line 4): Service \"b\""),
            "{err}"
        );
        // With YAML's `---` between them (as the test bed writes manifests): the same, still
        // through serde_json, with the documents numbered as the YAML parser numbers them.
        let obj = |l: &str| l.to_owned();
        let docs: Vec<String> = lines.lines().map(obj).collect();
        let separated = format!("{}\n---\n{}\n---\n", docs[0], docs[1]);
        assert!(parse_json(&separated).is_some(), "taken by the JSON path");
        assert_eq!(names(parse(&separated).unwrap()), want);
        let bad_doc = "{\"kind\": \"Service\", \"metadata\": {\"name\": \"b\"}, \"spec\": {\"ports\": [{\"port\": \"x\"}]}}";
        let err = parse(&format!("{}\n---\n--- \n{bad_doc}\n", docs[0]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("document 2 (from line 4): Service \"b\""),
            "{err}"
        );
        let yaml_err = {
            let text = format!("{}\n---\n--- \n{bad_doc}\n", docs[0]);
            serde_saphyr::from_str_multiple_with_options::<Doc, Objects>(&text, options(&text))
                .unwrap()
                .finish(|| {
                    let lines = document_lines(&text);
                    move |d| lines.get(d - 1).copied().unwrap_or(1)
                })
                .unwrap_err()
                .to_string()
        };
        assert_eq!(err, yaml_err, "the YAML parser says the same");
        // A marker that is not at the start of a line, or with a comment, is left to YAML.
        assert!(parse_json(&format!("{} ---\n{}", docs[0], docs[1])).is_none());
        let commented = format!("{}\n--- # two\n{}\n", docs[0], docs[1]);
        assert!(parse_json(&commented).is_none());
        assert_eq!(names(parse(&commented).unwrap()), want);
        // Flow-style YAML also starts with `{`; broken JSON is reported by the YAML parser.
        let flow = "{kind: Service, metadata: {name: c}, spec: {ports: [{port: 80}]}}\n";
        assert_eq!(parse(flow).unwrap().len(), 1);
        let err = parse("{\"kind\": \"Service\", \"metadata\": {\"name\": \"a\"}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid YAML"), "{err}");
    }

    #[test]
    fn odd_documents_and_items_are_errors_or_ignored_never_a_panic() {
        let svc =
            r#"{"kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}"#;
        for (text, want) in [
            // Documents that are not mappings.
            ("[1, 2]\n", Err("document 1 (from line 1): no `kind`")),
            ("42\n", Err("no `kind`")),
            ("\"text\"\n", Err("no `kind`")),
            (
                "true\n---\nkind: Service\n",
                Err("document 1 (from line 1): no `kind`"),
            ),
            ("{}\n", Err("no `kind`")),
            ("{\"kind\": 7}\n", Err("no `kind`")),
            // `items` of every shape.
            ("{\"kind\": \"List\", \"items\": null}", Ok(0)),
            ("{\"kind\": \"List\"}", Ok(0)),
            ("kind: List\nitems: 3\n", Err("List.items is not a list")),
            ("kind: List\nitems: text\n", Err("List.items is not a list")),
            (
                "{\"kind\": \"List\", \"items\": {\"a\": [1]}}",
                Err("not a list"),
            ),
            (
                "{\"kind\": \"List\", \"items\": [1, \"x\", null, []]}",
                Ok(0),
            ),
            (
                "{\"kind\": \"ServiceList\", \"items\": [7]}",
                Err("Service \"\": invalid type"),
            ),
            // Items before the list's kind, as kubectl prints them; nested lists are not read.
            (
                &format!("{{\"items\": [{svc}], \"kind\": \"List\"}}"),
                Ok(1),
            ),
            (
                &format!(
                    "{{\"kind\": \"List\", \"items\": [{{\"kind\": \"List\", \"items\": [{svc}]}}]}}"
                ),
                Ok(0),
            ),
            // An object with an `items` field: the field means nothing to it.
            (&format!("{{\"items\": [1], {}", &svc[1..]), Ok(1)),
            // Not JSON after all: the YAML parser decides.
            (&format!("{svc}\ngarbage: [\n"), Err("not valid YAML")),
            (&format!("{}{svc}", '\u{feff}'), Ok(1)),
            (&format!("{}{svc}", '\u{a0}'), Err("not valid YAML")),
            (
                "{\"kind\": \"Service\", \"metadata\": {\"name\": \"é\"}} é",
                Err("not valid YAML"),
            ),
        ] {
            let got = parse(text);
            match (&got, want) {
                (Ok(objs), Ok(n)) => assert_eq!(objs.len(), n, "{text}"),
                (Err(e), Err(part)) => {
                    let e = e.to_string();
                    assert!(e.contains(part), "{text}: {e}");
                }
                _ => panic!("{text}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_cluster_sized_manifest_parses_and_alias_bombs_do_not() {
        let docs: Vec<String> = (0..3000)
            .map(|i| {
                format!(
                    "{{\"apiVersion\": \"v1\", \"kind\": \"Service\", \"metadata\": {{\"namespace\": \"a\", \"name\": \"s{i}\"}}, \"spec\": {{\"clusterIP\": \"10.96.{}.{}\", \"ports\": [{{\"port\": 80}}]}}}}",
                    i / 250,
                    i % 250 + 1
                )
            })
            .collect();
        assert_eq!(parse(&docs.join("\n---\n")).unwrap().len(), 3000);

        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = (b'a' + i - 1) as char;
            let c = (b'a' + i) as char;
            bomb.push_str(&format!(
                "{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
            ));
        }
        bomb.push_str("kind: Service\n");
        assert!(matches!(parse(&bomb), Err(ManifestError::Syntax(_))));
    }

    #[test]
    fn errors_say_where() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: eighty}]}\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("document 2 (from line 5)"), "{err}");
        assert!(err.contains("Service \"b\""), "{err}");

        let err = parse("kind: Service\nmetadata: {name: [unclosed\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid YAML"), "{err}");
        assert!(
            err.contains("line"),
            "syntax errors carry a position: {err}"
        );

        // Documents are converted as they are parsed: an object's error in document 1 still
        // gives way to a syntax error further on, and the third document's line is its own.
        let text = "kind: Service\nmetadata: {name: a}\nspec: {ports: [{port: eighty}]}\n---\nkind: [unclosed\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("not valid YAML"), "{err}");
        let text = "kind: ServiceList\nitems: []\n---\n# two\nkind: Pod\nmetadata: {name: p}\n---\nkind: Node\nmetadata: {name: [n]}\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("document 3 (from line 8)"), "{err}");

        // Empty documents (which the parser skips) do not shift the count or the line; nor
        // does content on a marker's line.
        let text = "kind: Service\nmetadata: {name: a}\n---\n---\n# empty\n---\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: eighty}]}\n--- {kind: Service, metadata: {name: c}, spec: {ports: [{port: x}]}}\n";
        assert_eq!(document_lines(text), [1, 7, 10]);
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("document 2 (from line 7)"), "{err}");
        let text = "kind: Service\nmetadata: {name: a}\n---\nkind: PodList\nitems: {a: 1}\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.contains("document 2 (from line 4): PodList.items is not a list"),
            "{err}"
        );
        // Nor do documents that are only a null, which the parser skips too.
        let text = "kind: Service\nmetadata: {name: a}\n--- ~\n---\nnull # none\n---\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: eighty}]}\n";
        assert_eq!(document_lines(text), [1, 7]);
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("document 2 (from line 7)"), "{err}");
        let text = "kind: Service\nmetadata: {name: a}\n--- {kind: Service, metadata: {name: c}, spec: {ports: [{port: x}]}}\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(err.contains("document 2 (from line 3)"), "{err}");
    }
}
