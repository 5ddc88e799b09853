//! The request target, parsed and normalised exactly once: what the rules check is what is
//! forwarded.
//!
//! - origin form (`/path?query`) and absolute form (`http://host/path?query`); anything else
//!   (`*`, authority form, opaque `scheme:rest`, fragments, user info) cannot be parsed safely;
//! - the path is percent-decoded once; escapes that decode to `/`, `\`, `%`, `?`, `#` or control
//!   characters, raw backslashes and control characters, and invalid UTF-8 are refused (they
//!   would be read differently by the next parser);
//! - empty segments (`//`) and `.` are dropped, `..` removes the previous segment (never above
//!   the root), a trailing `/` is kept;
//! - the query is split on `&` only, each key and value percent-decoded (`+` is a space, as
//!   HTML forms and Go's `ParseQuery` have it), empty parts dropped; the forwarded query is
//!   re-encoded from the decoded pairs.

use std::fmt::Write as _;

/// Why a target cannot be parsed safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub &'static str);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Decoded segments, without empty ones.
    pub segments: Vec<String>,
    /// The original path ended with `/` (and is not the root).
    pub trailing_slash: bool,
    /// Decoded query pairs in order (`None` value: a key without `=`).
    pub query: Vec<(String, Option<String>)>,
    /// A `?` was present.
    pub has_query: bool,
}

/// The most bytes a target may have.
pub const MAX_TARGET: usize = 8192;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `s`; `plus_is_space` for query components.
fn decode(s: &str, plus_is_space: bool) -> Result<Vec<u8>, TargetError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(TargetError("invalid percent-encoding"));
                };
                out.push(h << 4 | l);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn is_control(c: u8) -> bool {
    c < 0x20 || c == 0x7f
}

fn decode_segment(raw: &str) -> Result<String, TargetError> {
    if raw
        .bytes()
        .any(|c| is_control(c) || c == b'\\' || c == b' ')
    {
        return Err(TargetError(
            "control character, space or backslash in the path",
        ));
    }
    let bytes = decode(raw, false)?;
    if bytes
        .iter()
        .any(|&c| is_control(c) || matches!(c, b'/' | b'\\' | b'%' | b'?' | b'#'))
    {
        return Err(TargetError(
            "an escape decodes to a separator, '%' or a control character",
        ));
    }
    String::from_utf8(bytes).map_err(|_| TargetError("the path is not UTF-8"))
}

fn decode_component(raw: &str) -> Result<String, TargetError> {
    let bytes = decode(raw, true)?;
    if bytes.iter().any(|&c| is_control(c)) {
        return Err(TargetError("control character in the query"));
    }
    String::from_utf8(bytes).map_err(|_| TargetError("the query is not UTF-8"))
}

/// Parses and normalises a request target.
pub fn parse(target: &str) -> Result<Target, TargetError> {
    if target.len() > MAX_TARGET {
        return Err(TargetError("request target too long"));
    }
    if target.contains('#') {
        return Err(TargetError("fragment in the request target"));
    }
    let rest = if target.is_empty() {
        "/"
    } else if target.starts_with('/') {
        target
    } else if target
        .as_bytes()
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"http://"))
    {
        let after = &target[7..];
        let end = after.find(['/', '?']).unwrap_or(after.len());
        let authority = &after[..end];
        if authority.is_empty() || authority.contains('@') {
            return Err(TargetError("absolute target without a plain host"));
        }
        match &after[end..] {
            "" => "/",
            r if r.starts_with('?') => {
                // `http://host?q`: path "/" with the query.
                return parse(&format!("/{r}"));
            }
            r => r,
        }
    } else {
        return Err(TargetError(
            "not an origin-form or http absolute-form target",
        ));
    };
    let (raw_path, raw_query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let mut segments: Vec<String> = Vec::new();
    let parts: Vec<&str> = raw_path.split('/').collect();
    for part in &parts {
        if part.is_empty() {
            continue;
        }
        let seg = decode_segment(part)?;
        match seg.as_str() {
            "." => {}
            ".." => {
                segments.pop();
            }
            _ => segments.push(seg),
        }
    }
    let last = parts.last().copied().unwrap_or("");
    let trailing_slash = !segments.is_empty() && raw_path.len() > 1 && last.is_empty();
    let mut query = Vec::new();
    if let Some(q) = raw_query {
        if q.bytes().any(|c| is_control(c) || c == b' ') {
            return Err(TargetError("control character or space in the query"));
        }
        for part in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (decode_component(k)?, Some(decode_component(v)?)),
                None => (decode_component(part)?, None),
            };
            query.push((k, v));
        }
    }
    Ok(Target {
        segments,
        trailing_slash,
        query,
        has_query: raw_query.is_some(),
    })
}

