//! Key encoding in RocksDB.
//!
//! Every column family keys its records so that RocksDB's byte order is the order eden reads them in:
//!
//! ```text
//! cf "log"        index (u64 BE)                      -> bincode(openraft Entry)
//! cf "meta"       b"vote" | b"purged" | b"applied" | b"membership" | b"revision"
//!                 | b"compact" | b"members" | b"compacted_done"  -> bincode(value)
//! cf "kv"         enc(user key) ++ revision (u64 BE)  -> bincode(Record)   (one entry per version)
//! cf "rev"        revision (u64 BE) ++ sub (u32 BE)   -> user key          (the event log, by revision)
//! cf "lease"      lease id (u64 BE)                   -> bincode(LeaseRecord)
//! cf "lease_keys" lease id (u64 BE) ++ user key        -> empty            (keys attached to a lease)
//! ```
//!
//! `enc` escapes a user key so that it is prefix-free and keeps its order: each 0x00 byte becomes
//! 0x00 0xFF and the key ends with 0x00 0x00. So all versions of one key sit together, ordered by
//! revision, and no key's encoding is a prefix of another's (the same trick as toydb's keycode).

/// Column families, created when the database is opened.
pub const CF_LOG: &str = "log";
pub const CF_META: &str = "meta";
pub const CF_KV: &str = "kv";
pub const CF_REV: &str = "rev";
pub const CF_LEASE: &str = "lease";
pub const CF_LEASE_KEYS: &str = "lease_keys";
pub const ALL_CFS: [&str; 6] = [CF_LOG, CF_META, CF_KV, CF_REV, CF_LEASE, CF_LEASE_KEYS];
/// The column families that hold the state machine (what a snapshot carries).
pub const SM_CFS: [&str; 4] = [CF_KV, CF_REV, CF_LEASE, CF_LEASE_KEYS];

pub const META_VOTE: &[u8] = b"vote";
pub const META_PURGED: &[u8] = b"purged";
pub const META_APPLIED: &[u8] = b"applied";
pub const META_MEMBERSHIP: &[u8] = b"membership";
pub const META_REVISION: &[u8] = b"revision";
pub const META_COMPACT: &[u8] = b"compact";
pub const META_COMPACT_DONE: &[u8] = b"compacted_done";
pub const META_MEMBERS: &[u8] = b"members";
pub const META_CLUSTER: &[u8] = b"cluster";
/// Active alarms: a set of (member id, alarm type).
pub const META_ALARMS: &[u8] = b"alarms";
/// This member's own id (given by --initial-cluster, or by the cluster when it joined).
pub const META_SELF: &[u8] = b"self";
/// The state-machine metadata a snapshot carries along with [`SM_CFS`].
pub const SM_META_KEYS: [&[u8]; 4] = [META_REVISION, META_COMPACT, META_MEMBERS, META_ALARMS];

/// Escapes a user key (see the module docs).
pub fn enc_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 10);
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// The escaped user key at the head of a `kv` record key, its terminator included: the prefix the
/// kv family's bloom filters hold, so a lookup of one key's versions skips every table that has
/// none (a put of a new key otherwise read a block of every level). The first 0x00 0x00 is the
/// terminator (an escaped 0x00 is always followed by 0xFF), so the prefix of a prefix is itself,
/// as RocksDB asks of a prefix extractor. A slice without one is returned whole; see
/// [`kv_key_has_prefix`].
pub fn kv_key_prefix(raw: &[u8]) -> &[u8] {
    match raw.windows(2).position(|w| w == [0, 0]) {
        Some(i) => &raw[..i + 2],
        None => raw,
    }
}

/// Whether `raw` has a [`kv_key_prefix`] (RocksDB's "in domain"): every key eden writes to `kv`.
pub fn kv_key_has_prefix(raw: &[u8]) -> bool {
    raw.windows(2).any(|w| w == [0, 0])
}

/// A `kv` record key: the escaped user key and the revision.
pub fn kv_key(key: &[u8], rev: i64) -> Vec<u8> {
    let mut out = enc_key(key);
    out.extend_from_slice(&(rev as u64).to_be_bytes());
    out
}

/// Splits a `kv` record key into the user key and the revision. None if it is malformed.
pub fn dec_kv_key(raw: &[u8]) -> Option<(Vec<u8>, i64)> {
    if raw.len() < 10 {
        return None;
    }
    let (enc, rev) = raw.split_at(raw.len() - 8);
    let rev = u64::from_be_bytes(rev.try_into().ok()?) as i64;
    let mut key = Vec::with_capacity(enc.len());
    let mut i = 0;
    while i < enc.len() {
        let b = enc[i];
        if b == 0 {
            match enc.get(i + 1) {
                Some(0xff) => {
                    key.push(0);
                    i += 2;
                }
                Some(0) if i + 2 == enc.len() => return Some((key, rev)),
                _ => return None,
            }
        } else {
            key.push(b);
            i += 1;
        }
    }
    None
}

/// The length of the escaped-key part of a `kv` record key (everything but the revision).
pub fn kv_key_prefix_len(raw: &[u8]) -> usize {
    raw.len().saturating_sub(8)
}

/// A `rev` record key: revision and the op's position inside it.
pub fn rev_key(rev: i64, sub: u32) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..8].copy_from_slice(&(rev as u64).to_be_bytes());
    out[8..].copy_from_slice(&sub.to_be_bytes());
    out
}

