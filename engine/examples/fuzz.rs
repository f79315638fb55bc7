//! Long fuzzing runs of the file-format targets the test command runs 10⁴ cases of
//! (`tests/hostile_files.rs`), with the same structure-aware mutators (`tests/fuzzing/mod.rs`):
//!
//! ```text
//! cargo run --release --example fuzz -- --target gguf|safetensors|config|all --cases N [--seed S] [--load-every K]
//! ```
//!
//! Case `i` of a run uses seed `S + i`; every case runs under `catch_unwind`. A panicking case is
//! reported with its seed and its input saved to `engine/tests/fixtures/hostile/<target>-<seed>.bin`,
//! which the test command then replays. `--cases 1 --seed S` reruns one case. Adding a target
//! (tokenizers, chat templates) is one variant of `fuzzing::Target`.

#[path = "../tests/fuzzing/mod.rs"]
mod fuzzing;

use fuzzing::{Corpus, Outcome, Target, TARGETS};
use std::time::Instant;

struct Args {
    targets: Vec<Target>,
    cases: u64,
    seed: u64,
    load_every: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { targets: TARGETS.to_vec(), cases: 10_000, seed: 0, load_every: 8 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => {
                let v = value()?;
                args.targets = match v.as_str() {
                    "all" => TARGETS.to_vec(),
                    name => vec![Target::from_name(name).ok_or_else(|| format!("unknown target `{name}`"))?],
                }
            }
            "--cases" => args.cases = value()?.parse().map_err(|e| format!("--cases: {e}"))?,
            "--seed" => args.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--load-every" => args.load_every = value()?.parse::<u64>().map_err(|e| format!("--load-every: {e}"))?.max(1),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(args)
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("{e}\nusage: fuzz --target gguf|safetensors|config|all --cases N [--seed S] [--load-every K]");
        std::process::exit(2)
    });
    // Panics are counted and reported below, not printed once per case.
    std::panic::set_hook(Box::new(|_| {}));
    let corpus = Corpus::load();
    let hostile_dir = fuzzing::fixtures().join("hostile");
    let mut total_panics = 0;
    for &target in &args.targets {
        let start = Instant::now();
        let (mut accepted, mut refused, mut panics, mut unnamed) = (0u64, 0u64, 0u64, 0u64);
        for seed in args.seed..args.seed + args.cases {
            let done = seed - args.seed;
            if done > 0 && done % 100_000 == 0 {
                let secs = start.elapsed().as_secs_f64();
                println!("{}: {done} cases in {secs:.0} s ({:.0} cases/s), {panics} panics so far", target.name(), done as f64 / secs);
            }
            match std::panic::catch_unwind(|| target.run(&corpus, seed, seed % args.load_every == 0)) {
                Ok(Ok(Outcome::Accepted)) => accepted += 1,
                Ok(Ok(Outcome::Refused)) => refused += 1,
                Ok(Err(problem)) => {
                    unnamed += 1;
                    println!("{} seed {seed}: {problem}", target.name());
                }
                Err(payload) => {
                    panics += 1;
                    let msg = payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
                    let (_, bytes) = target.input(&corpus, seed);
                    let path = hostile_dir.join(format!("{}-{seed}.bin", target.name()));
                    let _ = std::fs::write(&path, bytes);
                    println!("{} seed {seed}: PANIC {} (input saved to {})", target.name(), msg.unwrap_or_default(), path.display());
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{}: {} cases in {secs:.1} s ({:.0} cases/s): {refused} refused, {accepted} accepted, {unnamed} errors not naming the file, {panics} panics",
            target.name(),
            args.cases,
            args.cases as f64 / secs
        );
        total_panics += panics + unnamed;
    }
    if total_panics > 0 {
        std::process::exit(1);
    }
}
