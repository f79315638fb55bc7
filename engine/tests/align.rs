//! Draft alignment on the tiny fixtures: the LoRA gradients from Burn's autodiff agree with
//! finite differences (Llama GGUF with its permuted Q/K rows, Qwen2, Gemma3); PEFT's
//! initialization changes no logit; a short run on a toy task lowers the loss; and the exported
//! PEFT adapter, loaded back on the host kernels, reproduces the trained model.

mod common;

use burn::tensor::Device;
use common::{fixtures, max_abs_diff};
use engine::align::{evaluate, train::example_loss, Example, Loss, SparseDistribution, TrainConfig, Trainer};
use engine::gguf::Gguf;
use engine::model::{with_burn_ops, CausalLm, FamilyConfig, LogitRows, LoraAdapter, LoraSpec, LoraTraining};
use engine::safetensors::HfModelDir;
use rand::{Rng, SeedableRng};

fn autodiff() -> Device {
    Device::flex().autodiff()
}

fn family(arch: &str) -> (FamilyConfig, Box<dyn engine::model::WeightSource>) {
    if arch == "gemma3" {
        let dir = HfModelDir::open(fixtures().join("tiny").join("gemma3-hf")).unwrap();
        (dir.family_config().unwrap(), Box::new(dir))
    } else {
        let g = Gguf::open(fixtures().join("tiny").join(format!("{arch}.gguf"))).unwrap();
        (FamilyConfig::from_gguf(&g).unwrap(), Box::new(g))
    }
}

fn trainable(arch: &str, modules: &[&str], seed: u64) -> (Box<dyn CausalLm>, LoraTraining) {
    let (fam, src) = family(arch);
    let spec = LoraSpec { rank: 2, alpha: 4.0, modules: modules.iter().map(|m| m.to_string()).collect() };
    let training = LoraTraining::new(fam.base(), spec, seed, &autodiff()).unwrap();
    let model = training.load(fam, src.as_ref(), &autodiff()).unwrap();
    (model, training)
}

/// A sequence of 10 tokens whose last 6 positions are trained toward random distributions over
/// a few ids (and the rest bucket).
fn random_example(vocab: usize, seed: u64) -> Example {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let tokens: Vec<u32> = (0..10).map(|_| rng.random_range(0..vocab as u32)).collect();
    let targets = (0..6)
        .map(|_| {
            let ids: Vec<u32> = (0..4).map(|j| (j * 7 + rng.random_range(0..5)) as u32 % vocab as u32).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            let raw: Vec<f32> = ids.iter().map(|_| rng.random_range(0.05..1.0f32)).collect();
            let z: f32 = raw.iter().sum::<f32>() / 0.9;
            SparseDistribution { ids, probs: raw.iter().map(|r| r / z).collect() }
        })
        .collect();
    Example { tokens, first: 4, targets }
}

#[test]
fn lora_gradients_match_finite_differences() {
    const ALL: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    for arch in ["llama", "qwen2", "gemma3"] {
        let (model, training) = trainable(arch, &ALL, 1);
        let vocab = model.config().vocab_size;
        // B starts at zero (so A's gradient is zero): move it off zero to test both.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        for pair in training.pairs() {
            let (a, b) = pair.values();
            pair.set(a, b.iter().map(|_| rng.random_range(-0.3..0.3f32)).collect());
        }
        let example = random_example(vocab, 3);
        for loss in [Loss::Kl, Loss::Tvd] {
            let grads = example_loss(model.as_ref(), &example, loss).unwrap().backward();
            let mut checked = 0;
            for (p, pair) in training.pairs().iter().enumerate().filter(|(i, _)| i % 5 == 0) {
                let (ga, gb) = pair.gradients(&grads);
                let (a, b) = pair.values();
                for (which, grad) in [(0, &ga), (1, &gb)] {
                    // The coordinate with the largest gradient and one chosen at random.
                    let largest = (0..grad.len()).max_by(|&i, &j| grad[i].abs().total_cmp(&grad[j].abs())).unwrap();
                    for i in [largest, rng.random_range(0..grad.len())] {
                        let at = |delta: f32| {
                            let (mut a2, mut b2) = (a.clone(), b.clone());
                            if which == 0 { a2[i] += delta } else { b2[i] += delta }
                            pair.set(a2, b2);
                            evaluate(model.as_ref(), &example, loss).unwrap()
                        };
                        let h = 1e-2;
                        let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
                        pair.set(a.clone(), b.clone());
                        let analytic = grad[i] as f64;
                        let err = (numeric - analytic).abs();
                        assert!(
                            err <= 2e-3 + 0.03 * analytic.abs().max(numeric.abs()),
                            "{arch} {loss:?} pair {p} ({}) {} [{i}]: autodiff {analytic:.6} vs finite difference {numeric:.6}",
                            pair.name(),
                            ["A", "B"][which]
                        );
                        checked += (analytic.abs() > 1e-4) as usize;
                    }
                }
            }
            assert!(checked >= 8, "{arch} {loss:?}: only {checked} coordinates had a gradient to check");
        }
    }
}

