//! Generated ids to text, as it streams: `StreamDecoder` emits whole characters only,
//! `ThinkSplitter` separates the `<think>` reasoning from the answer, `StopMatcher` ends the
//! answer before a stop string.

use super::tokenizer::Tokenizer;

/// A UTF-8 character is at most 4 bytes and every token decodes to at least one
/// byte, so after this many tokens without completing a character the bytes are
/// genuinely invalid and are flushed (as U+FFFD) instead of stalling.
const MAX_PENDING_TOKENS: usize = 4;

/// Incremental detokenizer: `push` each generated id, get back the text that is
/// now complete. Concatenating every `push` and the final `finish` equals
/// `tok.decode(all ids)` (verified in tests for byte-level BPE). The tokenizer is
/// passed to each call so the decoder holds no reference to it.
///
/// A token can end in the middle of a UTF-8 character (byte-level BPE splits
/// emoji and CJK into byte pieces); such output is held back until the
/// character completes, so no U+FFFD is ever emitted for a split character. A
/// genuinely invalid sequence is flushed after `MAX_PENDING_TOKENS` tokens.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    skip_special: bool,
    /// Ids already emitted, kept as left context (decoders such as Metaspace
    /// treat the first token differently; byte-level does not care).
    context: Vec<u32>,
    context_text: String,
    /// Ids not yet emitted.
    pending: Vec<u32>,
}

impl StreamDecoder {
    /// A decoder that keeps special tokens in the text (`<|im_end|>` is normally
    /// a stop id and never pushed; `<think>` is not special either way).
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder that drops special tokens, like `decode(ids, true)`.
    pub fn with_skip_special(skip_special: bool) -> Self {
        Self { skip_special, ..Self::default() }
    }

    /// Feed one id; returns the newly completed text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.push(id);
        let mut all = self.context.clone();
        all.extend_from_slice(&self.pending);
        let text = tok.decode(&all, self.skip_special);
        let complete = !text.ends_with('\u{FFFD}');
        if !complete && self.pending.len() < MAX_PENDING_TOKENS {
            return String::new();
        }
        let new = self.new_text(tok, &text);
        if complete {
            self.context = std::mem::take(&mut self.pending);
            self.context_text = tok.decode(&self.context, self.skip_special);
        } else {
            // Forced flush of invalid bytes: start over without context, since
            // the flushed tail is not a clean prefix of what follows.
            self.reset();
        }
        new
    }

    /// Emit whatever is still pending (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self, tok: &Tokenizer) -> String {
        if self.pending.is_empty() {
            return String::new();
        }
        let mut all = self.context.clone();
        all.extend_from_slice(&self.pending);
        let text = tok.decode(&all, self.skip_special);
        let new = self.new_text(tok, &text);
        self.reset();
        new
    }

    /// True when some ids are held back waiting for a character to complete.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    fn reset(&mut self) {
        self.context.clear();
        self.context_text.clear();
        self.pending.clear();
    }

    /// `text` = decode(context + pending); the new part is what follows the
    /// context's own decoding. If the decoder is not prefix-stable there, fall
    /// back to decoding the pending ids alone.
    fn new_text(&self, tok: &Tokenizer, text: &str) -> String {
        match text.strip_prefix(self.context_text.as_str()) {
            Some(rest) => rest.to_owned(),
            None => tok.decode(&self.pending, self.skip_special),
        }
    }
}

/// What a generated piece of text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextEvent {
    /// Inside `<think>...</think>`.
    Reasoning(String),
    /// The answer.
    Content(String),
}

/// Whether a prompt leaves the model inside a think block (its last `<think>`
/// is not followed by `</think>`; e.g. Qwen3 "Thinking-2507" templates end the
/// prompt with `<think>\n`). For original Qwen3 in thinking mode this is false:
/// the model writes `<think>` itself.
pub fn prompt_ends_in_think(prompt: &[u32], think_ids: Option<(u32, u32)>) -> bool {
    let Some((open, close)) = think_ids else {
        return false;
    };
    prompt.iter().rev().find(|&&id| id == open || id == close) == Some(&open)
}

/// Splits generated text into reasoning and content using the `<think>` /
/// `</think>` token ids. The tags themselves are not emitted. Newlines that
/// only frame the sections (after `<think>`, before and after `</think>`) are
/// trimmed unless `set_trim(false)`.
#[derive(Debug, Clone)]
pub struct ThinkSplitter {
    think: Option<(u32, u32)>,
    open_tag: String,
    close_tag: String,
    in_think: bool,
    trim: bool,
    /// Drop newlines until the first other character of the section.
    at_section_start: bool,
    /// Trailing newlines of reasoning, held until more reasoning follows.
    held_newlines: String,
}

impl ThinkSplitter {
    /// `think_ids`: `Tokenizer::think_ids()`. `starts_in_think`: see
    /// `prompt_ends_in_think`.
    pub fn new(think_ids: Option<(u32, u32)>, starts_in_think: bool) -> Self {
        Self {
            think: think_ids,
            open_tag: "<think>".into(),
            close_tag: "</think>".into(),
            in_think: starts_in_think && think_ids.is_some(),
            trim: true,
            at_section_start: starts_in_think && think_ids.is_some(),
            held_newlines: String::new(),
        }
    }

