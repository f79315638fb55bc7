//! What a speculative round costs on this machine, measured before a run: the target's forward
//! over n tokens relative to one token (the verification curve v(n)) and a draft forward relative
//! to a target one (c). The `auto` schedule weighs expected tokens against these costs; measuring
//! them here keeps the clock out of the engine's decisions.

use anyhow::Result;
use engine::model::{CausalLm, HeadSubset, LogitRows};
use engine::speculative::{Costs, MAX_AUTO_K};
use std::time::Instant;

/// Context the forwards are timed after (attention over it is part of a real step's cost).
const CONTEXT: usize = 32;

/// Median seconds of `runs` calls of `f`.
fn median_time(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Seconds of one forward over `n` tokens after [`CONTEXT`] tokens (all logit rows, as
/// verification needs; over `head`'s ids only if given), median of `runs` after one warm-up.
fn forward_time(model: &dyn CausalLm, head: Option<&HeadSubset>, n: usize, runs: usize) -> Result<f64> {
    let vocab = model.config().vocab_size as u32;
    let tokens: Vec<u32> = (0..(CONTEXT + n) as u32).map(|i| (i * 7919 + 11) % vocab).collect();
    let mut cache = model.new_cache(CONTEXT + n)?;
    let forward = |tokens: &[u32], cache: &mut engine::model::KvCache, rows| -> Result<()> {
        model.forward_head(tokens, cache, rows, head)?;
        Ok(())
    };
    forward(&tokens[..CONTEXT], &mut cache, LogitRows::Last)?;
    forward(&tokens[CONTEXT..], &mut cache, LogitRows::All)?;
    cache.truncate(CONTEXT);
    median_time(runs, || {
        forward(&tokens[CONTEXT..], &mut cache, LogitRows::All)?;
        cache.truncate(CONTEXT);
        Ok(())
    })
}

/// The costs of rounds of up to `max_k` drafts with `draft` (a draft model — drafting over
/// `head`'s ids if it has a truncated vocabulary — or `None` for a proposer whose drafting time is
/// negligible, as prompt lookup's) for `target`.
pub fn measure(target: &dyn CausalLm, draft: Option<&dyn CausalLm>, head: Option<&HeadSubset>, max_k: usize) -> Result<Costs> {
    let one = forward_time(target, None, 1, 5)?;
    // The curve at a few sizes up to max_k + 1; the engine interpolates between them.
    let top = (max_k + 1).min(MAX_AUTO_K + 1);
    let mut sizes: Vec<usize> = [2, 3, 5, 9, 17].into_iter().filter(|&n| n < top).collect();
    sizes.push(top);
    let mut curve = vec![(1, 1.0)];
    for n in sizes.into_iter().filter(|&n| n > 1) {
        curve.push((n, forward_time(target, None, n, 5)? / one));
    }
    let c = match draft {
        Some(d) => forward_time(d, head, 1, 5)? / one,
        None => 0.0,
    };
    Ok(Costs::from_curve(c, &curve))
}

/// One line for logs: c and v at the measured sizes.
pub fn describe(costs: &Costs, max_k: usize) -> String {
    let v: Vec<String> = [2, 3, 5, 9, 17].into_iter().filter(|&n| n <= max_k + 1).map(|n| format!("v({n}) {:.2}", costs.verify_cost(n))).collect();
    format!("c {:.3}, {}", costs.draft_step, v.join(", "))
}
