//! Per-pod policy: which metadata paths a namespace / service account may read, beyond (never
//! instead of) the concealment rules.
//!
//! ```yaml
//! default:                 # every pod without a more specific rule
//!   deny: ["/computeMetadata/v1/instance/service-accounts/*/token"]
//! rules:
//!   - namespace: ci
//!     serviceAccount: deployer       # optional: without it, every pod of the namespace
//!     deny: []
//!     reveal: ["/latest/meta-data/iam/security-credentials/**"]   # AWS concealed paths
//!   - namespace: batch
//!     allow: ["/computeMetadata/v1/project/**"]   # only these (plus nothing else)
//! ```
//!
//! The most specific rule applies alone (namespace + service account, then namespace, then
//! `default`). A path is allowed when it matches `allow` (when given), matches no `deny`, and,
//! if the flavour conceals it, matches `reveal`. Globs work on normalised path segments: `*`
//! within one segment, `**` any number of segments.

use std::path::{Path, PathBuf};
#[cfg(not(fuzzing))]
use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use serde::Deserialize;

use super::rules::Class;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub service_account: Option<String>,
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    #[serde(default)]
    pub deny: Vec<String>,
    #[serde(default)]
    pub reveal: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub default: Rule,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("rule {index}: {reason}")]
    Rule { index: usize, reason: String },
}

/// A compiled glob over path segments.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob(Vec<String>);

impl Glob {
    fn new(pattern: &str) -> Result<Self, String> {
        if !pattern.starts_with('/') {
            return Err(format!("glob {pattern:?} must start with '/'"));
        }
        Ok(Self(
            pattern
                .split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }

    /// Matches in O(pattern × path) time whatever the pattern (no backtracking blow-up).
    fn matches(&self, segments: &[String]) -> bool {
        let (p, s) = (&self.0, segments);
        // ok[j]: the pattern's first i parts match the path's first j segments.
        let mut ok = vec![false; s.len() + 1];
        ok[0] = true;
        for part in p {
            let mut next = vec![false; s.len() + 1];
            if part == "**" {
                let mut any = false;
                for j in 0..=s.len() {
                    any |= ok[j];
                    next[j] = any;
                }
            } else {
                for j in 1..=s.len() {
                    next[j] = ok[j - 1] && wildcard(part.as_bytes(), s[j - 1].as_bytes());
                }
            }
            ok = next;
        }
        ok[s.len()]
    }
}

/// `*` matches any run of bytes within one segment (the classic two-pointer match, linear
/// apart from the restarts after a `*`).
fn wildcard(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Compiled {
    namespace: Option<String>,
    service_account: Option<String>,
    allow: Option<Vec<Glob>>,
    deny: Vec<Glob>,
    reveal: Vec<Glob>,
}

fn compile(rule: &Rule) -> Result<Compiled, String> {
    let globs = |v: &[String]| {
        v.iter()
            .map(|g| Glob::new(g))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Compiled {
        namespace: rule.namespace.clone(),
        service_account: rule.service_account.clone(),
        allow: rule.allow.as_deref().map(globs).transpose()?,
        deny: globs(&rule.deny)?,
        reveal: globs(&rule.reveal)?,
    })
}

/// Why the policy refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Not in the rule's `allow` list, or in its `deny` list.
    Denied,
    /// A concealed path the rule does not reveal.
    Concealed,
}

/// A loaded policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    default: Compiled,
    rules: Vec<Compiled>,
}

impl Default for Policy {
    /// No file: everything the rules let through is allowed, nothing concealed is revealed.
    fn default() -> Self {
        Self {
            default: compile(&Rule::default()).unwrap_or_else(|_| unreachable!()),
            rules: Vec::new(),
        }
    }
}

impl Policy {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = if text.trim().is_empty() {
            PolicyFile::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?
        };
        if file.default.namespace.is_some() || file.default.service_account.is_some() {
            return Err(PolicyError::Syntax(
                "`default` applies to every pod: it takes no namespace or serviceAccount".into(),
            ));
        }
        let default = compile(&file.default).map_err(|reason| PolicyError::Rule {
            index: 0,
            reason: format!("default: {reason}"),
        })?;
        let mut rules = Vec::new();
        for (i, r) in file.rules.iter().enumerate() {
            if r.namespace.as_deref().is_none_or(str::is_empty) {
                return Err(PolicyError::Rule {
                    index: i + 1,
                    reason: "a rule needs a namespace".into(),
                });
            }
            rules.push(compile(r).map_err(|reason| PolicyError::Rule {
                index: i + 1,
                reason,
            })?);
        }
        Ok(Self { default, rules })
    }

    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    fn rule_for(&self, namespace: &str, service_account: &str) -> &Compiled {
        let ns = |r: &&Compiled| r.namespace.as_deref() == Some(namespace);
        self.rules
            .iter()
            .filter(ns)
            .find(|r| r.service_account.as_deref() == Some(service_account))
            .or_else(|| {
                self.rules
                    .iter()
                    .filter(ns)
                    .find(|r| r.service_account.is_none())
            })
            .unwrap_or(&self.default)
    }

    /// Decides for a pod (`None`: no identity known, the `default` rule applies).
    pub fn decide(
        &self,
        who: Option<(&str, &str)>,
        segments: &[String],
        class: Class,
    ) -> Result<(), Denial> {
        let rule = match who {
            Some((ns, sa)) => self.rule_for(ns, sa),
            None => &self.default,
        };
        if class == Class::Concealed && !rule.reveal.iter().any(|g| g.matches(segments)) {
            return Err(Denial::Concealed);
        }
        if let Some(allow) = &rule.allow
            && !allow.iter().any(|g| g.matches(segments))
        {
            return Err(Denial::Denied);
        }
        if rule.deny.iter().any(|g| g.matches(segments)) {
            return Err(Denial::Denied);
        }
        Ok(())
    }
}

