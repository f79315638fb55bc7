//! Log-likelihood of continuations after a shared context: the scoring behind multiple-choice
//! evaluation (each answer's log-probability given the question). The context runs once; each
//! continuation runs from the context's cache, which is truncated back between them. No I/O, no
//! clock.

use crate::error::{Error, Result};
use crate::model::{CausalLm, LogitRows};
use crate::sampling::argmax;

/// How a model scores one continuation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContinuationScore {
    /// Σ log p(token | context, earlier continuation tokens), natural log.
    pub log_likelihood: f64,
    /// Number of continuation tokens (for per-token normalization).
    pub tokens: usize,
    /// Every continuation token was the model's argmax at its position (greedy decoding would
    /// have produced it).
    pub greedy: bool,
}

/// `log softmax(row)[token]`, computed in f64 so long sums of small terms stay accurate.
pub fn log_prob(row: &[f32], token: u32) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    row[token as usize] as f64 - max - sum.ln()
}

/// Scores each of `continuations` after `context` (token ids; the context carries its own BOS
/// if the model wants one). The context must be non-empty (its last position predicts the first
/// continuation token) and every continuation non-empty, with ids inside the vocabulary.
pub fn score_continuations(model: &dyn CausalLm, context: &[u32], continuations: &[Vec<u32>]) -> Result<Vec<ContinuationScore>> {
    let vocab = model.config().vocab_size;
    let bad = |value: String, expected: &str| Error::InvalidParameter { parameter: "scored tokens", value, expected: expected.into() };
    if context.is_empty() {
        return Err(bad("an empty context".into(), "at least one context token"));
    }
    if let Some(i) = continuations.iter().position(|c| c.is_empty()) {
        return Err(bad(format!("continuation {i} is empty"), "at least one token per continuation"));
    }
    if let Some(&t) = context.iter().chain(continuations.iter().flatten()).find(|&&t| t as usize >= vocab) {
        return Err(bad(format!("token id {t}"), &format!("ids below the vocabulary size {vocab}")));
    }
    let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
    let mut cache = model.new_cache(context.len() + longest)?;
    let first = model.forward(context, &mut cache, LogitRows::Last)?;
    let first_row = first.last();
    let mut scores = Vec::with_capacity(continuations.len());
    for continuation in continuations {
        let mut log_likelihood = log_prob(first_row, continuation[0]);
        let mut greedy = argmax(first_row) == continuation[0];
        if continuation.len() > 1 {
            // Rows i predict continuation[i + 1]; the last token's own row is not needed.
            let rest = model.forward(&continuation[..continuation.len() - 1], &mut cache, LogitRows::All)?;
            for (i, &token) in continuation[1..].iter().enumerate() {
                log_likelihood += log_prob(rest.row(i), token);
                greedy &= argmax(rest.row(i)) == token;
            }
            cache.truncate(context.len());
        }
        scores.push(ContinuationScore { log_likelihood, tokens: continuation.len(), greedy });
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prob_is_the_log_softmax() {
        let row = [1.0f32, 2.0, 3.0];
        let z: f64 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        for t in 0..3 {
            assert!((log_prob(&row, t) - ((t + 1) as f64 - z)).abs() < 1e-12);
        }
        // Large logits do not overflow.
        let big = [1000.0f32, 1000.0];
        assert!((log_prob(&big, 0) - 0.5f64.ln()).abs() < 1e-12);
    }
}
