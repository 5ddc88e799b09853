//! Properties of the target normalisation, the rules and the policy that must hold for any
//! input. The cargo-fuzz targets in `fuzz/` call these with generated inputs; a unit test runs
//! them over the fuzz corpus kept in the repository. They panic when a property fails.

use super::{
    policy::Policy,
    rules::{self, Class, Flavor},
    target,
};

/// `data`: a request target, optionally followed by `\n` and one `Name: value` header.
///
/// Parsing never panics; what parses normalises to a fixed point (parsing the forwarded form
/// gives the same form) without dot segments, empty segments or separators inside segments;
/// the rules' verdict on the forwarded form is their verdict on the original (what was checked
/// is what is forwarded); and nothing the GCE rules let through names kube-env or the identity.
pub fn normalize(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (target_text, header) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(t) = target::parse(target_text) else {
        return;
    };
    let forwarded = t.path_and_query();
    let again = match target::parse(&forwarded) {
        Ok(a) => a,
        Err(e) => panic!("the forwarded form {forwarded:?} does not parse: {e}"),
    };
    assert_eq!(
        again.path_and_query(),
        forwarded,
        "normalisation is a fixed point"
    );
    for s in &t.segments {
        assert!(!s.is_empty() && s != "." && s != "..", "{forwarded}");
        assert!(!s.contains(['/', '\\']), "{forwarded}");
    }
    let mut headers = http::HeaderMap::new();
    headers.insert("metadata-flavor", http::HeaderValue::from_static("Google"));
    if let Some((k, v)) = header.split_once(':')
        && let (Ok(k), Ok(v)) = (
            http::header::HeaderName::from_bytes(k.trim().as_bytes()),
            http::HeaderValue::from_str(v.trim()),
        )
    {
        headers.insert(k, v);
    }
    for flavor in [Flavor::Gce, Flavor::Aws] {
        let a = rules::check(flavor, &http::Method::GET, &headers, &t, false);
        let b = rules::check(flavor, &http::Method::GET, &headers, &again, false);
        assert_eq!(a, b, "{forwarded}");
        if flavor == Flavor::Gce && a.is_ok() {
            let lower: Vec<String> = t.lower();
            assert!(
                !lower.iter().any(|s| s == "kube-env"),
                "kube-env let through: {forwarded}"
            );
            let identity = lower.iter().position(|s| s == "identity");
            assert!(
                !identity.is_some_and(|i| i >= 2 && lower[i - 2] == "service-accounts"),
                "the identity let through: {forwarded}"
            );
        }
    }
}

/// `data`: policy text, optionally followed by `\n%%\n` and a path. Loading and deciding
/// never panic.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (policy_text, path) = text.split_once("\n%%\n").unwrap_or((text, "/a/b"));
    let Ok(p) = Policy::parse(policy_text) else {
        return;
    };
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    for who in [None, Some(("ci", "deployer")), Some(("default", "default"))] {
        let _ = p.decide(who, &segments, Class::Ordinary);
        let _ = p.decide(who, &segments, Class::Concealed);
    }
}

#[cfg(test)]
mod tests {
    /// Every input the fuzzers found interesting (`fuzz/corpus/`) still holds the properties.
    #[test]
    fn the_fuzz_corpus_holds_the_properties() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let mut seen = 0;
        for (dir, check) in [
            ("normalize", super::normalize as fn(&[u8])),
            ("policy", super::policy as fn(&[u8])),
        ] {
            let entries = std::fs::read_dir(root.join(dir))
                .unwrap_or_else(|e| panic!("{}: {e}", root.join(dir).display()));
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).unwrap_or_default();
                check(&data);
                seen += 1;
            }
        }
        assert!(
            seen >= 20,
            "the corpus is in the repository ({seen} inputs)"
        );
    }
}
