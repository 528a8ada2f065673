//! Untrusted caller text. Everything the caller supplies (message content, reasoning, names,
//! tool calls, tool schemas) is untrusted: a special-token string in it (`<|im_start|>`, ...)
//! must not become a control token. Before rendering, each occurrence of a marker (the
//! tokenizer's special-token strings plus `<|` and `|>`), and any fragment of a marker at the
//! very start or end of a value (which the template could complete with its own text), is
//! replaced by a private-use placeholder `OPEN hi lo CLOSE` (4 chars, an index into a table).
//! The rest of the caller's text is left exactly as is, so the template's string operations
//! (`startswith('<tool_response>')`, `split('</think>')`, `strip('\n')`, `tojson`,
//! `messages[::-1]`, ...) behave exactly as in Python. After rendering, placeholders are
//! swapped back for their original text and returned as `Segment { trusted: false }`;
//! everything else is a trusted segment (caller text outside placeholders is then known to hold
//! no special-token string). `Tokenizer::encode_chat` encodes the segments: in one piece when no
//! special token touches untrusted text (so ids equal Hugging Face's), otherwise with those
//! tokens encoded as plain text. (Templates that measure or slice caller strings, e.g.
//! `content[:100]`, see a placeholder as 4 characters; Qwen templates do not.)
//!
//! Also here: caller messages and JSON as template values, every string escaped on the way.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};

use super::error::TextError;
use super::messages::Message;
use super::segment::{find_any, Segment};

/// Private-use code points from plane 16; `IDX_BASE..` (plane 15) carry the
/// table index as two 16-bit digits. Caller text containing OPEN or CLOSE gets
/// those characters escaped too, so every OPEN in the output is ours (or the
/// template's own, which is not followed by a valid index).
pub(crate) const OPEN: char = '\u{10FFFC}';
pub(crate) const CLOSE: char = '\u{10FFFD}';
const IDX_BASE: u32 = 0xF0000;

pub(crate) struct Escaper<'a> {
    specials: &'a [String],
    /// `specials` plus the placeholder markers, longest first.
    needles: Vec<String>,
    table: Vec<String>,
}

impl<'a> Escaper<'a> {
    pub(crate) fn new(specials: &'a [String]) -> Self {
        let mut needles: Vec<String> = specials.iter().cloned().chain([OPEN.to_string(), CLOSE.to_string()]).collect();
        needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        Self { specials, needles, table: Vec::new() }
    }

    fn placeholder(&mut self, original: &str, out: &mut String) {
        let i = self.table.len() as u32;
        self.table.push(original.to_owned());
        out.push(OPEN);
        // Both digits < 0x10000, so IDX_BASE + digit stays in U+F0000..=U+FFFFF.
        out.push(char::from_u32(IDX_BASE + (i >> 16)).unwrap_or(CLOSE));
        out.push(char::from_u32(IDX_BASE + (i & 0xFFFF)).unwrap_or(CLOSE));
        out.push(CLOSE);
    }

    /// Neutralize one caller string.
    pub(crate) fn escape(&mut self, s: &str) -> String {
        let mut cuts = find_any(s, &self.needles);
        // A special-token fragment at the edges could be completed by adjacent
        // template text (or another value): escape the longest such prefix /
        // suffix too. Rendering is unchanged; encode_chat then sees it untrusted.
        // Where a fragment overlaps a match, escape up to the match (any shorter
        // fragment then lies inside an escaped range as well).
        let n = self.edge_len(s, false);
        let lead_end = match cuts.first() {
            Some(&(a, _)) if a < n => a,
            _ => n,
        };
        if lead_end > 0 {
            cuts.insert(0, (0, lead_end));
        }
        let start = s.len() - self.edge_len(s, true);
        let tail_start = match cuts.last() {
            Some(&(_, b)) if b > start => b,
            _ => start,
        };
        if tail_start < s.len() {
            cuts.push((tail_start, s.len()));
        }
        if cuts.is_empty() {
            return s.to_owned();
        }
        let mut out = String::with_capacity(s.len() + 8 * cuts.len());
        let mut pos = 0;
        for (a, b) in cuts {
            out.push_str(&s[pos..a]);
            self.placeholder(&s[a..b], &mut out);
            pos = b;
        }
        out.push_str(&s[pos..]);
        out
    }

    /// Longest proper prefix (at_end) or suffix (at start) of a special token
    /// that `s` ends / starts with.
    fn edge_len(&self, s: &str, at_end: bool) -> usize {
        let mut best = 0;
        for t in self.specials {
            for k in (1..t.len()).rev() {
                if k <= best {
                    break;
                }
                let ok = if at_end {
                    t.is_char_boundary(k) && s.ends_with(&t[..k])
                } else {
                    t.is_char_boundary(t.len() - k) && s.starts_with(&t[t.len() - k..])
                };
                if ok {
                    best = k;
                    break;
                }
            }
        }
        best
    }

