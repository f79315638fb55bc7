//! Speculative decoding across tokenizers.
//!
//! When the draft's vocabulary is not the target's (TinyLlama's SentencePiece drafting for
//! Pythia's GPT-NeoX BPE), token ids mean nothing to the other model. [`CrossVocab`] drafts in
//! text instead:
//!
//! 1. **Sync.** The target's context (prompt + emitted tokens) is turned into the draft's ids: the
//!    prompt once (the draft's own rendering of it, or a translation), the emitted tokens every
//!    round as text re-encoded with the draft's tokenizer. Special tokens are never re-encoded as
//!    text: they map to the draft token with the same text (or the same BOS/EOS role) or are
//!    dropped. The draft's KV cache keeps the longest common prefix with what it saw last round,
//!    so a round feeds only the tokens that changed (after a partial acceptance, those after the
//!    accepted text).
//! 2. **Draft.** The draft writes k tokens of its own (greedy, or sampled with the target's
//!    warping; its q is not used), stopping at a special token.
//! 3. **Re-encode.** The draft's text is appended to the last few target tokens' text and encoded
//!    with the target's tokenizer; the target tokens that start exactly at the end of the
//!    context and spell the draft's text are the proposal. It is deterministic (`probs: None`),
//!    so verification treats it as a one-hot q and the output stays exactly target-distributed,
//!    greedy or sampled, whatever the draft did.
//!
//! Boundaries ([`text_proposal`]): a re-encoding may re-tokenize the end of the context (the
//! target emitted `a`,`b` where the text encodes as `ab`), which is harmless because only the
//! tokens after a token boundary at the context's end are proposed; when no such boundary
//! exists (a word split across it: the context ends in `hel` and the text encodes as `hello`)
//! the round proposes nothing rather than change emitted tokens. A draft ending in an
//! incomplete UTF-8 sequence is cut to its last complete character, and a context ending in one
//! (a byte token of a multi-byte character) is completed only by drafts that agree with its
//! bytes. [`Trailing::DropPartialWord`] can also drop a last word the draft may not have
//! finished (off by default, see [`Trailing`]).
//!
//! [`compare_vocabularies`] decides which mode a pair needs: the same ids ([`DraftModel`]), a
//! target vocabulary extending the draft's ([`ExtendedIds`]), or text ([`CrossVocab`]).

use super::faults::{active, Fault};
use super::proposer::{top_probability, DraftModel, Proposal, Proposer};
use crate::error::{Error, Result};
use crate::model::{CausalLm, HeadSubset, KvCache, LogitRows};
use crate::sampling::{argmax, warp, Probs, Sampler};
use crate::tokenizer::Tokenizer;
use std::collections::{HashMap, HashSet};

// ---------------------------------------------------------------------------------------------
// Vocabulary relation
// ---------------------------------------------------------------------------------------------

/// How a draft's vocabulary relates to the target's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VocabRelation {
    /// Same ids, same texts (equal vocabulary fingerprints).
    Identical,
    /// Every draft id is a target id with the same text and kind (ordinary or special); the
    /// target only adds ids after the draft's last one. Draft ids can be proposed as they are.
    Superset,
    /// Anything else: ids must be translated through text.
    Different,
}

/// How speculative decoding runs for a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairMode {
    /// [`DraftModel`]: draft ids are target ids, the draft's q is verified as is.
    SharedIds,
    /// [`ExtendedIds`]: draft ids are target ids; q is extended with zeros over the target's
    /// extra ids (exactly the draft's distribution, seen as one over the target's ids).
    ExtendedIds,
    /// [`CrossVocab`]: text re-encoded with the target's tokenizer, a deterministic proposal.
    Text,
    /// [`CrossVocab::with_shared_tokens`]: the draft samples among its tokens whose text is a
    /// target token, and that distribution, moved onto the target's ids, is verified by rejection
    /// sampling (token-level intersection, Timor et al. 2025).
    SharedTokens,
}

impl std::fmt::Display for VocabRelation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VocabRelation::Identical => "identical",
            VocabRelation::Superset => "superset",
            VocabRelation::Different => "different",
        })
    }
}

impl std::fmt::Display for PairMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PairMode::SharedIds => "shared-ids",
            PairMode::ExtendedIds => "extended-ids",
            PairMode::Text => "text",
            PairMode::SharedTokens => "shared-tokens",
        })
    }
}

/// What [`compare_vocabularies`] found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VocabComparison {
    pub relation: VocabRelation,
    pub mode: PairMode,
    pub draft_size: usize,
    pub target_size: usize,
    /// Draft ids whose token has the same text and kind at the same id in the target.
    pub same_ids: usize,
    /// Draft ids whose text (bytes; special tokens by their literal) is some target token's text.
    pub shared_texts: usize,
    /// Target ids beyond the draft's vocabulary (superset), and how many of them are special.
    pub extra_ids: usize,
    pub extra_special: usize,
}

/// A token's identity across vocabularies: the bytes it stands for, or a special token's literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TokenKey<'a> {
    Text(&'a [u8]),
    Special(String),
}

fn token_key(tok: &Tokenizer, id: u32) -> Option<TokenKey<'_>> {
    match tok.token_bytes(id) {
        Some(bytes) => Some(TokenKey::Text(bytes)),
        None => tok.token_text(id).map(TokenKey::Special),
    }
}

