//! Truncated draft vocabularies: which ids a draft keeps in its output layer.
//!
//! A small draft with a large vocabulary spends much of each step in its output layer (151936 rows
//! for Qwen2.5: a third of a 0.5B model's multiply-adds), though most of the probability mass
//! falls on a few thousand tokens (FR-Spec, Zhao et al. 2025). The draft can compute logits for
//! the N most frequent tokens only and sample among them; its q is then that restricted
//! distribution and verification is unchanged, so the output stays exactly the target's — only
//! acceptance can drop, when the target wants a token the draft no longer has.
//!
//! A [`VocabFrequency`] table ranks one tokenizer's ids by how often they occur in some text
//! (`specdec vocab-freq` makes them); tables for the short-name models ship with the engine.

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// Token frequencies for one tokenizer, most frequent first.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VocabFrequency {
    /// [`Tokenizer::vocab_fingerprint`] of the tokenizer the ids belong to, in hex.
    pub fingerprint: String,
    pub vocab_size: usize,
    /// Where the counts came from.
    pub corpus: String,
    /// Tokens counted over all sources.
    pub tokens: u64,
    /// Ids by decreasing frequency (ids never seen are left out).
    pub ids: Vec<u32>,
    /// Each id's share of the counted mass, in parts per billion (sources weighted equally).
    pub ppb: Vec<u64>,
}

/// A table's key for `tok`'s vocabulary: its fingerprint in hex.
fn fingerprint(tok: &Tokenizer) -> String {
    format!("{:016x}", tok.vocab_fingerprint())
}

/// Builtin tables, by tokenizer fingerprint.
const BUILTIN: &[&str] = &[include_str!("../../data/vocab/qwen2.5.json"), include_str!("../../data/vocab/smollm2.json"), include_str!("../../data/vocab/gemma3.json")];

impl VocabFrequency {
    /// Counts `sources` — each a name and its texts' token ids, given equal weight whatever its
    /// length — for `tok`.
    pub fn count(tok: &Tokenizer, sources: &[(String, Vec<Vec<u32>>)]) -> Result<Self> {
        let vocab = tok.vocab_size();
        let mut mass = vec![0f64; vocab];
        let mut tokens = 0u64;
        let mut used = Vec::new();
        for (name, texts) in sources {
            let n: usize = texts.iter().map(Vec::len).sum();
            if n == 0 {
                continue;
            }
            for &id in texts.iter().flatten() {
                let slot = mass.get_mut(id as usize).ok_or_else(|| Error::InvalidArgument(format!("id {id} of source {name} is outside the vocabulary of {vocab}")))?;
                *slot += 1.0 / n as f64;
            }
            tokens += n as u64;
            used.push(format!("{name} ({n} tokens)"));
        }
        if used.is_empty() {
            return Err(Error::InvalidArgument("no text to count token frequencies in".into()));
        }
        let total: f64 = mass.iter().sum();
        let mut ids: Vec<u32> = (0..vocab as u32).filter(|&i| mass[i as usize] > 0.0).collect();
        // Most frequent first; ties by id, so the table does not depend on the sort's stability.
        ids.sort_by(|&a, &b| mass[b as usize].total_cmp(&mass[a as usize]).then(a.cmp(&b)));
        let ppb = ids.iter().map(|&i| (mass[i as usize] / total * 1e9).round() as u64).collect();
        Ok(VocabFrequency { fingerprint: fingerprint(tok), vocab_size: vocab, corpus: used.join(", "), tokens, ids, ppb })
    }

    /// A table from its JSON form, checked for consistency.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let t: VocabFrequency = serde_json::from_str(text).map_err(|e| Error::InvalidArgument(format!("{origin}: not a vocabulary frequency table: {e}")))?;
        if t.ids.len() != t.ppb.len() || t.ids.iter().any(|&i| i as usize >= t.vocab_size) {
            return Err(Error::InvalidArgument(format!("{origin}: ids and frequencies do not match a vocabulary of {}", t.vocab_size)));
        }
        let mut seen = vec![false; t.vocab_size];
        if t.ids.iter().any(|&i| std::mem::replace(&mut seen[i as usize], true)) {
            return Err(Error::InvalidArgument(format!("{origin}: an id appears twice")));
        }
        Ok(t)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a table serialises")
    }

    /// The table that ships with the engine for `tok`'s vocabulary, if there is one.
    pub fn builtin(tok: &Tokenizer) -> Option<Self> {
        BUILTIN.iter().filter_map(|text| Self::from_json(text, "builtin table").ok()).find(|t| t.fits(tok))
    }

    /// Whether this table was counted with `tok`'s vocabulary.
    pub fn fits(&self, tok: &Tokenizer) -> bool {
        self.fingerprint == fingerprint(tok) && self.vocab_size == tok.vocab_size()
    }

    /// The ids a draft keeps with a head of `n` rows: every special token (ends of turn and
    /// chat markup must stay proposable), then the most frequent ids, then, if the table runs
    /// out, the lowest unseen ids (byte-level BPE gives its most common merges the lowest ids).
    pub fn top(&self, n: usize, tok: &Tokenizer) -> Vec<u32> {
        let vocab = tok.vocab_size();
        let n = n.min(vocab);
        let mut taken = vec![false; vocab];
        let mut out = Vec::with_capacity(n);
        let specials = (0..vocab as u32).filter(|&i| tok.is_special(i));
        let unseen = 0..vocab as u32;
        for id in specials.chain(self.ids.iter().copied()).chain(unseen) {
            if out.len() == n {
                break;
            }
            if (id as usize) < vocab && !std::mem::replace(&mut taken[id as usize], true) {
                out.push(id);
            }
        }
        out
    }

    /// The share of the counted mass that the `n` most frequent ids hold.
    pub fn coverage(&self, n: usize) -> f64 {
        self.ppb.iter().take(n).sum::<u64>() as f64 / self.ppb.iter().sum::<u64>().max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tables_parse() {
        for text in BUILTIN {
            let t = VocabFrequency::from_json(text, "builtin").unwrap();
            assert!(t.ids.len() > 1000 && t.tokens > 0, "{}", t.corpus);
            assert!(t.ppb.windows(2).all(|w| w[0] >= w[1]), "ids are sorted by frequency");
        }
    }

    #[test]
    fn malformed_tables_are_refused() {
        let ok = r#"{"fingerprint":"00","vocab_size":4,"corpus":"x","tokens":3,"ids":[2,0],"ppb":[600000000,400000000]}"#;
        assert!(VocabFrequency::from_json(ok, "t").is_ok());
        let twice = ok.replace("[2,0]", "[2,2]");
        assert!(VocabFrequency::from_json(&twice, "t").unwrap_err().to_string().contains("twice"));
        let outside = ok.replace("[2,0]", "[2,9]");
        assert!(VocabFrequency::from_json(&outside, "t").is_err());
        assert!(VocabFrequency::from_json("[]", "t").is_err());
    }
}
