//! Incremental detokenization for streaming generated text.

use super::{Decoding, Tokenizer};

/// Incremental detokenizer: feed generated ids one at a time, get text as soon as it is complete.
/// Never emits a partial UTF-8 sequence; special tokens produce no text. The concatenation of
/// every `push` and the final [`flush`](Self::flush) equals [`Tokenizer::decode`] of all ids.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    // Byte-table path.
    pending: Vec<u8>,
    started: bool,
    // Generic path (decode-and-diff, like `tokenizers`' DecodeStream): `ids` holds the chunk of
    // ids whose text was emitted last (`emitted` of them, decoding to `prefix`) followed by the
    // ids not emitted yet. Diffing against that chunk gives spacing rules their left context and
    // always starts decoding at a character boundary.
    ids: Vec<u32>,
    emitted: usize,
    prefix: String,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tok: &'a Tokenizer) -> Self {
        StreamDecoder { tok, pending: Vec::new(), started: false, ids: Vec::new(), emitted: 0, prefix: String::new() }
    }

    /// Adds one id; returns newly completed text, if any. Out-of-range ids are ignored.
    pub fn push(&mut self, id: u32) -> Option<String> {
        let tok = self.tok;
        if id as usize >= tok.pieces.len() || tok.special[id as usize] {
            return None;
        }
        match tok.decoding {
            Decoding::Pieces => {
                let piece = tok.strip_first(&tok.pieces[id as usize], !self.started);
                self.started = true;
                self.pending.extend_from_slice(piece);
                let out = take_complete_utf8(&mut self.pending);
                (!out.is_empty()).then_some(out)
            }
            Decoding::Hf => {
                self.ids.push(id);
                let text = tok.hf_decode(&self.ids).unwrap_or_default();
                if text.ends_with('\u{FFFD}') {
                    return None;
                }
                self.take_new(&text)
            }
        }
    }

    /// Emits what `text` (the decoding of `ids`) adds to `prefix`, and makes the ids not yet
    /// emitted the new chunk.
    fn take_new(&mut self, text: &str) -> Option<String> {
        if text.len() <= self.prefix.len() || !text.is_char_boundary(self.prefix.len()) {
            return None;
        }
        let new = text[self.prefix.len()..].to_string();
        self.ids.drain(..self.emitted);
        self.emitted = self.ids.len();
        self.prefix = self.tok.hf_decode(&self.ids).unwrap_or_default();
        Some(new)
    }

    /// Whatever is still held back (an incomplete UTF-8 tail becomes U+FFFD).
    pub fn flush(&mut self) -> Option<String> {
        let out = match self.tok.decoding {
            Decoding::Pieces => String::from_utf8_lossy(&std::mem::take(&mut self.pending)).into_owned(),
            Decoding::Hf => {
                let text = self.tok.hf_decode(&self.ids).unwrap_or_default();
                self.take_new(&text).unwrap_or_default()
            }
        };
        (!out.is_empty()).then_some(out)
    }
}

/// Removes and returns the longest prefix of `buf` that is complete UTF-8; invalid bytes (that
/// no continuation can fix) become U+FFFD, an incomplete tail stays in `buf`.
pub(super) fn take_complete_utf8(buf: &mut Vec<u8>) -> String {
    let mut out = String::new();
    let mut start = 0;
    loop {
        match std::str::from_utf8(&buf[start..]) {
            Ok(s) => {
                out.push_str(s);
                start = buf.len();
                break;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&buf[start..start + valid]).expect("validated"));
                match e.error_len() {
                    Some(bad) => {
                        out.push('\u{FFFD}');
                        start += valid + bad;
                    }
                    None => {
                        start += valid;
                        break;
                    }
                }
            }
        }
    }
    buf.drain(..start);
    out
}