/// Classifies a pair. *Superset* means the draft's id table is a prefix of the target's: for
/// every draft id the target has the same token (same bytes, or the same special literal) at the
/// same id. That is exactly what makes direct id mapping (the identity) sound: a drafted id means
/// the same to the target, and the draft's q, padded with zeros, is a distribution over the
/// target's ids. (Merely containing every draft string at *other* ids would not do: the target's
/// context would still hold ids the draft cannot read.)
pub fn compare_vocabularies(draft: &Tokenizer, target: &Tokenizer) -> VocabComparison {
    let (nd, nt) = (draft.vocab_size(), target.vocab_size());
    let same_ids = (0..nd.min(nt) as u32).filter(|&i| token_key(draft, i).is_some_and(|k| Some(k) == token_key(target, i))).count();
    let target_keys: HashSet<TokenKey<'_>> = (0..nt as u32).filter_map(|i| token_key(target, i)).collect();
    let shared_texts = (0..nd as u32).filter(|&i| token_key(draft, i).is_some_and(|k| target_keys.contains(&k))).count();
    let relation = if draft.vocab_fingerprint() == target.vocab_fingerprint() {
        VocabRelation::Identical
    } else if nd < nt && same_ids == nd {
        VocabRelation::Superset
    } else {
        VocabRelation::Different
    };
    let (extra_ids, extra_special) = match relation {
        VocabRelation::Superset => (nt - nd, (nd..nt).filter(|&i| target.is_special(i as u32)).count()),
        _ => (0, 0),
    };
    let mode = match relation {
        VocabRelation::Identical => PairMode::SharedIds,
        VocabRelation::Superset => PairMode::ExtendedIds,
        VocabRelation::Different => PairMode::Text,
    };
    VocabComparison { relation, mode, draft_size: nd, target_size: nt, same_ids, shared_texts, extra_ids, extra_special }
}

// ---------------------------------------------------------------------------------------------
// Extended ids (superset vocabularies)
// ---------------------------------------------------------------------------------------------

/// A draft whose vocabulary is an id-prefix of the target's ([`VocabRelation::Superset`]): it
/// drafts as a [`DraftModel`], and its q rows are padded with zeros to the target's vocabulary.
/// Should the context ever contain a target id the draft cannot read (one of the extra ids), it
/// stops proposing for the rest of the generation (the target decodes alone: still exact).
pub struct ExtendedIds<'m> {
    inner: DraftModel<'m>,
    draft_vocab: usize,
    target_vocab: usize,
    /// Context tokens already checked to be readable by the draft.
    checked: usize,
    blind: bool,
}

impl<'m> ExtendedIds<'m> {
    /// `target_vocab`: the length of the target's probability rows.
    pub fn new(model: &'m dyn CausalLm, capacity: usize, target_vocab: usize) -> Result<Self> {
        let draft_vocab = model.config().vocab_size;
        Ok(ExtendedIds { inner: DraftModel::new(model, capacity)?, draft_vocab, target_vocab, checked: 0, blind: false })
    }

    /// Drafts from a truncated vocabulary ([`DraftModel::with_head_subset`]).
    pub fn with_head_subset(mut self, head: &'m HeadSubset) -> Self {
        self.inner = self.inner.with_head_subset(head);
        self
    }

    /// Whether the draft has stopped because the context holds an id it cannot read.
    pub fn is_blind(&self) -> bool {
        self.blind
    }

    fn readable(&mut self, context: &[u32]) -> bool {
        let from = self.checked.min(context.len());
        if context[from..].iter().any(|&t| t as usize >= self.draft_vocab) {
            self.blind = true;
        }
        self.checked = context.len();
        !self.blind
    }
}

impl Proposer for ExtendedIds<'_> {
    fn prefill(&mut self, context: &[u32]) -> Result<()> {
        if self.readable(context) {
            self.inner.prefill(context)?;
        }
        Ok(())
    }

    fn propose(&mut self, context: &[u32], k: usize, sampler: &mut Sampler) -> Result<Proposal> {
        if !self.readable(context) {
            return Ok(Proposal { tokens: vec![], probs: Some(vec![]) });
        }
        let mut proposal = self.inner.propose(context, k, sampler)?;
        if let Some(rows) = proposal.probs.as_mut() {
            for row in rows.iter_mut() {
                if row.as_slice().len() < self.target_vocab {
                    let mut padded = row.as_slice().to_vec();
                    padded.resize(self.target_vocab, 0.0);
                    *row = Probs::from_normalized(padded);
                }
            }
        }
        Ok(proposal)
    }

    fn rollback(&mut self, len: usize) {
        self.inner.rollback(len);
        self.checked = self.checked.min(len);
    }

    fn steps(&self) -> usize {
        self.inner.steps()
    }
}

// ---------------------------------------------------------------------------------------------
// Text codecs
// ---------------------------------------------------------------------------------------------

/// The two things text translation needs from a tokenizer.
pub trait TextCodec {
    /// Ids of `text` as plain text: no BOS, and special-token literals (`<|im_end|>` typed as
    /// characters) stay characters.
    fn encode_text(&self, text: &str) -> Result<Vec<u32>>;
    /// The bytes `id` stands for inside a text; `None` for special tokens.
    fn piece(&self, id: u32) -> Option<&[u8]>;
}

/// A [`Tokenizer`] as a [`TextCodec`]: a copy of its `tokenizers` pipeline that does not match
/// special-token literals in text.
pub struct Codec<'t> {
    tok: &'t Tokenizer,
    literal: tokenizers::Tokenizer,
}

impl<'t> Codec<'t> {
    pub fn new(tok: &'t Tokenizer) -> Self {
        let mut literal = tok.hf().clone();
        literal.set_encode_special_tokens(true);
        Codec { tok, literal }
    }

    pub fn tokenizer(&self) -> &'t Tokenizer {
        self.tok
    }
}

impl TextCodec for Codec<'_> {
    fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.literal.encode_fast(text, false).map_err(|e| Error::Tokenizer {
            origin: self.tok.origin().to_string(),
            problem: format!("encoding failed: {e}"),
        })?;
        Ok(enc.get_ids().to_vec())
    }

    fn piece(&self, id: u32) -> Option<&[u8]> {
        self.tok.token_bytes(id)
    }
}

// ---------------------------------------------------------------------------------------------
// The pure part: text ↔ tokens at a boundary
// ---------------------------------------------------------------------------------------------

/// Length of the trailing bytes of `bytes` that begin a UTF-8 character without finishing it
/// (0–3). Bytes that can never become valid UTF-8 do not count: they are invalid, not pending.
pub fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    // The last lead byte within the final 4 bytes, and the length it announces.
    for back in 1..=bytes.len().min(4) {
        let b = bytes[bytes.len() - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte
        }
        let need = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0, // ASCII (complete) or a byte that never starts a character
        };
        return if back < need && std::str::from_utf8(&bytes[bytes.len() - back..]).is_err_and(|e| e.error_len().is_none()) {
            back
        } else {
            0
        };
    }
    0
}