#[cfg(not(fuzzing))]
pub use store::PolicyStore;

#[cfg(not(fuzzing))]
mod store {
    use super::*;

    /// The current policy, reloaded when its file changes (a file that does not load keeps the
    /// last good policy, with an error in the log and a metric).
    #[derive(Debug, Clone)]
    pub struct PolicyStore {
        current: Arc<RwLock<Arc<Policy>>>,
    }

    impl Default for PolicyStore {
        fn default() -> Self {
            Self::new(Policy::default())
        }
    }

    impl PolicyStore {
        pub fn new(policy: Policy) -> Self {
            Self {
                current: Arc::new(RwLock::new(Arc::new(policy))),
            }
        }

        pub fn get(&self) -> Arc<Policy> {
            self.current
                .read()
                .map(|p| p.clone())
                .unwrap_or_else(|e| e.into_inner().clone())
        }

        fn set(&self, p: Policy) {
            match self.current.write() {
                Ok(mut g) => *g = Arc::new(p),
                Err(e) => *e.into_inner() = Arc::new(p),
            }
        }

        /// Watches `path` (polling its modification time; ConfigMap updates replace a symlink)
        /// and reloads it. `on_error` is called for each file that fails to load.
        pub async fn watch(self, path: PathBuf, every: Duration, on_error: impl Fn(&PolicyError)) {
            let stamp = |p: &Path| -> Option<(SystemTime, u64)> {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            };
            let mut last = stamp(&path);
            loop {
                tokio::time::sleep(every).await;
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                last = now;
                match Policy::load(&path) {
                    Ok(p) => {
                        tracing::info!(path = %path.display(), "metadata policy reloaded");
                        self.set(p);
                    }
                    Err(e) => {
                        tracing::error!(path = %path.display(), "metadata policy not reloaded, the last good one stays: {e}");
                        on_error(&e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        p.split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn globs() {
        let g = |p: &str, s: &str| Glob::new(p).unwrap().matches(&segs(s));
        assert!(g("/**", "/"));
        assert!(g("/**", "/a/b/c"));
        assert!(g("/a/*/c", "/a/b/c"));
        assert!(!g("/a/*/c", "/a/b/x/c"));
        assert!(g("/a/**/c", "/a/c"));
        assert!(g("/a/**/c", "/a/b/x/c"));
        assert!(g(
            "/sa/*-compute@*/token",
            "/sa/123-compute@developer/token"
        ));
        assert!(!g("/sa/*-compute@*/token", "/sa/default/token"));
        assert!(!g("/a", "/a/b"));
        assert!(g("/a/**", "/a"));
        assert!(Glob::new("a").is_err());
    }

    const FILE: &str = r#"
default:
  deny: ["/computeMetadata/v1/instance/service-accounts/*/token"]
rules:
  - namespace: ci
    serviceAccount: deployer
    reveal: ["/latest/meta-data/iam/security-credentials/**"]
  - namespace: ci
    deny: ["/computeMetadata/v1/project/**"]
  - namespace: batch
    allow: ["/computeMetadata/v1/project/**"]
"#;

    #[test]
    fn the_most_specific_rule_decides() {
        let p = Policy::parse(FILE).unwrap();
        let token = segs("/computeMetadata/v1/instance/service-accounts/default/token");
        let project = segs("/computeMetadata/v1/project/project-id");
        let creds = segs("/latest/meta-data/iam/security-credentials/role");
        let o = Class::Ordinary;
        let c = Class::Concealed;
        // default: the node's token is denied, the rest allowed, nothing revealed.
        assert_eq!(
            p.decide(Some(("web", "default")), &token, o),
            Err(Denial::Denied)
        );
        assert_eq!(p.decide(Some(("web", "default")), &project, o), Ok(()));
        assert_eq!(
            p.decide(Some(("web", "default")), &creds, c),
            Err(Denial::Concealed)
        );
        assert_eq!(p.decide(None, &token, o), Err(Denial::Denied));
        // ci/deployer: its own rule (token allowed, credentials revealed).
        assert_eq!(p.decide(Some(("ci", "deployer")), &token, o), Ok(()));
        assert_eq!(p.decide(Some(("ci", "deployer")), &creds, c), Ok(()));
        // the rest of ci: the namespace rule.
        assert_eq!(
            p.decide(Some(("ci", "other")), &project, o),
            Err(Denial::Denied)
        );
        assert_eq!(p.decide(Some(("ci", "other")), &token, o), Ok(()));
        // batch: only what `allow` lists.
        assert_eq!(p.decide(Some(("batch", "x")), &project, o), Ok(()));
        assert_eq!(
            p.decide(Some(("batch", "x")), &token, o),
            Err(Denial::Denied)
        );
    }

    #[test]
    fn no_file_allows_what_the_rules_allow_and_reveals_nothing() {
        let p = Policy::default();
        assert_eq!(p.decide(None, &segs("/a"), Class::Ordinary), Ok(()));
        assert_eq!(
            p.decide(None, &segs("/latest/user-data"), Class::Concealed),
            Err(Denial::Concealed)
        );
        assert_eq!(Policy::parse("").unwrap(), p);
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        for (text, want) in [
            (
                "rules: [{serviceAccount: x}]",
                "rule 1: a rule needs a namespace",
            ),
            ("default: {namespace: x}", "takes no namespace"),
            (
                "rules: [{namespace: a, deny: [\"x\"]}]",
                "must start with '/'",
            ),
            ("rules: [{namespace: a, denny: []}]", "denny"),
            ("rules: [", ""),
        ] {
            let e = Policy::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
