//! What the template renders and the tokenizer encodes: pieces of prompt text marked trusted
//! (the template's own) or not (the caller's), and the special-token matching both sides share.

/// A piece of rendered prompt text. `trusted: false` pieces came from the caller
/// and must never produce control tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    pub trusted: bool,
}

/// Leftmost, then longest, non-overlapping occurrences of any of `needles`
/// (which must be sorted longest first).
pub(crate) fn find_any(text: &str, needles: &[String]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    if needles.is_empty() {
        return out;
    }
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        // Cheap pre-filter on the first byte.
        if let Some(n) = needles.iter().find(|n| n.as_bytes()[0] == bytes[i] && bytes[i..].starts_with(n.as_bytes())) {
            out.push((i, i + n.len()));
            i += n.len();
        } else {
            i += 1;
        }
    }
    out
}

/// Sort special-token strings longest first (then by text) and drop duplicates and empty ones:
/// at one position `find_any` takes the first needle that matches, as the tokenizer's
/// leftmost-longest matcher does.
pub(crate) fn longest_first(mut needles: Vec<String>) -> Vec<String> {
    needles.retain(|s| !s.is_empty());
    needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    needles.dedup();
    needles
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_any_is_leftmost_longest() {
        let needles = vec!["<|ab|>".to_string(), "<|a".to_string()];
        assert_eq!(find_any("x<|ab|><|a", &needles), vec![(1, 7), (7, 10)]);
        assert!(find_any("", &needles).is_empty());
    }
}