/// The ids after the token boundary at the end of `before` when `before + after` is encoded as
/// one text, provided they spell `after` exactly; `None` when the joint text is not UTF-8, when
/// a token straddles the boundary, or when the tokenizer does not reproduce `after` (it
/// normalized it, or produced a special/unknown token). A tokenizer that prepends a space to
/// every text (SentencePiece's `add_space_prefix`) only shifts the boundary.
pub fn encode_after(codec: &dyn TextCodec, before: &[u8], after: &[u8]) -> Result<Option<Vec<u32>>> {
    let joined = [before, after].concat();
    let Ok(text) = std::str::from_utf8(&joined) else { return Ok(None) };
    let ids = codec.encode_text(text)?;
    let mut pieces = Vec::with_capacity(ids.len());
    for &id in &ids {
        match codec.piece(id) {
            Some(p) => pieces.push(p),
            None => return Ok(None),
        }
    }
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let Some(boundary) = total.checked_sub(after.len()) else { return Ok(None) };
    let mut offset = 0;
    let mut start = None;
    for (i, p) in pieces.iter().enumerate() {
        if offset == boundary {
            start = Some(i);
            break;
        }
        offset += p.len();
    }
    let start = match start {
        Some(i) => i,
        None if offset == boundary => ids.len(),
        None => return Ok(None),
    };
    if pieces[start..].concat() != after {
        return Ok(None);
    }
    Ok(Some(ids[start..].to_vec()))
}

/// What to do with the draft's last word, which its next token might have continued.
///
/// For a given context, dropping it can only lower the tokens a round accepts (each proposed
/// token is judged on its own prefix) and saves only its verification rows. Measured greedy on
/// SmolLM2 → Qwen2.5-Coder 0.5B/1.5B (48 tokens, a code and a prose prompt, k = 2–8;
/// `tests/cross_vocab_real.rs`) it lowered τ in 7 of 12 runs (e.g. 3.36 → 2.47 at k = 4 on
/// code), left it equal in 4 and raised it in 1 (3.92 → 4.27), so `Keep` is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trailing {
    /// Propose it: if the target would have written a longer word, verification rejects it,
    /// which costs one verified position and nothing in output.
    #[default]
    Keep,
    /// When the draft's text ends inside a word (a letter or digit), drop that word (with the
    /// space before it) unless it is all there is.
    DropPartialWord,
}

/// Where [`Trailing::DropPartialWord`] cuts `text`: before its last word (and the single
/// whitespace character in front of it) when the text ends with a letter or digit.
pub fn partial_word_cut(text: &str) -> usize {
    let mut chars = text.char_indices().rev().peekable();
    if !chars.peek().is_some_and(|(_, c)| c.is_alphanumeric()) {
        return text.len();
    }
    let mut cut = 0;
    for (i, c) in chars {
        if !c.is_alphanumeric() {
            cut = if c.is_whitespace() { i } else { i + c.len_utf8() };
            break;
        }
    }
    cut
}

/// Settings of [`text_proposal`].
#[derive(Debug, Clone, Copy)]
pub struct ProposalRules {
    /// At most this many target tokens.
    pub k: usize,
    pub trailing: Trailing,
    /// How many of the context's last ordinary tokens give the re-encoding its left context.
    pub anchor_tokens: usize,
}

impl ProposalRules {
    pub fn new(k: usize) -> Self {
        ProposalRules { k, trailing: Trailing::default(), anchor_tokens: 8 }
    }
}

/// Why a round's proposal is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProposalOutcome {
    /// Target tokens proposed.
    Proposed,
    /// The draft wrote no text (and no mappable special token).
    NoDraft,
    /// The context ends inside a character whose remaining bytes the draft did not write.
    Disagrees,
    /// Only an incomplete character: nothing complete to propose yet.
    HeldBack,
    /// Re-encoding puts a token across the end of the context (a word split across it).
    Boundary,
}

/// A round's proposal in target ids, and how it came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextProposal {
    pub tokens: Vec<u32>,
    pub outcome: ProposalOutcome,
    /// The trailing-word rule removed text.
    pub trimmed: bool,
}

impl TextProposal {
    fn none(outcome: ProposalOutcome) -> Self {
        TextProposal { tokens: vec![], outcome, trimmed: false }
    }
}

