//! Key-range helpers shared by clients (etcd's conventions).

/// The range end that selects every key starting with `prefix`: the prefix with its last byte
/// incremented, trailing 0xff bytes dropped first; `"\0"` (every key) if nothing is left.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(&last) = end.last() {
        if last < 0xff {
            *end.last_mut().expect("not empty") += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}