    /// Like `new`, with the tag strings as the tokenizer decodes them.
    pub fn for_tokenizer(tok: &Tokenizer, starts_in_think: bool) -> Self {
        let mut s = Self::new(tok.think_ids(), starts_in_think);
        if let Some((a, b)) = s.think {
            s.open_tag = tok.decode(&[a], false);
            s.close_tag = tok.decode(&[b], false);
        }
        s
    }

    /// Keep section-framing newlines (default: trim them).
    pub fn set_trim(&mut self, trim: bool) {
        self.trim = trim;
    }

    /// True while inside a think block.
    pub fn in_reasoning(&self) -> bool {
        self.in_think
    }

    /// Feed one generated id and the text `StreamDecoder::push` returned for it.
    pub fn push(&mut self, id: u32, piece: &str) -> Vec<TextEvent> {
        let mut events = Vec::new();
        match self.think {
            Some((open, _)) if id == open => {
                // The piece may carry text held back before the tag.
                let before = piece.strip_suffix(self.open_tag.as_str()).unwrap_or("");
                self.text(before, &mut events);
                self.in_think = true;
                self.at_section_start = true;
                self.held_newlines.clear();
            }
            Some((_, close)) if id == close => {
                let before = piece.strip_suffix(self.close_tag.as_str()).unwrap_or("");
                self.text(before, &mut events);
                if !self.trim {
                    self.flush_held(&mut events);
                }
                self.held_newlines.clear();
                self.in_think = false;
                self.at_section_start = true;
            }
            _ => self.text(piece, &mut events),
        }
        events
    }

    /// End of generation: emits held newlines of an unterminated think block
    /// only when trimming is off.
    pub fn finish(&mut self) -> Vec<TextEvent> {
        let mut events = Vec::new();
        if !self.trim {
            self.flush_held(&mut events);
        }
        self.held_newlines.clear();
        events
    }

    fn flush_held(&mut self, events: &mut Vec<TextEvent>) {
        if !self.held_newlines.is_empty() {
            let s = std::mem::take(&mut self.held_newlines);
            self.emit(s, events);
        }
    }

    fn text(&mut self, mut s: &str, events: &mut Vec<TextEvent>) {
        if s.is_empty() {
            return;
        }
        if self.trim && self.at_section_start {
            s = s.trim_start_matches('\n');
            if s.is_empty() {
                return;
            }
        }
        self.at_section_start = false;
        if self.trim && self.in_think {
            // Hold trailing newlines: they may be the ones before `</think>`.
            let body = s.trim_end_matches('\n');
            if !body.is_empty() {
                let held = std::mem::take(&mut self.held_newlines);
                self.emit(held + body, events);
            }
            self.held_newlines.push_str(&s[body.len()..]);
        } else {
            self.emit(s.to_owned(), events);
        }
    }

    fn emit(&self, s: String, events: &mut Vec<TextEvent>) {
        if s.is_empty() {
            return;
        }
        // Merge with the previous event of the same kind.
        match (events.last_mut(), self.in_think) {
            (Some(TextEvent::Reasoning(r)), true) => r.push_str(&s),
            (Some(TextEvent::Content(c)), false) => c.push_str(&s),
            (_, true) => events.push(TextEvent::Reasoning(s)),
            (_, false) => events.push(TextEvent::Content(s)),
        }
    }
}

/// Finds stop strings in streamed text. Text that could be the start of a stop
/// string is held back until it is known not to be one, so a stop string is
/// never partially emitted.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    buf: String,
    stopped: bool,
}

impl StopMatcher {
    pub fn new<I, S>(stops: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let stops = stops.into_iter().map(Into::into).filter(|s: &String| !s.is_empty()).collect();
        Self { stops, buf: String::new(), stopped: false }
    }

