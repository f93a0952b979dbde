//! "Did you mean" suggestions for misspelt keys and variables.

/// Edit distance over chars, ASCII case-insensitive, where swapping two adjacent letters
/// counts as one edit (optimal string alignment). Swapped letters are the most common typo
/// (`domian`); plain Levenshtein counts them as two and misses short keys.
pub(crate) fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    // Rows i-2, i-1 and i of the dynamic programme.
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != cb);
            let mut d = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
            if i > 0 && j > 0 && a[i] == b[j - 1] && a[i - 1] == b[j] {
                d = d.min(prev2[j - 1] + 1);
            }
            cur[j + 1] = d;
        }
        std::mem::swap(&mut prev2, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `input`, if it is close enough to be a plausible typo.
pub(crate) fn closest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    // A third of the length catches transpositions and dropped letters in long names
    // without proposing unrelated short keys.
    let limit = (input.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (distance(input, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("", ""), 0);
        assert_eq!(distance("abc", ""), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("DOMAINS", "domains"), 0);
        assert_eq!(distance("domian", "domain"), 1);
        assert_eq!(distance("domian", "domains"), 2);
        assert_eq!(distance("ab", "ba"), 1);
    }

    #[test]
    fn closest_picks_nearest_and_rejects_far() {
        let keys = ["max_stanza_bytes", "max_depth", "outbound_queue"];
        assert_eq!(closest("max_stanza_byte", keys), Some("max_stanza_bytes"));
        assert_eq!(closest("max_dept", keys), Some("max_depth"));
        assert_eq!(closest("completely_else", keys), None);
    }
}
