//! Label selectors in Kubernetes' syntax: requirements joined by commas, all of which must hold.
//!
//! ```text
//! role=master        role==master        the label is set to the value
//! env!=prod                              not set to the value (also: not set at all)
//! tier in (a,b)                          set to one of the values
//! tier notin (a,b)                       not set to any of them (also: not set at all)
//! draining                               the label is set
//! !draining                              the label is not set
//! ```
//!
//! An empty selector matches every node.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad selector {selector:?}: {reason}")]
pub struct SelectorError {
    pub selector: String,
    pub reason: String,
}

fn check_label_part(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("empty {what}"));
    }
    if s.len() > 253 {
        return Err(format!("{what} {s:?} is longer than 253 characters"));
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/')))
    {
        Some(c) => Err(format!(
            "{what} {s:?} has {c:?}; use letters, digits, '.', '-', '_' and '/'"
        )),
        None => Ok(()),
    }
}

/// Checks a label key (for `eden node label` as well).
pub fn check_label_key(k: &str) -> Result<(), String> {
    check_label_part("label key", k)
}

/// Checks a label value (for `eden node label` as well); values may be empty.
pub fn check_label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    check_label_part("label value", v)
}

/// Splits on commas outside parentheses.
fn split_terms(s: &str) -> Result<Vec<&str>, String> {
    let (mut depth, mut start, mut out) = (0i32, 0usize, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced '('".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

fn parse_set(s: &str) -> Result<BTreeSet<String>, String> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("expected a list in parentheses, got {:?}", s.trim()))?;
    let mut set = BTreeSet::new();
    for v in inner.split(',').map(str::trim) {
        check_label_value(v)?;
        set.insert(v.to_string());
    }
    Ok(set)
}

fn parse_term(t: &str) -> Result<Requirement, String> {
    let t = t.trim();
    if t.is_empty() {
        return Err("empty requirement (a stray comma?)".into());
    }
    if let Some(k) = t.strip_prefix('!') {
        let k = k.trim();
        check_label_key(k)?;
        return Ok(Requirement::NotExists(k.into()));
    }
    // set-based: KEY in (...), KEY notin (...)
    let words: Vec<&str> = t.splitn(2, char::is_whitespace).collect();
    if words.len() == 2 {
        let rest = words[1].trim_start();
        for (op, notin) in [("notin", true), ("in", false)] {
            if let Some(list) = rest.strip_prefix(op) {
                if list.trim_start().starts_with('(') {
                    check_label_key(words[0])?;
                    let set = parse_set(list)?;
                    let k = words[0].to_string();
                    return Ok(if notin {
                        Requirement::NotIn(k, set)
                    } else {
                        Requirement::In(k, set)
                    });
                }
            }
        }
    }
    for (op, neg) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = t.split_once(op) {
            let (k, v) = (k.trim(), v.trim());
            check_label_key(k)?;
            check_label_value(v)?;
            return Ok(if neg {
                Requirement::NotEq(k.into(), v.into())
            } else {
                Requirement::Eq(k.into(), v.into())
            });
        }
    }
    check_label_key(t)
        .map_err(|e| format!("{e} (expected KEY=VALUE, KEY!=VALUE, KEY in (A,B), KEY or !KEY)"))?;
    Ok(Requirement::Exists(t.into()))
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let err = |reason: String| SelectorError {
            selector: s.to_string(),
            reason,
        };
        if s.trim().is_empty() {
            return Ok(Selector::default());
        }
        let requirements = split_terms(s)
            .map_err(err)?
            .into_iter()
            .map(parse_term)
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        Ok(Selector { requirements })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            Requirement::Eq(k, v) => labels.get(k) == Some(v),
            Requirement::NotEq(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, set) => labels.get(k).is_some_and(|v| set.contains(v)),
            Requirement::NotIn(k, set) => !labels.get(k).is_some_and(|v| set.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Eq(k, v) => format!("{k}={v}"),
                Requirement::NotEq(k, v) => format!("{k}!={v}"),
                Requirement::In(k, s) => format!("{k} in ({})", join(s)),
                Requirement::NotIn(k, s) => format!("{k} notin ({})", join(s)),
                Requirement::Exists(k) => k.clone(),
                Requirement::NotExists(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kubernetes_syntax_parses_and_matches() {
        let s = Selector::parse("role=master, env!=prod,tier in (a, b),!draining").unwrap();
        assert_eq!(s.requirements.len(), 4);
        assert_eq!(
            s.to_string(),
            "role=master,env!=prod,tier in (a,b),!draining"
        );
        let m = labels(&[("role", "master"), ("tier", "a")]);
        assert!(s.matches(&m), "env unset counts as != prod");
        assert!(!s.matches(&labels(&[("role", "master"), ("tier", "c")])));
        assert!(!s.matches(&labels(&[
            ("role", "master"),
            ("tier", "a"),
            ("draining", "")
        ])));
        assert!(!s.matches(&labels(&[
            ("role", "master"),
            ("tier", "a"),
            ("env", "prod")
        ])));
        let s = Selector::parse("gpu,zone notin (x),role==db").unwrap();
        assert!(s.matches(&labels(&[("gpu", "1"), ("role", "db")])));
        assert!(!s.matches(&labels(&[("gpu", "1"), ("role", "db"), ("zone", "x")])));
        assert!(Selector::parse("").unwrap().matches(&labels(&[])));
    }

    #[test]
    fn bad_selectors_say_why() {
        for (bad, why) in [
            ("role=master,", "empty requirement"),
            ("tier in (a,b", "unbalanced"),
            ("tier in a,b", "has ' '"),
            ("ro le=x", "has ' '"),
            ("role=mas ter", "has ' '"),
            ("=x", "empty label key"),
        ] {
            let e = Selector::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