    /// Split rendered text back into trusted text and untrusted originals.
    pub(crate) fn restore(&self, rendered: &str) -> Vec<Segment> {
        let mut segs: Vec<Segment> = Vec::new();
        let mut push = |text: &str, trusted: bool| match segs.last_mut() {
            Some(last) if last.trusted == trusted => last.text.push_str(text),
            _ if text.is_empty() => {}
            _ => segs.push(Segment { text: text.to_owned(), trusted }),
        };
        let mut rest = rendered;
        while let Some(p) = rest.find(OPEN) {
            push(&rest[..p], true);
            let after = &rest[p + OPEN.len_utf8()..];
            let mut chars = after.chars();
            let idx = match (chars.next(), chars.next(), chars.next()) {
                (Some(hi), Some(lo), Some(CLOSE)) => {
                    let digit = |c: char| (c as u32).checked_sub(IDX_BASE).filter(|&d| d < 0x10000);
                    match (digit(hi), digit(lo)) {
                        (Some(h), Some(l)) => Some(((h << 16) | l) as usize).filter(|&i| i < self.table.len()),
                        _ => None,
                    }
                }
                _ => None,
            };
            match idx {
                Some(i) => {
                    push(&self.table[i], false);
                    rest = chars.as_str();
                }
                None => {
                    // Not one of ours (template literal, or cut by slicing).
                    push(&rest[p..p + OPEN.len_utf8()], true);
                    rest = after;
                }
            }
        }
        push(rest, true);
        segs
    }
}

// ---------------------------------------------------------------------------
// Template values.

/// A JSON object as a template map that keeps its key order (minijinja's own
/// maps are sorted without its `preserve_order` feature, and Python's `tojson`
/// keeps insertion order; with serde_json's `preserve_order` feature on, tool
/// schemas render byte-identical to Python).
#[derive(Debug)]
pub(crate) struct OrderedMap(pub(crate) Vec<(Value, Value)>);

impl Object for OrderedMap {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.0.iter().map(|(k, _)| k.clone()).collect())
    }
    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

/// Caller JSON -> template value, escaping every string (keys included).
pub(crate) fn json_value(v: &serde_json::Value, esc: &mut Escaper) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(esc.escape(s)),
        serde_json::Value::Array(a) => Value::from(a.iter().map(|x| json_value(x, esc)).collect::<Vec<_>>()),
        serde_json::Value::Object(o) => Value::from_object(OrderedMap(
            o.iter().map(|(k, v)| (Value::from(esc.escape(k)), json_value(v, esc))).collect(),
        )),
    }
}

pub(crate) fn message_value(m: &Message, esc: &mut Escaper) -> Result<Value, TextError> {
    if m.role.is_empty() {
        return Err(TextError::Message("empty role".into()));
    }
    let mut fields = vec![
        (Value::from("role"), Value::from(esc.escape(&m.role))),
        (Value::from("content"), Value::from(esc.escape(&m.content))),
    ];
    // Absent fields stay undefined, as with a Python dict lacking the key.
    if let Some(r) = &m.reasoning_content {
        fields.push((Value::from("reasoning_content"), Value::from(esc.escape(r))));
    }
    if let Some(tc) = m.tool_calls.as_ref().filter(|t| !t.is_null()) {
        fields.push((Value::from("tool_calls"), json_value(tc, esc)));
    }
    if let Some(n) = &m.name {
        fields.push((Value::from("name"), Value::from(esc.escape(n))));
    }
    if let Some(id) = &m.tool_call_id {
        fields.push((Value::from("tool_call_id"), Value::from(esc.escape(id))));
    }
    Ok(Value::from_object(OrderedMap(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_restore_round_trip() {
        // Small alphabet so that markers and fragments occur often.
        let specials: Vec<String> = ["<|im_end|>", "<|", "|>"].map(String::from).to_vec();
        let alphabet = ["<", "|", ">", "im_end", "x", "\n", "é", "<|im_end|>"];
        let mut seed = 0x2545_f491_u64;
        for _ in 0..2000 {
            let mut text = String::new();
            for _ in 0..(seed % 7) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                text.push_str(alphabet[(seed >> 33) as usize % alphabet.len()]);
            }
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let mut esc = Escaper::new(&specials);
            // Template text around the value ends/starts with marker fragments.
            let (pre, post) = ("A<", "|>B<|im_end|>");
            let escaped = format!("{pre}{}{post}", esc.escape(&text));
            // Caller text outside placeholders holds no marker at all.
            let inner = &escaped[pre.len()..escaped.len() - post.len()];
            assert!(!inner.contains("<|") && !inner.contains("|>"), "{text:?}");
            let segs = esc.restore(&escaped);
            let back: String = segs.iter().map(|s| s.text.as_str()).collect();
            assert_eq!(back, format!("{pre}{text}{post}"));
            // Every marker occurrence touching caller text overlaps untrusted text.
            let mut pos = 0;
            let mut untrusted = vec![false; back.len()];
            for s in &segs {
                untrusted[pos..pos + s.text.len()].fill(!s.trusted);
                pos += s.text.len();
            }
            let caller = pre.len()..pre.len() + text.len();
            for (a, b) in find_any(&back, &specials) {
                if !text.is_empty() && a < caller.end && b > caller.start {
                    assert!(untrusted[a..b].iter().any(|&u| u), "{text:?} {a}..{b}");
                }
            }
        }
    }
}
