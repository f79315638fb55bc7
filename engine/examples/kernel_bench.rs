//! Micro-benchmark of the packed-weight CPU kernels on a real model's matrices: for each matrix of
//! one block and n ∈ {1, 2, 3, 5, 9, 17, 64} activation rows, the time of y = x·Wᵀ, the weight
//! bytes streamed per second at n = 1, the multiply-adds per second at each n, and the cost
//! relative to one row — the kernel-level verification curve. Also measures this machine's read
//! bandwidth (the decode bound). `SPECDEC_ISA` picks the instruction set (default: the best).
//!
//! ```sh
//! cargo run --release -p specdec-engine --example kernel_bench -- qwen2.5-coder-1.5b [layer] [exact|q8]
//! ```

use engine::gguf::Gguf;
use engine::cpu::{Isa, KernelMode, QuantMatrix};
use std::time::Instant;

fn main() -> engine::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spec = args.first().map_or("smollm2-135m", String::as_str);
    let layer: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mode = match args.get(2).map(String::as_str) {
        Some("exact") => KernelMode::Exact,
        _ => KernelMode::Q8,
    };
    // Two instruction sets given (`SPECDEC_BENCH_ISAS=avx512-vnni,avx2`): each product is timed on
    // both, alternately, and the ratio printed — a same-run comparison on a noisy machine.
    if let Ok(pair) = std::env::var("SPECDEC_BENCH_ISAS") {
        let isas: Vec<Isa> = pair.split(',').filter_map(Isa::from_name).collect();
        return compare(spec, layer, &isas);
    }
    println!("read bandwidth: {:.1} GB/s (1 thread), {:.1} GB/s (all threads)", bandwidth(1), bandwidth(rayon::current_num_threads()));
    let path = match engine::source::resolve(spec)? {
        engine::source::ModelFiles::Gguf(p) => p,
        other => return Err(engine::Error::InvalidArgument(format!("{other:?} is not a GGUF file"))),
    };
    let gguf = Gguf::open(&path)?;
    let names: Vec<String> = ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_down"]
        .iter()
        .map(|t| format!("blk.{layer}.{t}.weight"))
        .chain(["output.weight".to_string(), "token_embd.weight".to_string()])
        .collect();
    println!("{mode:?} kernels on {}, {} threads ({})", engine::cpu::Isa::active().name(), rayon::current_num_threads(), engine::cpu::features::cpu_model());
    println!("{:<24} {:>6} {:>12} {:>9} {:>6}  cost(n)/cost(1) for n = 2 3 5 9 17 64 | G multiply-adds/s for n = 1 5 9 17 64", "matrix", "type", "shape", "µs(n=1)", "GB/s");
    let mut seen_embd = false;
    for name in names {
        let Some(info) = gguf.tensor_info(&name) else { continue };
        if name == "token_embd.weight" && (seen_embd || gguf.tensor_info("output.weight").is_some()) {
            continue;
        }
        seen_embd |= name == "output.weight";
        let shape = info.shape();
        let Ok(w) = QuantMatrix::new(info.dtype, gguf.tensor_bytes_shared(info), shape[0], shape[1]) else { continue };
        const SIZES: [usize; 7] = [1, 2, 3, 5, 9, 17, 64];
        let times: Vec<f64> = SIZES.iter().map(|&n| time(&w, mode, n)).collect();
        let ratios: Vec<String> = times[1..].iter().map(|t| format!("{:.2}", t / times[0])).collect();
        let macs = (shape[0] * shape[1]) as f64;
        let rates: Vec<String> =
            SIZES.iter().zip(&times).filter(|(n, _)| [1, 5, 9, 17, 64].contains(*n)).map(|(&n, t)| format!("{:.0}", n as f64 * macs / t / 1e9)).collect();
        println!(
            "{:<24} {:>6} {:>12} {:>9.1} {:>6.1}  {} | {}",
            name,
            info.dtype.name(),
            format!("{}x{}", shape[0], shape[1]),
            times[0] * 1e6,
            w.size_bytes() as f64 / times[0] / 1e9,
            ratios.join(" "),
            rates.join(" ")
        );
    }
    Ok(())
}

/// Median seconds of one product with `rows` activation rows (inputs vary per call).
fn time(w: &QuantMatrix, mode: KernelMode, rows: usize) -> f64 {
    let inputs: Vec<Vec<f32>> = (0..4)
        .map(|s| (0..rows * w.inp()).map(|i| (((i * 7919 + s * 104729) % 2001) as f32 / 1000.0) - 1.0).collect())
        .collect();
    let reps = (2e8 / w.size_bytes() as f64).clamp(3.0, 200.0) as usize;
    let mut samples = Vec::with_capacity(reps);
    let mut sink = 0f32;
    for i in 0..reps + 2 {
        let t = Instant::now();
        let y = w.matmul_t_with(mode, &inputs[i % inputs.len()], rows);
        let dt = t.elapsed().as_secs_f64();
        sink += y[0];
        if i >= 2 {
            samples.push(dt);
        }
    }
    std::hint::black_box(sink);
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// GB/s of summing a 1 GiB buffer with `threads` threads (best of three).
fn bandwidth(threads: usize) -> f64 {
    use rayon::prelude::*;
    let buf = vec![1u64; 1 << 27];
    let chunk = buf.len() / threads;
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let s: u64 = buf.par_chunks(chunk).map(|c| c.iter().fold(0u64, |a, &b| a.wrapping_add(b))).sum();
            std::hint::black_box(s);
            (buf.len() * 8) as f64 / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// Times each product on each of `isas` in turn (A B A B …) and prints the medians and ratios.
fn compare(spec: &str, layer: usize, isas: &[Isa]) -> engine::Result<()> {
    let path = match engine::source::resolve(spec)? {
        engine::source::ModelFiles::Gguf(p) => p,
        other => return Err(engine::Error::InvalidArgument(format!("{other:?} is not a GGUF file"))),
    };
    let gguf = Gguf::open(&path)?;
    println!("{} threads; µs per product on {} (ratio to the first)", rayon::current_num_threads(), isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(" / "));
    for t in ["attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_down"] {
        let name = format!("blk.{layer}.{t}.weight");
        let Some(info) = gguf.tensor_info(&name) else { continue };
        let shape = info.shape();
        let w = QuantMatrix::new(info.dtype, gguf.tensor_bytes_shared(info), shape[0], shape[1]).map_err(engine::Error::InvalidArgument)?;
        let Some(p) = w.packed() else { continue };
        let mut line = format!("{name:<24}");
        for n in [1usize, 2, 5, 9, 17, 64] {
            let x: Vec<f32> = (0..n * p.inp()).map(|i| (((i * 7919) % 2001) as f32 / 1000.0) - 1.0).collect();
            let mut samples = vec![Vec::new(); isas.len()];
            for _ in 0..15 {
                for (k, &isa) in isas.iter().enumerate() {
                    let t = Instant::now();
                    std::hint::black_box(p.matmul_t_on(isa, &x, n));
                    samples[k].push(t.elapsed().as_secs_f64());
                }
            }
            let med: Vec<f64> = samples.iter_mut().map(|s| { s.sort_by(f64::total_cmp); s[s.len() / 2] }).collect();
            line += &format!(" | n={n}: {:.0}µs", med[0] * 1e6);
            for m in &med[1..] {
                line += &format!(" {:.2}×", m / med[0]);
            }
        }
        println!("{line}");
    }
    Ok(())
}
