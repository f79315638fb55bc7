//! On-demand fuzzing of tokenizer building and chat-template rendering, with the targets the
//! test `hostile_tokenizer` runs a fixed 10^4 cases of:
//!
//! ```text
//! cargo run --release --example fuzz_tokenizer -- --target tokenizer|template --cases N [--seed S] [--case C]
//! ```
//!
//! `tokenizer` alternates mutated GGUF vocabularies and mutated tokenizer.json files (from the
//! test fixtures), `template` renders mutated real chat templates with random messages under
//! small limits. Prints the cases run, the rate and every panicking case (replay one with
//! `--case C`); exits 1 if any panicked.

#[path = "../tests/hostile_tokenizer/targets.rs"]
mod targets;

use std::time::Instant;

fn main() {
    let mut target = String::from("template");
    let mut cases: u64 = 10_000;
    let mut seed: u64 = 0x5eed_70c3;
    let mut only: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--target" => target = value(),
            "--cases" => cases = value().parse().unwrap_or_else(|_| usage("--cases takes a number")),
            "--seed" => seed = parse_seed(&value()),
            "--case" => only = Some(value().parse().unwrap_or_else(|_| usage("--case takes a number"))),
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    let run: fn(&mut targets::Gen) = match target.as_str() {
        "tokenizer" => targets::tokenizer_case,
        "template" => targets::template_case,
        _ => usage("--target is tokenizer or template"),
    };
    // Panics are counted and reported below, not printed case by case, except when replaying one
    // case: then the default hook shows where it panicked.
    if only.is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    let range = match only {
        Some(c) => c..c + 1,
        None => 0..cases,
    };
    let n = range.end - range.start;
    let start = Instant::now();
    let mut panics = Vec::new();
    for case in range {
        let mut g = targets::gen(seed, case);
        if let Err(e) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&mut g))) {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            panics.push((case, msg.unwrap_or_default()));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    targets::remove_scratch();
    println!(
        "target {target}: {n} cases (seed {seed:#x}) in {secs:.1} s, {:.0} cases/s, {} panics",
        n as f64 / secs.max(1e-9),
        panics.len()
    );
    for (case, msg) in &panics {
        println!("  case {case}: {msg}");
    }
    if !panics.is_empty() {
        std::process::exit(1);
    }
}

fn parse_seed(s: &str) -> u64 {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.unwrap_or_else(|_| usage("--seed takes a number"))
}

fn usage(problem: &str) -> ! {
    eprintln!("{problem}\nusage: fuzz_tokenizer --target tokenizer|template --cases N [--seed S] [--case C]");
    std::process::exit(2)
}
