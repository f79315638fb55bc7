//! Plugging a custom proposer into the speculative decoder.
//!
//! `PromptLookup` drafts by copying: it finds the most recent earlier occurrence of the last two
//! tokens and proposes what followed them. It returns no distributions, so the decoder verifies its
//! tokens as a deterministic (one-hot) proposal and the output stays exactly the target's.
//!
//! ```sh
//! cargo run --release -p specdec-engine --example custom_proposer -- smollm2-135m
//! ```

use burn::tensor::Device;
use engine::generate::GenerationConfig;
use engine::sampling::Sampler;
use engine::speculative::{generate_speculative, Proposal, Proposer, SpecConfig};

/// Proposes the continuation of the latest earlier match of the context's last two tokens.
struct PromptLookup;

impl Proposer for PromptLookup {
    fn propose(&mut self, context: &[u32], k: usize, _sampler: &mut Sampler) -> engine::Result<Proposal> {
        let n = context.len();
        if n < 3 || k == 0 {
            return Ok(Proposal::default());
        }
        let key = &context[n - 2..];
        let tokens = (0..n - 2)
            .rev()
            .find(|&i| &context[i..i + 2] == key)
            .map(|i| context[i + 2..].iter().take(k).copied().collect())
            .unwrap_or_default();
        Ok(Proposal { tokens, probs: None })
    }

    fn rollback(&mut self, _len: usize) {}
}

fn main() -> engine::Result<()> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "smollm2-135m".into());
    let loaded = engine::load_model(&spec, &Device::flex())?;
    let text = "List the days of the week, then list them again in the same order: Monday, Tuesday,";
    let prompt = loaded.tokenizer.encode(text, true)?;
    let cfg = SpecConfig::fixed(GenerationConfig { max_new_tokens: 48, ..Default::default() }, 4);
    let out = generate_speculative(loaded.model.as_ref(), &mut PromptLookup, &prompt, loaded.tokenizer.eos_ids(), &cfg, |_| {})?;
    println!("{text}{}", loaded.tokenizer.decode(&out.generation.tokens)?);
    let m = &out.metrics;
    println!(
        "drafted {} accepted {} (α̂ = {:.2}) in {} verifications (τ = {:.2}); {:.1} tok/s",
        m.drafted,
        m.accepted,
        m.alpha(),
        m.iterations,
        m.tau(),
        out.generation.decode_tok_s()
    );
    Ok(())
}