    /// Feed text; returns the text that is safe to emit, and whether a stop
    /// string was found (then the text before it is returned and everything
    /// after is dropped, now and in later calls).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), true);
        }
        if self.stops.is_empty() {
            return (text.to_owned(), false);
        }
        self.buf.push_str(text);
        if let Some(pos) = self.stops.iter().filter_map(|s| self.buf.find(s.as_str())).min() {
            let out = self.buf[..pos].to_owned();
            self.buf.clear();
            self.stopped = true;
            return (out, true);
        }
        let hold = self.partial_suffix_len();
        let out = self.buf[..self.buf.len() - hold].to_owned();
        self.buf.drain(..self.buf.len() - hold);
        (out, false)
    }

    /// End of stream: the held-back text (it did not complete a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.buf)
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Length of the longest suffix of `buf` that is a proper prefix of a stop string.
    fn partial_suffix_len(&self) -> usize {
        let mut best = 0;
        for s in &self.stops {
            for k in (best + 1..s.len().min(self.buf.len() + 1)).rev() {
                if s.is_char_boundary(k) && self.buf.ends_with(&s[..k]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(s: &mut ThinkSplitter, pieces: &[(u32, &str)]) -> (String, String) {
        let (mut r, mut c) = (String::new(), String::new());
        for (id, p) in pieces {
            for e in s.push(*id, p) {
                match e {
                    TextEvent::Reasoning(x) => r.push_str(&x),
                    TextEvent::Content(x) => c.push_str(&x),
                }
            }
        }
        for e in s.finish() {
            match e {
                TextEvent::Reasoning(x) => r.push_str(&x),
                TextEvent::Content(x) => c.push_str(&x),
            }
        }
        (r, c)
    }

    #[test]
    fn think_splitting() {
        let ids = Some((151667, 151668));
        // Model opens the block itself (Qwen3 thinking mode).
        let mut s = ThinkSplitter::new(ids, false);
        let pieces = [
            (151667, "<think>"),
            (198, "\n"),
            (1, "Let me"),
            (2, " think.\n"),
            (3, "\n"),
            (151668, "</think>"),
            (271, "\n\n"),
            (4, "Answer"),
            (5, ".\n"),
        ];
        assert_eq!(split_all(&mut s, &pieces), ("Let me think.".into(), "Answer.\n".into()));
        // Prompt already inside the block.
        let mut s = ThinkSplitter::new(ids, true);
        let pieces = [(1, "a\n\nb"), (198, "\n"), (151668, "</think>"), (4, "\n\nc")];
        assert_eq!(split_all(&mut s, &pieces), ("a\n\nb".into(), "c".into()));
        // enable_thinking=false: no tags at all, everything is content.
        let mut s = ThinkSplitter::new(ids, false);
        assert_eq!(split_all(&mut s, &[(1, "\nHi"), (2, " there")]), ("".into(), "\nHi there".into()));
        // Untrimmed keeps every character except the tags; text held back by the
        // stream decoder arrives in the tag's piece.
        let mut s = ThinkSplitter::new(ids, false);
        s.set_trim(false);
        let pieces = [(151667, "<think>"), (1, "\nx\n"), (151668, "😀</think>"), (2, "\n\ny")];
        assert_eq!(split_all(&mut s, &pieces), ("\nx\n😀".into(), "\n\ny".into()));
        // Without think ids everything is content.
        let mut s = ThinkSplitter::new(None, true);
        assert_eq!(split_all(&mut s, &[(151667, "<think>"), (1, "x")]), ("".into(), "<think>x".into()));
        assert!(prompt_ends_in_think(&[1, 151667, 198], ids));
        assert!(!prompt_ends_in_think(&[1, 151667, 198, 151668, 271], ids));
        assert!(!prompt_ends_in_think(&[1, 2], ids));
    }

    #[test]
    fn think_splitting_with_real_tokenizer() {
        let Some(tok) = crate::text::tokenizer::tests::qwen_tokenizer() else { return };
        let text = "<think>\n推理：😀 step\n</think>\n\n答案是 42 🎉";
        let ids = tok.encode_trusted(text).unwrap();
        assert!(ids.contains(&151667) && ids.contains(&151668));
        let mut dec = StreamDecoder::new();
        let mut s = ThinkSplitter::for_tokenizer(&tok, false);
        let pieces: Vec<(u32, String)> = ids.iter().map(|&id| (id, dec.push(&tok, id))).collect();
        let pieces: Vec<(u32, &str)> = pieces.iter().map(|(i, p)| (*i, p.as_str())).collect();
        assert_eq!(split_all(&mut s, &pieces), ("推理：😀 step".into(), "答案是 42 🎉".into()));
    }

    #[test]
    fn stop_strings_across_chunks() {
        let mut m = StopMatcher::new(["STOP", "\n\nUser:"]);
        let chunks = ["Hello ", "wor", "ld\n", "\nUs", "er", "? no. S", "TO", "P after"];
        // What may be emitted after each chunk: possible stop-string starts are held.
        let expected = [
            ("Hello ", false),
            ("wor", false),
            ("ld", false),
            ("", false),
            ("", false),
            ("\n\nUser? no. ", false),
            ("", false),
            ("", true),
        ];
        for (chunk, want) in chunks.iter().zip(expected) {
            assert_eq!(m.push(chunk), (want.0.to_string(), want.1), "after {chunk:?}");
        }
        assert!(m.stopped());
        assert_eq!(m.push("more"), (String::new(), true));
        // No stop: held text comes out at finish.
        let mut m = StopMatcher::new(["</answer>"]);
        let (a, s1) = m.push("x </ans");
        assert_eq!((a.as_str(), s1), ("x ", false));
        assert_eq!(m.finish(), "</ans");
        // Multi-byte stop strings split mid-character never panic.
        let mut m = StopMatcher::new(["结束了"]);
        let (a, _) = m.push("好的结");
        assert_eq!(a, "好的");
        let (b, s) = m.push("束了吗");
        assert_eq!((b.as_str(), s), ("", true));
        // Earliest match wins across several stop strings.
        let mut m = StopMatcher::new(["bc", "abcd"]);
        assert_eq!(m.push("xabcd"), ("x".into(), true));
        // No stops: passthrough.
        let mut m = StopMatcher::new(Vec::<String>::new());
        assert_eq!(m.push("abc"), ("abc".into(), false));
    }
}