/// The target tokens that continue `context` (target ids: prompt and emitted) with the draft's
/// text. `draft_text` continues the context's text *minus* any incomplete UTF-8 character at its
/// end (the draft was synced to complete characters only, see [`incomplete_utf8_tail`]), so it
/// must begin with those pending bytes. `end` is a target special token to append when the draft
/// stopped at a special token (its end of turn) and everything before it is proposed.
///
/// Never proposes anything that would change an emitted token: the proposal starts at a token
/// boundary exactly at the end of the context and spells exactly (a prefix of) the draft's text.
pub fn text_proposal(
    target: &dyn TextCodec,
    context: &[u32],
    draft_text: &[u8],
    end: Option<u32>,
    rules: &ProposalRules,
) -> Result<TextProposal> {
    if rules.k == 0 {
        return Ok(TextProposal::none(ProposalOutcome::NoDraft));
    }
    // The context's last ordinary tokens (none across a special token) and their text.
    let mut tail: Vec<&[u8]> = Vec::new();
    for &id in context.iter().rev().take(rules.anchor_tokens) {
        match target.piece(id) {
            Some(p) => tail.push(p),
            None => break,
        }
    }
    tail.reverse();
    let tail_bytes = tail.concat();
    let pending = &tail_bytes[tail_bytes.len() - incomplete_utf8_tail(&tail_bytes)..];
    if !draft_text.starts_with(pending) {
        return Ok(TextProposal::none(if pending.starts_with(draft_text) {
            if draft_text.is_empty() && end.is_none() {
                ProposalOutcome::NoDraft
            } else {
                ProposalOutcome::HeldBack
            }
        } else {
            ProposalOutcome::Disagrees
        }));
    }
    // New bytes, cut to whole characters (an incomplete or invalid sequence ends the text).
    let written = &draft_text[pending.len()..];
    let joined = [pending, written].concat();
    let valid = match std::str::from_utf8(&joined) {
        Ok(_) => joined.len(),
        Err(e) => e.valid_up_to(),
    };
    if valid < pending.len() {
        return Ok(TextProposal::none(ProposalOutcome::HeldBack));
    }
    let complete = valid == joined.len();
    let mut new = &written[..valid - pending.len()];
    let mut trimmed = false;
    if rules.trailing == Trailing::DropPartialWord && end.is_none() {
        // Judged on whole characters (the pending bytes complete one); a word that began before
        // the context's end is not dropped: that would leave nothing.
        let text = std::str::from_utf8(&joined[..valid]).expect("validated above");
        let cut = partial_word_cut(text);
        if cut > pending.len() && cut < text.len() {
            new = &new[..cut - pending.len()];
            trimmed = true;
        }
    }
    if new.is_empty() {
        return Ok(match end {
            Some(e) if complete && pending.is_empty() => TextProposal { tokens: vec![e], outcome: ProposalOutcome::Proposed, trimmed },
            _ if written.is_empty() => TextProposal::none(ProposalOutcome::NoDraft),
            _ => TextProposal::none(ProposalOutcome::HeldBack),
        });
    }
    // Left context for the re-encoding: the longest suffix of the tail, from a token boundary,
    // that forms valid UTF-8 with the new text.
    let mut offsets = Vec::with_capacity(tail.len() + 1);
    let mut at = 0;
    for p in &tail {
        offsets.push(at);
        at += p.len();
    }
    offsets.push(at);
    let anchor = offsets.iter().map(|&o| &tail_bytes[o..]).find(|before| std::str::from_utf8(&[before, new].concat()).is_ok());
    let Some(before) = anchor else { return Ok(TextProposal::none(ProposalOutcome::Boundary)) };
    let Some(mut tokens) = encode_after(target, before, new)? else {
        return Ok(TextProposal::none(ProposalOutcome::Boundary));
    };
    let whole = tokens.len() <= rules.k && !trimmed && complete;
    tokens.truncate(rules.k);
    if let (Some(e), true) = (end, whole) {
        if tokens.len() < rules.k {
            tokens.push(e);
        }
    }
    let outcome = if tokens.is_empty() { ProposalOutcome::NoDraft } else { ProposalOutcome::Proposed };
    Ok(TextProposal { tokens, outcome, trimmed })
}

// ---------------------------------------------------------------------------------------------
// The bridge between two tokenizers (built once per pair)
// ---------------------------------------------------------------------------------------------

/// Both tokenizers of a pair, their literal codecs and the special-token correspondence.
/// Cloning a large tokenizer takes a while: build this once per pair and lend it to every
/// [`CrossVocab`] proposer.
pub struct TextBridge<'t> {
    pub draft: Codec<'t>,
    pub target: Codec<'t>,
    to_draft: HashMap<u32, u32>,
    to_target: HashMap<u32, u32>,
    /// For each draft id: the target id of the same token (same bytes, or a special token mapped
    /// by literal or role), if the target has one.
    shared: Vec<Option<u32>>,
}

/// For each special token of `from`: the special token of `to` with the same text, else the one
/// with the same role (BOS to BOS, end-of-generation to the first end-of-generation id).
fn special_map(from: &Tokenizer, to: &Tokenizer) -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    for id in 0..from.vocab_size() as u32 {
        if !from.is_special(id) {
            continue;
        }
        let by_text = from.token_text(id).and_then(|t| to.token_to_id(&t)).filter(|&t| to.is_special(t));
        // A token that is both (GPT-NeoX's <|endoftext|>) ends text inside a context; a leading
        // BOS is handled by `prompt_to_draft`.
        let by_role = if from.eos_ids().contains(&id) {
            to.eos_ids().first().copied()
        } else if Some(id) == from.bos_id() {
            to.bos_id()
        } else {
            None
        };
        if let Some(t) = by_text.or(by_role) {
            map.insert(id, t);
        }
    }
    map
}

impl<'t> TextBridge<'t> {
    pub fn new(draft: &'t Tokenizer, target: &'t Tokenizer) -> Self {
        let to_target = special_map(draft, target);
        let by_text: HashMap<&[u8], u32> = (0..target.vocab_size() as u32).filter_map(|i| target.token_bytes(i).map(|b| (b, i))).collect();
        let shared = (0..draft.vocab_size() as u32)
            .map(|i| match draft.token_bytes(i) {
                Some(bytes) => by_text.get(bytes).copied(),
                None => to_target.get(&i).copied(),
            })
            .collect();
        TextBridge { to_draft: special_map(target, draft), to_target, draft: Codec::new(draft), target: Codec::new(target), shared }
    }

    /// The target id of the draft token `draft_id`, when the target has the same token.
    pub fn shared_token(&self, draft_id: u32) -> Option<u32> {
        self.shared.get(draft_id as usize).copied().flatten()
    }

    /// How many draft tokens the target shares.
    pub fn shared_tokens(&self) -> usize {
        self.shared.iter().filter(|t| t.is_some()).count()
    }

    /// The target special token standing for a draft special token, if any.
    pub fn special_to_target(&self, draft_id: u32) -> Option<u32> {
        self.to_target.get(&draft_id).copied()
    }

