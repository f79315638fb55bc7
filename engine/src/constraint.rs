//! Constrained decoding: a [`TokenConstraint`] says which tokens may come next (a JSON schema, a
//! grammar), and generation masks the logits of every other token before warping. Under
//! speculation the same masks apply to the draft's q (inside the proposer) and to the target's p
//! (before verification), so the verifier sees two ordinary distributions and the output is
//! exactly the constrained target distribution: a drafted token the constraint forbids has p = 0
//! and is never accepted.
//!
//! The constraint advances only over emitted tokens, and rolls back with the caches: a drafter
//! advances it over its drafts and rolls it back before returning. [`Constrained`] wraps a
//! constraint with a mask cache keyed by position, so the masks a drafter computed are reused when
//! the decoder masks the target's rows for the same tokens.

use crate::error::{Error, Result};

/// A set of allowed token ids over a vocabulary (a bitset).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenMask {
    words: Vec<u64>,
    vocab: usize,
}

impl TokenMask {
    /// Nothing allowed.
    pub fn none(vocab: usize) -> Self {
        TokenMask { words: vec![0; vocab.div_ceil(64)], vocab }
    }

    /// Everything allowed.
    pub fn all(vocab: usize) -> Self {
        let mut m = Self::none(vocab);
        for id in 0..vocab {
            m.allow(id as u32);
        }
        m
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Allows `id`; ids outside the vocabulary are ignored.
    pub fn allow(&mut self, id: u32) {
        let i = id as usize;
        if i < self.vocab {
            self.words[i / 64] |= 1 << (i % 64);
        }
    }

    pub fn forbid(&mut self, id: u32) {
        let i = id as usize;
        if i < self.vocab {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    pub fn allows(&self, id: u32) -> bool {
        let i = id as usize;
        i < self.vocab && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    /// Number of allowed ids.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Sets the logits of forbidden tokens to −∞, so warping gives them probability 0 and
    /// renormalises over the allowed ones. Entries past the mask's vocabulary are forbidden too.
    pub fn apply(&self, logits: &mut [f32]) {
        for (i, v) in logits.iter_mut().enumerate() {
            if !self.allows(i as u32) {
                *v = f32::NEG_INFINITY;
            }
        }
    }
}

/// The seam between a constraint (grammar, schema, toy rule) and the decoding loops.
pub trait TokenConstraint: Send {
    /// Writes into `mask` (sized to the model's vocabulary, all forbidden on entry) the tokens
    /// allowed after the tokens advanced so far.
    fn allowed(&mut self, mask: &mut TokenMask) -> Result<()>;

    /// Consumes one token the mask allowed.
    fn advance(&mut self, token: u32) -> Result<()>;

    /// Forgets the last `n` advanced tokens.
    fn rollback(&mut self, n: usize) -> Result<()>;

    /// Whether the constrained text is complete and nothing may follow (generation stops).
    fn is_finished(&self) -> bool {
        false
    }
}

/// A constraint in use: the token history it has advanced over, and the masks computed for each
/// position. Rolling back keeps the masks of the rolled-back positions, so re-advancing over the
/// same tokens (the decoder walking the drafts the proposer just walked) reuses them.
pub struct Constrained {
    inner: Box<dyn TokenConstraint>,
    vocab: usize,
    /// Tokens advanced over, then the rolled-back tail that may be re-advanced (`len` marks where
    /// the live history ends).
    tokens: Vec<u32>,
    len: usize,
    /// masks[i]: the mask after `tokens[..i]`, when computed.
    masks: Vec<Option<TokenMask>>,
    /// Masks computed by the constraint (cache misses), for cost accounting.
    computed: usize,
}

impl Constrained {
    pub fn new(inner: Box<dyn TokenConstraint>, vocab: usize) -> Self {
        Constrained { inner, vocab, tokens: Vec::new(), len: 0, masks: Vec::new(), computed: 0 }
    }

    /// Tokens advanced over so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The advanced tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens[..self.len]
    }

    /// Masks the constraint had to compute (cache misses).
    pub fn masks_computed(&self) -> usize {
        self.computed
    }

    pub fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }

    /// The tokens allowed at the current position.
    pub fn mask(&mut self) -> Result<&TokenMask> {
        if self.masks.len() <= self.len {
            self.masks.resize(self.len + 1, None);
        }
        if self.masks[self.len].is_none() {
            let mut mask = TokenMask::none(self.vocab);
            self.inner.allowed(&mut mask)?;
            self.computed += 1;
            if mask.count() == 0 {
                return Err(Error::Constraint(format!("no token is allowed after {} constrained tokens", self.len)));
            }
            self.masks[self.len] = Some(mask);
        }
        Ok(self.masks[self.len].as_ref().expect("just filled"))
    }

    /// Masks `logits` (one row) for the current position.
    pub fn apply(&mut self, logits: &mut [f32]) -> Result<()> {
        self.mask()?.apply(logits);
        Ok(())
    }

    /// Consumes `token`, which must be allowed at the current position.
    pub fn advance(&mut self, token: u32) -> Result<()> {
        if !self.mask()?.allows(token) {
            return Err(Error::Constraint(format!("token {token} is not allowed at constrained position {}", self.len)));
        }
        self.inner.advance(token)?;
        if self.tokens.get(self.len) != Some(&token) {
            // A different continuation: cached masks past this point are stale.
            self.tokens.truncate(self.len);
            self.tokens.push(token);
            self.masks.truncate(self.len + 1);
        }
        self.len += 1;
        Ok(())
    }

    /// Forgets the last `n` tokens (at most all of them).
    pub fn rollback(&mut self, n: usize) -> Result<()> {
        let n = n.min(self.len);
        if n > 0 {
            self.inner.rollback(n)?;
            self.len -= n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allows only even tokens after an even token and odd after odd; counts mask computations.
    struct Parity {
        history: Vec<u32>,
    }

    impl TokenConstraint for Parity {
        fn allowed(&mut self, mask: &mut TokenMask) -> Result<()> {
            let want = self.history.last().map_or(0, |t| t % 2);
            for id in 0..mask.vocab() as u32 {
                if id % 2 == want {
                    mask.allow(id);
                }
            }
            Ok(())
        }
        fn advance(&mut self, token: u32) -> Result<()> {
            self.history.push(token);
            Ok(())
        }
        fn rollback(&mut self, n: usize) -> Result<()> {
            self.history.truncate(self.history.len() - n);
            Ok(())
        }
    }

    #[test]
    fn masks_are_cached_across_rollback_and_recomputed_on_a_new_path() {
        let mut c = Constrained::new(Box::new(Parity { history: vec![] }), 6);
        assert!(c.mask().unwrap().allows(0) && !c.mask().unwrap().allows(1));
        c.advance(2).unwrap();
        c.advance(4).unwrap();
        assert_eq!(c.masks_computed(), 2);
        assert!(c.advance(1).is_err(), "odd after even is refused");
        c.rollback(2).unwrap();
        // Walking the same tokens again reuses both masks; the position after them is new.
        c.advance(2).unwrap();
        c.advance(4).unwrap();
        c.mask().unwrap();
        assert_eq!(c.masks_computed(), 3);
        // A different token at position 1 invalidates what followed.
        c.rollback(1).unwrap();
        c.advance(0).unwrap();
        c.mask().unwrap();
        assert_eq!(c.masks_computed(), 4);
        assert_eq!(c.tokens(), &[2, 0]);
    }

    #[test]
    fn apply_sets_forbidden_logits_to_minus_infinity() {
        let mut m = TokenMask::none(4);
        m.allow(1);
        m.allow(3);
        m.allow(99);
        assert_eq!(m.count(), 2);
        let mut row = [0.5, 1.0, 2.0, -1.0, 7.0];
        m.apply(&mut row);
        assert_eq!(row, [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY, -1.0, f32::NEG_INFINITY]);
        assert_eq!(TokenMask::all(130).count(), 130);
    }
}
