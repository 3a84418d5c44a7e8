//! etcd's users and roles (the Auth service): `/eden/auth/users/NAME` holds a [`User`] (its
//! roles), `/eden/auth/roles/NAME` a [`Role`] (its key-range permissions). A client certificate
//! naming `user:NAME` is that user; the role `root` is every right, as in etcd. Admins write them
//! (`eden user|role`, `etcdctl user|role`).

use serde::{Deserialize, Serialize};

pub const AUTH: &str = "/eden/auth/";
pub const USERS: &str = "/eden/auth/users/";
pub const ROLES: &str = "/eden/auth/roles/";
/// The role that is every right.
pub const ROOT_ROLE: &str = "root";

pub fn user(name: &str) -> String {
    format!("{USERS}{name}")
}
pub fn role(name: &str) -> String {
    format!("{ROLES}{name}")
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct User {
    #[serde(default)]
    pub roles: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Role {
    #[serde(default)]
    pub perms: Vec<Perm>,
}

/// One permission: etcd's `Permission` (type READ 0, WRITE 1, READWRITE 2; a key, or a range
/// `[key, range_end)` where `"\0"` is "to the end").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Perm {
    pub kind: i32,
    pub key: Vec<u8>,
    #[serde(default)]
    pub range_end: Vec<u8>,
}

impl Perm {
    /// Whether it grants this kind of access.
    pub fn grants(&self, write: bool) -> bool {
        match self.kind {
            0 => !write,
            1 => write,
            2 => true,
            _ => false,
        }
    }

    /// Whether every key of the request `[key, end)` (etcd's encoding) lies in this permission.
    pub fn covers(&self, key: &[u8], end: &[u8]) -> bool {
        let single_req = end.is_empty() || is_key_plus_zero(key, end);
        if self.range_end.is_empty() {
            return single_req && key == self.key.as_slice();
        }
        let to_end = self.range_end == [0];
        let within =
            |k: &[u8]| k >= self.key.as_slice() && (to_end || k < self.range_end.as_slice());
        if single_req {
            return within(key);
        }
        if end == [0] {
            return to_end && key >= self.key.as_slice();
        }
        key >= self.key.as_slice() && (to_end || end <= self.range_end.as_slice())
    }
}

/// Whether the permissions together (as etcd merges them) cover every key of `[key, end)` (etcd's
/// encoding), for the kind of access asked.
pub fn covered(perms: &[Perm], write: bool, key: &[u8], end: &[u8]) -> bool {
    let granted: Vec<&Perm> = perms.iter().filter(|p| p.grants(write)).collect();
    if granted.iter().any(|p| p.covers(key, end)) {
        return true;
    }
    if end.is_empty() || is_key_plus_zero(key, end) {
        return false;
    }
    // Intervals [start, end) (None: no end), walked from `key` for as long as they touch.
    let intervals: Vec<(Vec<u8>, Option<Vec<u8>>)> = granted
        .iter()
        .map(|p| match p.range_end.as_slice() {
            [] => {
                let mut e = p.key.clone();
                e.push(0);
                (p.key.clone(), Some(e))
            }
            [0] => (p.key.clone(), None),
            e => (p.key.clone(), Some(e.to_vec())),
        })
        .collect();
    let mut at = key.to_vec();
    loop {
        // The interval holding `at` that reaches furthest.
        let mut best: Option<Option<Vec<u8>>> = None;
        for (s, e) in &intervals {
            let holds = s.as_slice() <= at.as_slice() && e.as_ref().is_none_or(|e| at < *e);
            if holds {
                best = match (best, e) {
                    (_, None) => Some(None),
                    (Some(None), _) => Some(None),
                    (Some(Some(b)), Some(e)) => Some(Some(if *e > b { e.clone() } else { b })),
                    (None, Some(e)) => Some(Some(e.clone())),
                };
            }
        }
        match best {
            None => return false,
            Some(None) => return true,
            Some(Some(reach)) => {
                if end != [0] && reach.as_slice() >= end {
                    return true;
                }
                at = reach;
            }
        }
    }
}

fn is_key_plus_zero(key: &[u8], end: &[u8]) -> bool {
    end.len() == key.len() + 1 && end.starts_with(key) && end[key.len()] == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_covers_a_request_only_whole() {
        let p = Perm {
            kind: 2,
            key: b"/app/".to_vec(),
            range_end: b"/app0".to_vec(),
        };
        assert!(p.covers(b"/app/x", b""));
        assert!(p.covers(b"/app/", b"/app0"));
        assert!(p.covers(b"/app/a", b"/app/b"));
        assert!(!p.covers(b"/app/", b"/app1"));
        assert!(!p.covers(b"/app/", b"\0"));
        assert!(!p.covers(b"/ap", b""));
        let one = Perm {
            kind: 0,
            key: b"k".to_vec(),
            range_end: vec![],
        };
        assert!(one.covers(b"k", b"") && one.covers(b"k", b"k\0"));
        assert!(!one.covers(b"k", b"l") && !one.grants(true) && one.grants(false));
    }

    #[test]
    fn permissions_together_cover_what_none_covers_alone() {
        let p = |k: &[u8], e: &[u8]| Perm {
            kind: 2,
            key: k.to_vec(),
            range_end: e.to_vec(),
        };
        let two = [p(b"a", b"c"), p(b"c", b"e")];
        assert!(covered(&two, true, b"a", b"e"));
        assert!(covered(&two, false, b"b", b"d"));
        assert!(!covered(&two, false, b"a", b"f"));
        assert!(!covered(&[p(b"a", b"c"), p(b"d", b"e")], false, b"a", b"e"));
        assert!(covered(
            &[p(b"a", b"c"), p(b"b", b"\0")],
            false,
            b"a",
            b"\0"
        ));
        assert!(!covered(&two, false, b"a", b"\0"));
        // A single key joins a range that ends at it.
        assert!(covered(&[p(b"a", b"c"), p(b"c", b"")], false, b"a", b"c\0"));
    }
}