    /// The draft's ids for target ids that follow a draft context whose last text is `anchor`:
    /// each run of ordinary tokens becomes text re-encoded with the draft's tokenizer (the first
    /// run as a continuation of `anchor`), special tokens map by text or role (or are dropped).
    /// An incomplete UTF-8 character at the very end is left out: the draft writes it itself.
    pub fn to_draft(&self, target_ids: &[u32], anchor: &[u8]) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(target_ids.len() + 4);
        let mut anchor = anchor;
        let mut run: Vec<u8> = Vec::new();
        let flush = |run: &mut Vec<u8>, anchor: &[u8], last: bool, out: &mut Vec<u32>| -> Result<()> {
            if last {
                let keep = run.len() - incomplete_utf8_tail(run);
                run.truncate(keep);
            }
            if !run.is_empty() {
                let text = String::from_utf8_lossy(run);
                match encode_after(&self.draft, anchor, text.as_bytes())? {
                    Some(ids) => out.extend(ids),
                    None => out.extend(self.draft.encode_text(&text)?),
                }
                run.clear();
            }
            Ok(())
        };
        for &id in target_ids {
            match self.target.piece(id) {
                Some(p) => run.extend_from_slice(p),
                None => {
                    flush(&mut run, anchor, false, &mut out)?;
                    anchor = &[];
                    out.extend(self.to_draft.get(&id));
                }
            }
        }
        flush(&mut run, anchor, true, &mut out)?;
        Ok(out)
    }

    /// A draft context for a target prompt, when the draft's own rendering is not available:
    /// the prompt translated (a leading target BOS dropped), with the draft's BOS first if it
    /// wants one.
    pub fn prompt_to_draft(&self, target_prompt: &[u32]) -> Result<Vec<u32>> {
        let rest = match (target_prompt.split_first(), self.target.tokenizer().bos_id()) {
            (Some((&first, rest)), Some(bos)) if first == bos => rest,
            _ => target_prompt,
        };
        let mut ids = self.to_draft(rest, &[])?;
        let tok = self.draft.tokenizer();
        if let (true, Some(bos)) = (tok.wants_bos(), tok.bos_id()) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }
}

/// The text of the last ordinary tokens of `ids` (up to `n`, none across a special token),
/// starting at a character boundary: the left context for encoding what follows.
fn tail_text(codec: &dyn TextCodec, ids: &[u32], n: usize) -> Vec<u8> {
    let mut pieces: Vec<&[u8]> = ids.iter().rev().take(n).map_while(|&id| codec.piece(id)).collect();
    pieces.reverse();
    let bytes = pieces.concat();
    let start = bytes.iter().position(|&b| b & 0xC0 != 0x80).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

// ---------------------------------------------------------------------------------------------
// The proposer
// ---------------------------------------------------------------------------------------------

/// Counters of a [`CrossVocab`] proposer (what the rounds cost the draft and why some proposed
/// nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CrossVocabStats {
    pub rounds: u64,
    /// Draft tokens fed to bring the draft up to date (the last context token, always re-fed
    /// to get logits, included), over all rounds; prefill excluded.
    pub synced: u64,
    /// Draft tokens of the draft's context kept from the previous round (its KV cache reused).
    pub reused: u64,
    /// Draft tokens written.
    pub drafted: u64,
    /// Target tokens proposed.
    pub proposed: u64,
    /// Rounds ending without a proposal, by reason.
    pub no_draft: u64,
    pub disagrees: u64,
    pub held_back: u64,
    pub boundary: u64,
    /// Rounds skipped because the draft's context would not fit its cache.
    pub overflow: u64,
    /// Rounds whose trailing partial word was dropped.
    pub trimmed: u64,
}

/// A draft model with its own tokenizer drafting for a target with another (module docs).
pub struct CrossVocab<'m> {
    model: &'m dyn CausalLm,
    bridge: &'m TextBridge<'m>,
    cache: KvCache,
    /// The draft ids whose keys/values are in `cache`.
    seen: Vec<u32>,
    /// The draft's own rendering of the prompt, if given.
    draft_prompt: Option<Vec<u32>>,
    /// Draft ids standing for the first `prefix_len` target tokens (the prompt).
    prefix: Vec<u32>,
    prefix_len: usize,
    prefix_anchor: Vec<u8>,
    trailing: Trailing,
    confidence_stop: Option<f32>,
    /// A truncated draft vocabulary: logits for these draft ids only.
    head: Option<&'m HeadSubset>,
    /// Draft among the tokens the target shares and hand over q (token-level intersection)
    /// instead of re-encoded text.
    shared_tokens: bool,
    steps: usize,
    stats: CrossVocabStats,
}

impl<'m> CrossVocab<'m> {
    /// `capacity`: draft KV positions (the draft's tokenizer may need more tokens than the
    /// target's for the same text; rounds that would not fit propose nothing).
    pub fn new(model: &'m dyn CausalLm, bridge: &'m TextBridge<'m>, capacity: usize) -> Result<Self> {
        Ok(CrossVocab {
            cache: model.new_cache(capacity)?,
            model,
            bridge,
            seen: Vec::new(),
            draft_prompt: None,
            prefix: Vec::new(),
            prefix_len: 0,
            prefix_anchor: Vec::new(),
            trailing: Trailing::default(),
            confidence_stop: None,
            head: None,
            shared_tokens: false,
            steps: 0,
            stats: CrossVocabStats::default(),
        })
    }

    /// The prompt as the draft sees it (e.g. rendered with the draft's own chat template). The
    /// default translates the target's prompt ids.
    pub fn with_draft_prompt(mut self, ids: Vec<u32>) -> Self {
        self.draft_prompt = Some(ids);
        self
    }

    pub fn with_trailing(mut self, trailing: Trailing) -> Self {
        self.trailing = trailing;
        self
    }

    /// Ends each draft at the first position where the draft's top probability (softmax at
    /// temperature 1) is below `threshold`.
    pub fn with_confidence_stop(mut self, threshold: f32) -> Self {
        self.confidence_stop = Some(threshold);
        self
    }

    /// Drafts among a truncated vocabulary of the draft's ids (its proposals are one-hot text,
    /// so nothing about verification changes; the draft's steps get cheaper).
    pub fn with_head_subset(mut self, head: &'m HeadSubset) -> Self {
        self.head = Some(head);
        self
    }

    /// Token-level intersection ([`PairMode::SharedTokens`]): each drafted token is drawn from
    /// the draft's distribution restricted to the tokens the target shares (renormalised), and
    /// that distribution, moved onto the target's ids, is the q verification checks — exact for
    /// sampled decoding, and free of the text mode's word boundaries.
    pub fn with_shared_tokens(mut self) -> Self {
        self.shared_tokens = true;
        self
    }

    pub fn stats(&self) -> &CrossVocabStats {
        &self.stats
    }