#[test]
fn an_initialized_adapter_changes_no_logit() {
    let tokens = [1u32, 5, 9, 2, 7, 3];
    for arch in ["llama", "qwen2", "gemma3"] {
        let (model, _training) = trainable(arch, &["q_proj", "v_proj", "down_proj"], 4);
        let mut cache = model.new_cache(16).unwrap();
        let trained = model.forward_tensor(&tokens, &mut cache, LogitRows::All).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let (fam, src) = family(arch);
        // The same model without an adapter, on the same (autodiff) device: bit for bit.
        let plain = fam.load(src.as_ref(), &autodiff()).unwrap();
        let logits = |m: &dyn CausalLm| {
            let mut cache = m.new_cache(16).unwrap();
            let l = m.forward(&tokens, &mut cache, LogitRows::All).unwrap();
            (0..l.rows()).flat_map(|r| l.row(r).to_vec()).collect::<Vec<f32>>()
        };
        let want = logits(plain.as_ref());
        assert!(trained == want, "{arch}: B = 0 changed a logit (max |Δ| {})", max_abs_diff(&trained, &want));
        // And the Burn-ops forward without autodiff agrees to rounding.
        let (fam, src) = family(arch);
        let burn_ops = with_burn_ops(|| fam.load(src.as_ref(), &Device::flex())).unwrap();
        let diff = max_abs_diff(&trained, &logits(burn_ops.as_ref()));
        assert!(diff < 1e-5, "{arch}: the autodiff forward differs from the Burn-ops forward by {diff}");
    }
}

#[test]
fn training_on_a_toy_task_lowers_the_loss_and_exports_a_peft_adapter() {
    for arch in ["llama", "qwen2"] {
        let (model, training) = trainable(arch, &["q_proj", "k_proj", "v_proj", "up_proj"], 5);
        let vocab = model.config().vocab_size as u32;
        // The toy task: continue a counting sequence (t → t + 1 mod 17), hard labels.
        let examples: Vec<Example> = (0..4).map(|s| Example::labels((0..12).map(|i| (s * 3 + i) % 17 % vocab).collect(), 3).unwrap()).collect();
        let mean_loss = || examples.iter().map(|e| evaluate(model.as_ref(), e, Loss::Kl).unwrap()).sum::<f64>() / examples.len() as f64;
        let before = mean_loss();
        let mut trainer = Trainer::new(model.as_ref(), &training, TrainConfig { lr: 3e-2, loss: Loss::Kl, max_grad_norm: 1.0 }).unwrap();
        let batch: Vec<&Example> = examples.iter().collect();
        for _ in 0..25 {
            let report = trainer.step(&batch).unwrap();
            assert!(report.loss.is_finite() && report.grad_norm.is_finite());
        }
        let after = mean_loss();
        assert!(after < 0.5 * before, "{arch}: loss {before:.3} → {after:.3} after 25 steps");

        // Export, load back as an ordinary adapter on the host kernels: same logits.
        let dir = std::env::temp_dir().join(format!("specdec-align-{arch}-{}", std::process::id()));
        training.save_peft(&dir, "tiny").unwrap();
        let adapter = LoraAdapter::open(&dir).unwrap();
        assert_eq!((adapter.rank(), adapter.modules()), (2, 4 * model.config().n_layers));
        let (fam, src) = family(arch);
        let host = fam.load_adapted(src.as_ref(), Some(&adapter), &Device::flex()).unwrap();
        let tokens = &examples[0].tokens;
        let mut cache = host.new_cache(16).unwrap();
        let logits = host.forward(tokens, &mut cache, LogitRows::All).unwrap();
        let got: Vec<f32> = (0..logits.rows()).flat_map(|r| logits.row(r).to_vec()).collect();
        let mut cache = model.new_cache(16).unwrap();
        let want = model.forward_tensor(tokens, &mut cache, LogitRows::All).unwrap().into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-4, "{arch}: the exported adapter differs from the trained model by {diff}");
        // Expected acceptance (1 − TV from host logits) on both: the device loss's complement.
        for e in &examples {
            let tv = evaluate(model.as_ref(), e, Loss::Tvd).unwrap();
            for (on, m) in [("autodiff", model.as_ref()), ("host kernels", host.as_ref())] {
                let a = engine::align::expected_acceptance(m, e).unwrap();
                assert!((a - (1.0 - tv)).abs() < 1e-4, "{arch} on {on}: expected acceptance {a}, 1 − TV {}", 1.0 - tv);
            }
        }
        let past_vocab = Example { tokens: vec![1, 2, 3], first: 2, targets: vec![SparseDistribution::one_hot(vocab + 5)] };
        assert!(engine::align::expected_acceptance(host.as_ref(), &past_vocab).unwrap_err().to_string().contains("past the model"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
