//! This machine's limits, measured by `specdec bench` beside the model's own figures: the 8-bit
//! integer multiply-add rate of a register-only loop on every thread (the arithmetic roof, with the
//! instruction set the kernels use), and the rate of a streaming read of a buffer larger than the
//! last-level cache (the memory roof). A forward over n tokens that reads W weight bytes and does
//! n·M multiply-adds in t seconds sits at (n·M / t) / peak of the arithmetic roof and (W / t) /
//! bandwidth of the memory roof.

use engine::cpu::Isa;
use std::time::Instant;

/// The machine's roofs, as measured now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Roofs {
    /// The instruction set of the peak loop (the one the kernels use).
    pub isa: &'static str,
    pub threads: usize,
    /// 8-bit multiply-adds per second, all threads, register-only.
    pub int8_peak_gmacs: f64,
    /// Streaming read, all threads, GB/s.
    pub read_gb_s: f64,
    pub read_buffer_bytes: usize,
}

/// Measures both roofs with `threads` threads.
pub fn measure(threads: usize) -> Roofs {
    let isa = Isa::active();
    let peak = (0..3).map(|_| int8_peak(isa, threads)).fold(0.0, f64::max);
    let bytes = read_buffer_bytes();
    Roofs { isa: isa.name(), threads, int8_peak_gmacs: peak / 1e9, read_gb_s: read_bandwidth(bytes, threads) / 1e9, read_buffer_bytes: bytes }
}

/// Multiply-adds per second of independent chains of the kernels' multiply-add instruction on
/// every thread at once (each thread runs ~50 ms).
fn int8_peak(isa: Isa, threads: usize) -> f64 {
    const ITERS: usize = 2_000_000;
    let start = Instant::now();
    let macs: f64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(move || chains(isa, ITERS))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
    });
    macs / start.elapsed().as_secs_f64()
}

/// Runs `iters` rounds of 12 independent multiply-add chains; returns the multiply-adds done.
fn chains(isa: Isa, iters: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        // SAFETY (each block): `isa` is the active path, which the CPU supports.
        match isa {
            Isa::Avx512Vnni => {
                #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
                unsafe fn run(iters: usize) -> i32 {
                    let (w, x) = (_mm512_set1_epi8(3), _mm512_set1_epi8(-2));
                    let mut acc = [_mm512_setzero_si512(); 12];
                    for _ in 0..iters {
                        for a in acc.iter_mut() {
                            *a = _mm512_dpbusd_epi32(*a, std::hint::black_box(w), x);
                        }
                    }
                    acc.iter().fold(0, |s, a| s.wrapping_add(_mm512_reduce_add_epi32(*a)))
                }
                std::hint::black_box(unsafe { run(iters) });
                return (iters * 12 * 64) as f64;
            }
            Isa::AvxVnni => {
                #[target_feature(enable = "avx2,avxvnni")]
                unsafe fn run(iters: usize) -> i32 {
                    let (w, x) = (_mm256_set1_epi8(3), _mm256_set1_epi8(-2));
                    let mut acc = [_mm256_setzero_si256(); 12];
                    for _ in 0..iters {
                        for a in acc.iter_mut() {
                            *a = _mm256_dpbusd_avx_epi32(*a, std::hint::black_box(w), x);
                        }
                    }
                    acc.iter().fold(0, |s, a| s.wrapping_add(_mm256_extract_epi32::<0>(*a)))
                }
                std::hint::black_box(unsafe { run(iters) });
                return (iters * 12 * 32) as f64;
            }
            Isa::Avx2 => {
                // The AVX2 kernels' own step: vpmaddubsw into 16 bits, widened by vpmaddwd.
                #[target_feature(enable = "avx2")]
                unsafe fn run(iters: usize) -> i32 {
                    let (w, x, ones) = (_mm256_set1_epi8(3), _mm256_set1_epi8(-2), _mm256_set1_epi16(1));
                    let mut acc = [_mm256_setzero_si256(); 12];
                    for _ in 0..iters {
                        for a in acc.iter_mut() {
                            let p = _mm256_maddubs_epi16(std::hint::black_box(w), x);
                            *a = _mm256_add_epi32(*a, _mm256_madd_epi16(p, ones));
                        }
                    }
                    acc.iter().fold(0, |s, a| s.wrapping_add(_mm256_extract_epi32::<0>(*a)))
                }
                std::hint::black_box(unsafe { run(iters) });
                return (iters * 12 * 32) as f64;
            }
            Isa::Portable => {}
        }
    }
    let _ = isa;
    let mut acc = [0i32; 12];
    for i in 0..iters {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = a.wrapping_add(std::hint::black_box((i + k) as i32 & 127) * 3);
        }
    }
    std::hint::black_box(acc);
    (iters * 12) as f64
}

/// Twice the last-level cache (from sysfs), at least 256 MiB.
fn read_buffer_bytes() -> usize {
    let llc = (0..8)
        .filter_map(|i| std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu0/cache/index{i}/size")).ok())
        .filter_map(|s| {
            let s = s.trim();
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: usize = num.parse().ok()?;
            Some(n * match unit { "K" => 1 << 10, "M" => 1 << 20, "G" => 1 << 30, _ => 1 })
        })
        .max()
        .unwrap_or(0);
    (2 * llc).max(256 << 20)
}

/// Bytes per second of summing a `bytes` buffer on `threads` threads (best of three passes after a
/// first one that touches every page).
fn read_bandwidth(bytes: usize, threads: usize) -> f64 {
    let buf = vec![1u64; bytes / 8];
    let chunk = buf.len().div_ceil(threads);
    let pass = || {
        std::thread::scope(|s| {
            let handles: Vec<_> = buf.chunks(chunk).map(|c| s.spawn(move || c.iter().fold(0u64, |a, &b| a.wrapping_add(b)))).collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
        })
    };
    std::hint::black_box(pass());
    (0..3)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(pass());
            bytes as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// What one forward multiplies: multiply-adds per token and weight bytes read, from a GGUF file's
/// tensor index — every matrix but the embedding table, which counts when the LM head is tied to
/// it (no `output.weight`). (Biases, norms and attention over the cache are left out: small here.)
pub fn matrix_work(gguf: &engine::gguf::Gguf) -> (f64, f64) {
    let tied = gguf.tensor_info("output.weight").is_none();
    let mut macs = 0.0;
    let mut bytes = 0.0;
    for info in &gguf.tensors {
        let shape = info.shape();
        let embedding = info.name == "token_embd.weight";
        if shape.len() == 2 && (!embedding || tied) && (info.name.ends_with(".weight")) {
            macs += (shape[0] * shape[1]) as f64;
            bytes += info.n_bytes() as f64;
        }
    }
    (macs, bytes)
}