    /// The draft id at position `j` of a logit row.
    fn draft_id(&self, j: u32) -> u32 {
        self.head.map_or(j, |h| h.ids()[j as usize])
    }

    /// Shared-token drafting (see [`with_shared_tokens`](Self::with_shared_tokens)) from the
    /// logits `row` of the draft's context.
    fn propose_shared(&mut self, mut row: Vec<f32>, k: usize, sampler: &mut Sampler) -> Result<Proposal> {
        let params = *sampler.params();
        let vocab = self.bridge.target.tokenizer().vocab_size();
        let unrenormalized = active(Fault::UnrenormalizedQ);
        let (mut tokens, mut probs) = (Vec::with_capacity(k), Vec::with_capacity(k));
        for i in 0..k {
            // The deliberate fault keeps the distribution from before the restriction to report.
            let before = unrenormalized.then(|| warp(&row, &params));
            for (j, x) in row.iter_mut().enumerate() {
                if self.bridge.shared_token(self.draft_id(j as u32)).is_none() {
                    *x = f32::NEG_INFINITY;
                }
            }
            if row.iter().all(|x| *x == f32::NEG_INFINITY) || self.confidence_stop.is_some_and(|t| top_probability(&row) < t) {
                break;
            }
            let q = warp(&row, &params);
            let j = if params.is_greedy() { argmax(&row) } else { q.sample(sampler.uniform()) };
            let d = self.draft_id(j);
            let t = self.bridge.shared_token(d).expect("only shared tokens have probability");
            let mut full = vec![0f32; vocab];
            for (j, &p) in q.as_slice().iter().enumerate() {
                if p > 0.0 {
                    let at = self.bridge.shared_token(self.draft_id(j as u32)).expect("masked above");
                    full[at as usize] = before.as_ref().map_or(p, |b| b.as_slice()[j]);
                }
            }
            tokens.push(t);
            probs.push(Probs::from_normalized(full));
            self.stats.drafted += 1;
            if i + 1 < k {
                row = self.forward_last(&[d])?;
                self.seen.push(d);
            }
        }
        self.stats.proposed += tokens.len() as u64;
        if tokens.is_empty() {
            self.stats.no_draft += 1;
        }
        Ok(Proposal { tokens, probs: Some(probs) })
    }

    /// One draft forward: logits of the last position, over the head subset's ids if any.
    fn forward_last(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let logits = self.model.forward_head(tokens, &mut self.cache, LogitRows::Last, self.head)?;
        self.steps += 1;
        Ok(logits.last().to_vec())
    }

    /// The draft's ids for the target context `context`.
    fn draft_context(&self, context: &[u32]) -> Result<Vec<u32>> {
        let mut ids = self.prefix.clone();
        ids.extend(self.bridge.to_draft(&context[self.prefix_len.min(context.len())..], &self.prefix_anchor)?);
        Ok(ids)
    }

    /// Feeds what `ctx` adds to the longest prefix the cache shares with it (at least its last
    /// token) and returns the logits of the last position.
    fn catch_up(&mut self, ctx: &[u32]) -> Result<Vec<f32>> {
        let common = self.seen.iter().zip(ctx).take_while(|(a, b)| a == b).count();
        let keep = common.min(ctx.len() - 1).min(self.cache.len());
        self.cache.truncate(keep);
        self.seen.truncate(keep);
        let feed = ctx[keep..].to_vec();
        let row = self.forward_last(&feed)?;
        self.stats.reused += keep as u64;
        self.stats.synced += feed.len() as u64;
        self.seen.extend_from_slice(&feed);
        Ok(row)
    }
}