pub fn dec_rev_key(raw: &[u8]) -> Option<(i64, u32)> {
    if raw.len() != 12 {
        return None;
    }
    let rev = u64::from_be_bytes(raw[..8].try_into().ok()?) as i64;
    let sub = u32::from_be_bytes(raw[8..].try_into().ok()?);
    Some((rev, sub))
}

pub fn lease_key(id: i64) -> [u8; 8] {
    (id as u64).to_be_bytes()
}

pub fn lease_keys_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&(id as u64).to_be_bytes());
    out.extend_from_slice(key);
    out
}

pub fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub fn dec_log_key(raw: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[..8]);
    u64::from_be_bytes(b)
}

/// A key range in etcd's convention: `[key, end)`; an empty end is the single key `key`; an end of
/// `"\0"` is every key `>= key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    /// None: unbounded above.
    pub end: Option<Vec<u8>>,
    pub single: bool,
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        if range_end.is_empty() {
            KeyRange {
                start: key.to_vec(),
                end: None,
                single: true,
            }
        } else if range_end == [0] {
            KeyRange {
                start: key.to_vec(),
                end: None,
                single: false,
            }
        } else {
            KeyRange {
                start: key.to_vec(),
                end: Some(range_end.to_vec()),
                single: false,
            }
        }
    }

    /// The range's end in etcd's encoding again (empty: one key; `"\0"`: no end).
    pub fn range_end(&self) -> Vec<u8> {
        match (&self.end, self.single) {
            (_, true) => Vec::new(),
            (None, false) => vec![0],
            (Some(e), false) => e.clone(),
        }
    }

    pub fn contains(&self, k: &[u8]) -> bool {
        if self.single {
            return k == self.start.as_slice();
        }
        k >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| k < e)
    }

    /// True when `[start, end)` cannot contain any key (etcd returns nothing for such a range).
    pub fn is_empty(&self) -> bool {
        !self.single
            && self
                .end
                .as_deref()
                .is_some_and(|e| e <= self.start.as_slice())
    }

    /// Whether two ranges share a key (used for the duplicate-key check in txns).
    pub fn overlaps(&self, other: &KeyRange) -> bool {
        if self.single && other.single {
            return self.start == other.start;
        }
        if self.single {
            return other.contains(&self.start);
        }
        if other.single {
            return self.contains(&other.start);
        }
        let a_before_b_end = other
            .end
            .as_deref()
            .is_none_or(|e| self.start.as_slice() < e);
        let b_before_a_end = self
            .end
            .as_deref()
            .is_none_or(|e| other.start.as_slice() < e);
        a_before_b_end && b_before_a_end
    }
}

/// The range end that selects every key with a prefix (shared with clients).
pub use eden_proto::keys::prefix_end;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_order_and_is_prefix_free() {
        let keys: Vec<&[u8]> = vec![
            b"", b"\0", b"\0\0", b"\0a", b"a", b"a\0", b"a\0\xff", b"ab", b"b", b"\xff",
        ];
        let mut encoded: Vec<Vec<u8>> = keys.iter().map(|k| kv_key(k, 5)).collect();
        let sorted = encoded.clone();
        encoded.sort();
        assert_eq!(encoded, sorted, "encoding must keep byte order");
        for k in &keys {
            for rev in [1i64, 2, 300, i64::MAX] {
                assert_eq!(dec_kv_key(&kv_key(k, rev)), Some((k.to_vec(), rev)));
            }
        }
        // all versions of "a" sort before any version of "a\0".
        assert!(kv_key(b"a", i64::MAX) < kv_key(b"a\0", 1));
    }

    /// The prefix of a kv record key is its escaped user key whatever bytes the key and the
    /// revision hold, and the prefix of a prefix is itself.
    #[test]
    fn a_kv_key_prefix_is_the_escaped_user_key() {
        let keys: Vec<&[u8]> = vec![b"", b"\0", b"\0\0", b"a\0", b"\0\xff\0", b"x\xff", b"ab"];
        for k in &keys {
            for rev in [0i64, 1, 256, 1 << 40, i64::MAX] {
                let raw = kv_key(k, rev);
                assert!(kv_key_has_prefix(&raw));
                let p = kv_key_prefix(&raw);
                assert_eq!(p, enc_key(k).as_slice(), "key {k:?} rev {rev}");
                assert_eq!(kv_key_prefix(p), p);
            }
        }
        assert!(!kv_key_has_prefix(b"a\0\xff"));
    }

    #[test]
    fn ranges_follow_etcd_conventions() {
        assert!(KeyRange::new(b"a", b"").contains(b"a"));
        assert!(!KeyRange::new(b"a", b"").contains(b"ab"));
        let all_from = KeyRange::new(b"b", b"\0");
        assert!(all_from.contains(b"zzz") && !all_from.contains(b"a"));
        let all = KeyRange::new(b"\0", b"\0");
        assert!(all.contains(b"\0") && all.contains(b"x"));
        assert_eq!(prefix_end(b"abc"), b"abd");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert!(KeyRange::new(b"b", b"a").is_empty());
        assert!(KeyRange::new(b"a", b"c").overlaps(&KeyRange::new(b"b", b"")));
        assert!(!KeyRange::new(b"a", b"c").overlaps(&KeyRange::new(b"c", b"d")));
    }
}
