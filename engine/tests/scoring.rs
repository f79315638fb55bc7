//! Continuation log-likelihoods (the scoring behind `specdec eval --multiple-choice`) against
//! the ones transformers' logits give for the tiny Llama and Qwen2 fixtures: the same token
//! sequence split into a context and continuations of several lengths, scored through the
//! shared-context cache, must sum the same log-probabilities.

mod common;

use burn::tensor::Device;
use common::{fixtures, read_json};
use engine::gguf::Gguf;
use engine::model::{load_gguf, load_hf, CausalLm};
use engine::safetensors::HfModelDir;
use engine::scoring::{log_prob, score_continuations};
use engine::Error;

/// Logits match transformers within 2·10⁻⁵ (tiny_models.rs), so a log-probability within
/// 4·10⁻⁵ per token; the longest continuation here has 7 tokens.
const TOL: f64 = 3e-4;

fn reference(name: &str) -> (Vec<u32>, Vec<Vec<f32>>) {
    let j = read_json(&fixtures().join("tiny").join(format!("{name}.ref.json")));
    let tokens = j["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let logits = j["logits"].as_array().unwrap().iter().map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()).collect();
    (tokens, logits)
}

fn models(name: &str, device: &Device) -> Vec<(String, Box<dyn CausalLm>)> {
    let tiny = fixtures().join("tiny");
    let gguf = load_gguf(&Gguf::open(tiny.join(format!("{name}.gguf"))).unwrap(), device).unwrap();
    let hf = load_hf(&HfModelDir::open(tiny.join(format!("{name}-hf"))).unwrap(), device).unwrap();
    vec![(format!("{name} gguf"), gguf), (format!("{name} safetensors"), hf)]
}

#[test]
fn continuation_log_likelihoods_match_transformers() {
    let device = Device::flex();
    for name in ["llama", "qwen2"] {
        let (tokens, logits) = reference(name);
        let split = 5;
        let context = &tokens[..split];
        // Longest first, so a cache left holding it would corrupt the shorter ones after it.
        let continuations: Vec<Vec<u32>> = vec![tokens[split..].to_vec(), tokens[split..split + 1].to_vec(), tokens[split..split + 3].to_vec()];
        // transformers' logits at position i predict token i + 1.
        let expected = |c: &[u32]| -> (f64, bool) {
            let mut ll = 0.0;
            let mut greedy = true;
            for (j, &t) in c.iter().enumerate() {
                let row = &logits[split - 1 + j];
                ll += log_prob(row, t);
                greedy &= engine::sampling::argmax(row) == t;
            }
            (ll, greedy)
        };
        for (what, model) in models(name, &device) {
            let scores = score_continuations(model.as_ref(), context, &continuations).unwrap();
            for (c, s) in continuations.iter().zip(&scores) {
                let (ll, greedy) = expected(c);
                eprintln!("{what}: {} tokens: {:.6} (transformers {ll:.6})", c.len(), s.log_likelihood);
                assert_eq!(s.tokens, c.len());
                assert!(s.log_likelihood < 0.0 && (s.log_likelihood - ll).abs() < TOL, "{what}: {} tokens: {} vs transformers {ll}", c.len(), s.log_likelihood);
                assert_eq!(s.greedy, greedy, "{what}: {} tokens: greedy flag", c.len());
            }
            // The order of continuations does not matter, to the bit.
            let reversed: Vec<Vec<u32>> = continuations.iter().rev().cloned().collect();
            let again = score_continuations(model.as_ref(), context, &reversed).unwrap();
            for (a, b) in scores.iter().zip(again.iter().rev()) {
                assert_eq!(a.log_likelihood.to_bits(), b.log_likelihood.to_bits(), "{what}: order changed a score");
            }
        }
    }
}

#[test]
fn unusable_requests_are_errors() {
    let device = Device::flex();
    let (_, model) = models("llama", &device).remove(0);
    let vocab = model.config().vocab_size as u32;
    for (context, continuations, expect) in [
        (vec![], vec![vec![1]], "empty context"),
        (vec![1, 2], vec![vec![3], vec![]], "continuation 1 is empty"),
        (vec![1, 2], vec![vec![vocab]], "token id"),
        (vec![vocab + 7, 2], vec![vec![3]], "token id"),
    ] {
        match score_continuations(model.as_ref(), &context, &continuations) {
            Err(e @ Error::InvalidParameter { .. }) => assert!(e.to_string().contains(expect), "{e}"),
            other => panic!("{context:?} / {continuations:?}: {other:?}"),
        }
    }
}