impl Proposer for CrossVocab<'_> {
    fn prefill(&mut self, context: &[u32]) -> Result<()> {
        self.prefix_len = context.len();
        self.prefix = match &self.draft_prompt {
            Some(ids) => ids.clone(),
            None => self.bridge.prompt_to_draft(context)?,
        };
        self.prefix_anchor = tail_text(&self.bridge.draft, &self.prefix, 8);
        self.cache.truncate(0);
        self.seen.clear();
        // Everything but the last token: the first round feeds it and drafts from its logits.
        if self.prefix.len() > 1 && self.prefix.len() < self.cache.capacity() {
            let head = &self.prefix[..self.prefix.len() - 1];
            self.model.forward_head(head, &mut self.cache, LogitRows::Last, self.head)?;
            self.seen = head.to_vec();
        }
        Ok(())
    }

    fn propose(&mut self, context: &[u32], k: usize, sampler: &mut Sampler) -> Result<Proposal> {
        self.stats.rounds += 1;
        let nothing = Proposal { tokens: vec![], probs: None };
        if k == 0 {
            return Ok(nothing);
        }
        let ctx = self.draft_context(context)?;
        if ctx.is_empty() {
            self.stats.no_draft += 1;
            return Ok(nothing);
        }
        if ctx.len() + k > self.cache.capacity() {
            self.stats.overflow += 1;
            return Ok(nothing);
        }
        let params = *sampler.params();
        let mut row = self.catch_up(&ctx)?;
        if self.shared_tokens {
            return self.propose_shared(row, k, sampler);
        }
        let mut text: Vec<u8> = Vec::new();
        let mut end = None;
        for i in 0..k {
            if self.confidence_stop.is_some_and(|t| top_probability(&row) < t) {
                break;
            }
            let j = if params.is_greedy() { argmax(&row) } else { warp(&row, &params).sample(sampler.uniform()) };
            let d = self.draft_id(j);
            self.stats.drafted += 1;
            match self.bridge.draft.piece(d) {
                Some(piece) => text.extend_from_slice(piece),
                None => {
                    // A special token (end of turn, …): the draft's text ends here.
                    end = self.bridge.special_to_target(d);
                    break;
                }
            }
            if i + 1 < k {
                row = self.forward_last(&[d])?;
                self.seen.push(d);
            }
        }
        let rules = ProposalRules { k, trailing: self.trailing, anchor_tokens: 8 };
        let p = text_proposal(&self.bridge.target, context, &text, end, &rules)?;
        let s = &mut self.stats;
        match p.outcome {
            ProposalOutcome::Proposed => s.proposed += p.tokens.len() as u64,
            ProposalOutcome::NoDraft => s.no_draft += 1,
            ProposalOutcome::Disagrees => s.disagrees += 1,
            ProposalOutcome::HeldBack => s.held_back += 1,
            ProposalOutcome::Boundary => s.boundary += 1,
        }
        s.trimmed += u64::from(p.trimmed);
        Ok(Proposal { tokens: p.tokens, probs: None })
    }

    /// Nothing to undo here: the next round derives the draft's context from the target's
    /// accepted tokens and keeps the cache's longest common prefix with it (the decoder's
    /// `rollback(len)` counts target tokens, which have no fixed draft position).
    fn rollback(&mut self, _len: usize) {}

    fn steps(&self) -> usize {
        self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy tokenizer: longest match over a fixed vocabulary of byte strings, every other byte
    /// as a byte token (id 1000 + byte), optionally a space prepended to every text, and special
    /// tokens (ids ≥ 2000) that have no text.
    struct Toy {
        vocab: Vec<Vec<u8>>,
        bytes: Vec<Vec<u8>>,
        prefix_space: bool,
    }

    const SPECIAL: u32 = 2000;

    impl Toy {
        fn new(words: &[&str]) -> Self {
            Toy { vocab: words.iter().map(|w| w.as_bytes().to_vec()).collect(), bytes: (0..=255u8).map(|b| vec![b]).collect(), prefix_space: false }
        }
        fn byte(b: u8) -> u32 {
            1000 + b as u32
        }
        fn id(&self, w: &str) -> u32 {
            self.vocab.iter().position(|v| v == w.as_bytes()).unwrap_or_else(|| panic!("{w:?} not in the toy vocabulary")) as u32
        }
        fn ids(&self, words: &[&str]) -> Vec<u32> {
            words.iter().map(|w| self.id(w)).collect()
        }
    }

    impl TextCodec for Toy {
        fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
            let full = if self.prefix_space { format!(" {text}") } else { text.to_string() };
            let b = full.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                let best = (0..self.vocab.len()).filter(|&v| b[i..].starts_with(&self.vocab[v])).max_by_key(|&v| self.vocab[v].len());
                match best {
                    Some(v) => {
                        out.push(v as u32);
                        i += self.vocab[v].len();
                    }
                    None => {
                        out.push(Toy::byte(b[i]));
                        i += 1;
                    }
                }
            }
            Ok(out)
        }
        fn piece(&self, id: u32) -> Option<&[u8]> {
            match id {
                i if (i as usize) < self.vocab.len() => Some(&self.vocab[i as usize]),
                1000..=1255 => Some(&self.bytes[(id - 1000) as usize]),
                _ => None,
            }
        }
    }

    fn propose(t: &Toy, context: &[u32], draft: &str, k: usize) -> TextProposal {
        text_proposal(t, context, draft.as_bytes(), None, &ProposalRules::new(k)).unwrap()
    }

    #[test]
    fn proposes_the_target_tokens_after_the_context() {
        let t = Toy::new(&["The", " cat", " sat", " on", " the", " mat", "."]);
        let ctx = t.ids(&["The", " cat"]);
        let p = propose(&t, &ctx, " sat on the mat.", 8);
        assert_eq!((p.tokens, p.outcome), (t.ids(&[" sat", " on", " the", " mat", "."]), ProposalOutcome::Proposed));
        // At most k tokens.
        assert_eq!(propose(&t, &ctx, " sat on the mat.", 2).tokens, t.ids(&[" sat", " on"]));
    }

    #[test]
    fn a_word_split_across_the_boundary_proposes_nothing() {
        // The context ends in "hel"; the text re-encodes as "hello": a token straddles the end.
        let t = Toy::new(&["hel", "hello", " world", "lo"]);
        let ctx = t.ids(&["hel"]);
        let p = propose(&t, &ctx, "lo world", 4);
        assert_eq!((p.tokens.len(), p.outcome), (0, ProposalOutcome::Boundary));
        // Where the tokenizer itself splits the word there, the rest is proposed.
        let t = Toy::new(&["hel", "lo", " world"]);
        assert_eq!(propose(&t, &t.ids(&["hel"]), "lo world", 4).tokens, t.ids(&["lo", " world"]));
    }

    #[test]
    fn re_tokenized_context_tokens_stay_as_emitted() {
        // The target emitted "a","b" where the text encodes as "ab": the proposal starts after them.
        let t = Toy::new(&["a", "b", "ab", " c", "abc"]);
        let ctx = t.ids(&["a", "b"]);
        let p = propose(&t, &ctx, " c", 4);
        assert_eq!(p.tokens, t.ids(&[" c"]));
        // But "abc" would swallow the boundary: nothing.
        assert_eq!(propose(&t, &ctx, "c", 4).outcome, ProposalOutcome::Boundary);
    }

    #[test]
    fn multi_byte_characters_at_both_ends() {
        let t = Toy::new(&["caf", "é", " ok"]);
        // The draft's text ends in the first byte of "é" (0xC3): held back to the last whole char.
        let p = text_proposal(&t, &t.ids(&["caf"]), b" ok\xC3", None, &ProposalRules::new(4)).unwrap();
        assert_eq!(p.tokens, t.ids(&[" ok"]));
        let p = text_proposal(&t, &t.ids(&["caf"]), b"\xC3", None, &ProposalRules::new(4)).unwrap();
        assert_eq!(p.outcome, ProposalOutcome::HeldBack);
        // The context ends in byte token 0xC3; a draft completing it with 0xA9 continues it, but
        // this vocabulary encodes "é" whole: the boundary is inside a token.
        let ctx = [t.id("caf"), Toy::byte(0xC3)];
        let p = text_proposal(&t, &ctx, "é ok".as_bytes(), None, &ProposalRules::new(4)).unwrap();
        assert_eq!(p.outcome, ProposalOutcome::Boundary);
        // Without an "é" token the remaining byte is a token of its own and is proposed.
        let t2 = Toy::new(&["caf", " ok"]);
        let ctx2 = [t2.id("caf"), Toy::byte(0xC3)];
        let p = text_proposal(&t2, &ctx2, "é ok".as_bytes(), None, &ProposalRules::new(4)).unwrap();
        assert_eq!(p.tokens, vec![Toy::byte(0xA9), t2.id(" ok")]);
        // A draft that writes another character than the one begun disagrees.
        let p = text_proposal(&t2, &ctx2, "€".as_bytes(), None, &ProposalRules::new(4)).unwrap();
        assert_eq!(p.outcome, ProposalOutcome::Disagrees);
        // Three- and four-byte characters.
        let t3 = Toy::new(&["x"]);
        let euro = "€".as_bytes(); // E2 82 AC
        let ctx3 = [t3.id("x"), Toy::byte(euro[0]), Toy::byte(euro[1])];
        let p = text_proposal(&t3, &ctx3, "€x".as_bytes(), None, &ProposalRules::new(4)).unwrap();
        assert_eq!(p.tokens, vec![Toy::byte(0xAC), t3.id("x")]);
    }

    #[test]
    fn empty_drafts_and_special_ends() {
        let t = Toy::new(&["Hi", "."]);
        let ctx = t.ids(&["Hi"]);
        assert_eq!(propose(&t, &ctx, "", 4).outcome, ProposalOutcome::NoDraft);
        assert_eq!(propose(&t, &ctx, "", 0).outcome, ProposalOutcome::NoDraft);
        // The draft ended its turn right away: propose the target's end-of-turn token.
        let p = text_proposal(&t, &ctx, b"", Some(SPECIAL), &ProposalRules::new(4)).unwrap();
        assert_eq!(p.tokens, vec![SPECIAL]);
        // After its text, if everything fits in k.
        let p = text_proposal(&t, &ctx, b".", Some(SPECIAL), &ProposalRules::new(4)).unwrap();
        assert_eq!(p.tokens, vec![t.id("."), SPECIAL]);
        let p = text_proposal(&t, &ctx, b".", Some(SPECIAL), &ProposalRules::new(1)).unwrap();
        assert_eq!(p.tokens, vec![t.id(".")]);
    }

    #[test]
    fn the_anchor_stops_at_special_tokens() {
        // Context: "ab" <special> "a". The anchor is "a" alone (nothing before a special token is
        // re-encoded with it): "b" would make "ab" straddle the boundary, " x" starts afresh.
        let t = Toy::new(&["a", "b", "ab", " x"]);
        let ctx = [t.id("ab"), SPECIAL, t.id("a")];
        assert_eq!(propose(&t, &ctx, "b", 4).outcome, ProposalOutcome::Boundary);
        assert_eq!(propose(&t, &ctx, " x", 4).tokens, t.ids(&[" x"]));
        // Right after a special token the text is encoded on its own.
        assert_eq!(propose(&t, &[SPECIAL], "ab x", 4).tokens, t.ids(&["ab", " x"]));
    }

    #[test]
    fn a_space_prefixing_tokenizer_only_shifts_the_boundary() {
        let mut t = Toy::new(&[" the", " cat", "the", " "]);
        t.prefix_space = true;
        assert_eq!(encode_after(&t, b" the", b" cat").unwrap(), Some(t.ids(&[" cat"])));
        assert_eq!(propose(&t, &t.ids(&[" the"]), " cat", 4).tokens, t.ids(&[" cat"]));
        // Without any left context the prepended space straddles nothing only if the tokenizer
        // gives it a token of its own; here " the" swallows it.
        assert_eq!(encode_after(&t, b"", b"the").unwrap(), None);
    }

    #[test]
    fn trailing_partial_words() {
        let t = Toy::new(&[" the", " theory", " of", " rel", "ativity"]);
        let ctx = t.ids(&[" the"]);
        let keep = propose(&t, &ctx, " theory of rel", 8);
        assert_eq!(keep.tokens, t.ids(&[" theory", " of", " rel"]));
        let rules = ProposalRules { trailing: Trailing::DropPartialWord, ..ProposalRules::new(8) };
        let drop = text_proposal(&t, &ctx, b" theory of rel", None, &rules).unwrap();
        assert_eq!((drop.tokens, drop.trimmed), (t.ids(&[" theory", " of"]), true));
        // A single word is kept: there is nothing else to propose.
        let one = text_proposal(&t, &ctx, b" theory", None, &rules).unwrap();
        assert_eq!((one.tokens, one.trimmed), (t.ids(&[" theory"]), false));
        // Ending in punctuation or space is not a partial word.
        assert_eq!(partial_word_cut(" of."), 4);
        assert_eq!(partial_word_cut(" a b"), 2);
        assert_eq!(partial_word_cut("x(yz"), 2);
        assert_eq!(partial_word_cut("naïve"), 0);
    }

    #[test]
    fn incomplete_utf8_tails() {
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
        assert_eq!(incomplete_utf8_tail(b"ab\xC3"), 1);
        assert_eq!(incomplete_utf8_tail("é".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(b"\xE2\x82"), 2);
        assert_eq!(incomplete_utf8_tail(b"\xF0\x9F\x98"), 3);
        assert_eq!(incomplete_utf8_tail("😀".as_bytes()), 0);
        // Invalid bytes are not pending: no continuation makes them valid.
        assert_eq!(incomplete_utf8_tail(b"a\xA9"), 0);
        assert_eq!(incomplete_utf8_tail(b"a\xFF"), 0);
        assert_eq!(incomplete_utf8_tail(b"\xE0\x80"), 0);
        assert_eq!(incomplete_utf8_tail(b""), 0);
    }

    #[test]
    fn encode_after_checks_the_spelling() {
        let t = Toy::new(&["ab", "c"]);
        assert_eq!(encode_after(&t, b"ab", b"c").unwrap(), Some(vec![t.id("c")]));
        assert_eq!(encode_after(&t, b"a", b"bc").unwrap(), None, "\"ab\" straddles the boundary");
        assert_eq!(encode_after(&t, b"ab", b"").unwrap(), Some(vec![]));
        assert_eq!(encode_after(&t, b"\xC3", b"x").unwrap(), None, "not UTF-8");
    }
}