/// Characters kept as they are in a forwarded path segment (RFC 3986 pchar minus `%`).
fn path_safe(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// Characters kept as they are in a forwarded query key or value.
fn query_safe(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b','
                | b':'
                | b'@'
                | b'/'
        )
}

fn encode(out: &mut String, s: &str, safe: fn(u8) -> bool) {
    for &c in s.as_bytes() {
        if safe(c) {
            out.push(c as char);
        } else {
            let _ = write!(out, "%{c:02X}");
        }
    }
}

impl Target {
    /// The normalised path, canonically encoded.
    pub fn path(&self) -> String {
        let mut out = String::with_capacity(64);
        for seg in &self.segments {
            out.push('/');
            encode(&mut out, seg, path_safe);
        }
        if out.is_empty() || self.trailing_slash {
            out.push('/');
        }
        out
    }

    /// The normalised query (without `?`), canonically encoded; `None` without a `?`.
    pub fn query_string(&self) -> Option<String> {
        if !self.has_query {
            return None;
        }
        let mut out = String::new();
        for (i, (k, v)) in self.query.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            encode(&mut out, k, query_safe);
            if let Some(v) = v {
                out.push('=');
                encode(&mut out, v, query_safe);
            }
        }
        Some(out)
    }

    /// Path and query as forwarded upstream.
    pub fn path_and_query(&self) -> String {
        match self.query_string() {
            Some(q) => format!("{}?{q}", self.path()),
            None => self.path(),
        }
    }

    pub fn has_key(&self, key: &str) -> bool {
        self.query.iter().any(|(k, _)| k == key)
    }

    /// The segments, each lower-cased (for names compared without regard to case).
    pub fn lower(&self) -> Vec<String> {
        self.segments
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(t: &str) -> String {
        parse(t)
            .map(|t| t.path_and_query())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn normalises_paths_once() {
        for (input, want) in [
            ("", "/"),
            ("/", "/"),
            ("/computeMetadata/v1/", "/computeMetadata/v1/"),
            ("/computeMetadata/v1", "/computeMetadata/v1"),
            (
                "//computeMetadata///v1//instance/",
                "/computeMetadata/v1/instance/",
            ),
            (
                "/computeMetadata/v1/instance/attributes/../attributes/kube-env",
                "/computeMetadata/v1/instance/attributes/kube-env",
            ),
            ("/a/./b/.", "/a/b"),
            ("/../../a", "/a"),
            ("/a/b/..", "/a"),
            ("/a/b/../", "/a/"),
            ("/%61ttributes/%6Bube-env", "/attributes/kube-env"),
            ("/a/%2e%2e/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            (
                "http://metadata.google.internal/computeMetadata/v1/",
                "/computeMetadata/v1/",
            ),
            ("HTTP://169.254.169.254", "/"),
            ("http://h?recursive=true", "/?recursive=true"),
            ("/x?a=1&&b=2", "/x?a=1&b=2"),
            ("/x?%72ecursive=true", "/x?recursive=true"),
            ("/x?k", "/x?k"),
            ("/x?", "/x?"),
            ("/x?a=b+c", "/x?a=b%20c"),
            (
                "/sa/12345-compute@developer.gserviceaccount.com/token",
                "/sa/12345-compute@developer.gserviceaccount.com/token",
            ),
        ] {
            assert_eq!(norm(input), want, "{input}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_parsed_safely() {
        for input in [
            "opaquescheme:computeMetadata/v1/instance/attributes/kube-env",
            "*",
            "169.254.169.254:80",
            "https://x/",
            "http://user@host/",
            "http:///x",
            "/a#frag",
            "/a%2Fb",
            "/a%5Cb",
            "/a\\b",
            "/a%00b",
            "/a%252e%252e/",
            "/a%3Fb",
            "/a%zz",
            "/a%4",
            "/a%ff",
            "/x?a=%0a",
            "/x?re%08cursive=true",
            "/a b",
            "ячейкая",
        ] {
            assert!(
                parse(input).is_err(),
                "{input} parsed as {:?}",
                parse(input)
            );
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for input in [
            "/a//b/../c/?x=1&y",
            "/%41/",
            "/computeMetadata/v1/instance/?recursive=true",
        ] {
            let once = parse(input).unwrap().path_and_query();
            assert_eq!(parse(&once).unwrap().path_and_query(), once);
        }
    }
}
