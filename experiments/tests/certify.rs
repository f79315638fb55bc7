//! `specdec certify` on a real pair must be able to fail: with the verifier of the binary
//! deliberately broken (the engine's test-only `SPECDEC_FAULT` hook, compiled in only because
//! this crate's dev-dependency turns on `fault-injection`) the verdict is "rejected" and the exit
//! status 2; unbroken, the same run is "consistent" with exit status 0.
//!
//! The pair is SmolLM2-135M drafting for itself, the cheapest real pair. Its draft is the
//! target (q = p bitwise: batch-invariant kernels), so every draft is accepted and a fault in
//! the residual would never show; the fault is the bonus token drawn from the last drafted
//! position's row instead of the next one, which every fully accepted round exercises.

use std::io::Write;
use std::process::{Command, Output};

/// `specdec certify` on SmolLM2-135M drafting for itself, with `fault` (if any) switched on.
fn certify(fault: Option<&str>) -> Output {
    // k = 1 over 3 tokens: the prefill's token, an accepted draft, and a bonus token. Top-2
    // sampling keeps at most 8 continuations, so 80 samples each way leave cells to compare
    // (measured: about 5 after pooling, and the broken run's p ≈ 2·10⁻¹⁶ at 60 samples); a
    // run takes about 10 s on two busy cores.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_specdec"));
    cmd.args(["certify", "--model", "smollm2-135m", "--draft", "smollm2-135m", "--k", "1", "--temperature", "1.0", "--top-k", "2",
        "--samples", "80", "--max-new-tokens", "3", "--prompt", "Paris is", "--json"]);
    cmd.env_remove("SPECDEC_FAULT");
    if let Some(f) = fault {
        cmd.env("SPECDEC_FAULT", f);
    }
    cmd.output().expect("run specdec")
}

fn report(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!("certify printed no JSON ({e}): {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    })
}

#[test]
fn certify_rejects_a_broken_verifier_on_a_real_pair_and_passes_the_correct_one() {
    if std::env::var("SPECDEC_SKIP_REAL").is_ok_and(|v| v == "1") {
        // Written past the test harness's capture, as `.ci/run` counts these lines.
        let _ = writeln!(std::io::stderr(), "SKIPPED: certify_rejects_a_broken_verifier_on_a_real_pair_and_passes_the_correct_one: SPECDEC_SKIP_REAL=1");
        return;
    }
    let correct = certify(None);
    let j = report(&correct);
    assert_eq!((correct.status.code(), j["verdict"].as_str()), (Some(0), Some("consistent")), "{j}");
    assert_eq!(j["alpha_hat"], 1.0, "a self-draft is always accepted: {j}");
    assert!(j["cells"].as_u64().unwrap() >= 3, "too few cells for the test to mean anything: {j}");
    let broken = certify(Some("bonus-from-wrong-row"));
    let j = report(&broken);
    assert_eq!((broken.status.code(), j["verdict"].as_str()), (Some(2), Some("rejected")), "{j}");
    assert!(j["total_variation"].as_f64().unwrap() > j["tv_noise_95"].as_f64().unwrap(), "{j}");
}
