//! Tag globs: `*` matches within one `/`-separated part, `**` across parts, `?` one character.
//! `node/joined/*`, `alert/firing/**`, `task/finished/*/web?`.

/// True when `text` matches `pattern`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // memo[i][j]: pattern from i matches text from j
    let mut memo = vec![vec![None; t.len() + 1]; p.len() + 1];
    fn go(p: &[char], t: &[char], i: usize, j: usize, memo: &mut Vec<Vec<Option<bool>>>) -> bool {
        if let Some(v) = memo[i][j] {
            return v;
        }
        let v = if i == p.len() {
            j == t.len()
        } else if p[i] == '*' {
            let any = i + 1 < p.len() && p[i + 1] == '*';
            let next = if any { i + 2 } else { i + 1 };
            // Zero characters, or one more (a single * does not cross '/').
            go(p, t, next, j, memo)
                || (j < t.len() && (any || t[j] != '/') && go(p, t, i, j + 1, memo))
        } else if j < t.len() && (p[i] == '?' && t[j] != '/' || p[i] == t[j]) {
            go(p, t, i + 1, j + 1, memo)
        } else {
            false
        };
        memo[i][j] = Some(v);
        v
    }
    go(&p, &t, 0, 0, &mut memo)
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs() {
        assert!(matches("node/joined/*", "node/joined/web1"));
        assert!(!matches("node/joined/*", "node/joined/web1/x"));
        assert!(matches("node/**", "node/joined/web1"));
        assert!(matches("task/finished/*/web?", "task/finished/T1/web1"));
        assert!(matches("*", "hook"));
        assert!(!matches("*", "hook/x"));
        assert!(matches("**", "a/b/c"));
        assert!(matches("alert/firing/High*", "alert/firing/HighLoad"));
        assert!(!matches("alert/firing/High*", "alert/resolved/HighLoad"));
    }
}
