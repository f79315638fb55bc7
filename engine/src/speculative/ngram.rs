//! Prompt lookup: propose the continuation of the most recent earlier occurrence of the context's
//! last n tokens (longest n first). Deterministic, so its proposals are verified as one-hot q and
//! the output stays exactly the target's, greedy or sampled. Useful whenever the output repeats
//! the input: code edits, extraction, summaries that quote.

use super::proposer::{Proposal, Proposer};
use crate::error::{Error, Result};
use crate::sampling::Sampler;

/// N-gram matcher over the prompt and everything generated so far.
#[derive(Debug, Clone)]
pub struct NGram {
    max_n: usize,
    min_n: usize,
}

impl NGram {
    /// Matches suffixes of length `max_n` down to `min_n` (both ≥ 1).
    pub fn new(max_n: usize, min_n: usize) -> Result<Self> {
        if min_n == 0 || min_n > max_n {
            return Err(Error::InvalidArgument(format!("n-gram lengths need 1 ≤ min ({min_n}) ≤ max ({max_n})")));
        }
        Ok(NGram { max_n, min_n })
    }

    /// The proposal for `context`: up to `k` tokens that followed the latest earlier match.
    pub fn lookup(&self, context: &[u32], k: usize) -> Vec<u32> {
        let len = context.len();
        for n in (self.min_n..=self.max_n.min(len.saturating_sub(1))).rev() {
            let key = &context[len - n..];
            // Latest start i < len − n whose n tokens equal the key (the key itself excluded).
            if let Some(i) = (0..len - n).rev().find(|&i| &context[i..i + n] == key) {
                let from = i + n;
                return context[from..(from + k).min(len)].to_vec();
            }
        }
        Vec::new()
    }
}

impl Proposer for NGram {
    fn propose(&mut self, context: &[u32], k: usize, _sampler: &mut Sampler) -> Result<Proposal> {
        Ok(Proposal { tokens: self.lookup(context, k), probs: None })
    }

    fn rollback(&mut self, _len: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_most_recent_match_wins() {
        let g = NGram::new(3, 1).unwrap();
        // ... 1 2 3 [9 9] ... 2 3 [7 7] ... 1 2 3 → the 3-gram "1 2 3" matches at 0, continuation 9 9.
        let ctx = [1, 2, 3, 9, 9, 5, 2, 3, 7, 7, 1, 2, 3];
        assert_eq!(g.lookup(&ctx, 2), vec![9, 9]);
        // With max n = 2, "2 3" matches most recently at 6: continuation 7 7.
        assert_eq!(NGram::new(2, 1).unwrap().lookup(&ctx, 2), vec![7, 7]);
        // The continuation may run into the key itself but not past the end.
        assert_eq!(g.lookup(&[4, 5, 4, 5], 5), vec![4, 5]);
        assert!(g.lookup(&[1, 2, 3], 4).is_empty());
        assert!(g.lookup(&[], 4).is_empty());
        assert!(NGram::new(1, 2).is_err() && NGram::new(2, 0).is_err());
    }
}
