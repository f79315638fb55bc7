//! Run directory outputs derived from `records.jsonl`: summary.json/csv, plots, report.md; tidy CSV
//! exports for notebooks; and merging shard directories into one run.

use crate::config::{ExperimentConfig, PromptSet};
use crate::records::{read_records, Record};
use crate::runner::{now, planned_keys, Manifest};
use crate::rundir::write_atomic;
use crate::summary::{best_k, csv_bytes, paired_differences, per_category, summarize, table, CellSummary};
use anyhow::{bail, Context, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// (Re)computes every derived file of a run directory from its records; returns the summaries.
/// Each file is replaced whole (see `rundir::write_atomic`), so a reader or an interruption never
/// sees half a summary.
pub fn finalize(dir: &Path) -> Result<Vec<CellSummary>> {
    let records = read_records(dir)?;
    let cells = summarize(&records);
    write_atomic(&dir.join("summary.json"), serde_json::to_string_pretty(&cells)?.as_bytes())?;
    write_atomic(&dir.join("summary.csv"), &csv_bytes(&cells)?)?;
    // Plots are drawn into a scratch folder, then each is renamed over its old version.
    let scratch = dir.join(format!(".plots.{}.tmp", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| crate::rundir::write_error(e, &scratch))?;
    let plots = match crate::plot::write_all(&cells, &scratch) {
        Ok(staged) => crate::rundir::publish(&staged, &scratch, dir)?,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e).with_context(|| format!("drawing the plots of {}", dir.display()));
        }
    };
    let manifest: Option<Manifest> = std::fs::read_to_string(dir.join("manifest.json")).ok().and_then(|s| serde_json::from_str(&s).ok());
    write_atomic(&dir.join("report.md"), report(&cells, &records, manifest.as_ref(), &plots).as_bytes())?;
    Ok(cells)
}

fn report(cells: &[CellSummary], records: &[Record], manifest: Option<&Manifest>, plots: &[PathBuf]) -> String {
    let mut md = String::new();
    let name = manifest.map_or("experiment".to_string(), |m| format!("{} / {}", m.experiment, m.run_id));
    md.push_str(&format!("# {name}\n\n"));
    if let Some(m) = manifest {
        md.push_str(&format!(
            "Commit `{}`{} · engine {} · {} · {} threads · {} ({} cores) · started {}{}\n\n",
            &m.git_commit[..m.git_commit.len().min(12)],
            if m.git_dirty { " (dirty)" } else { "" },
            m.engine_version,
            m.backend,
            m.threads,
            m.cpu_model,
            m.cores,
            m.start_time,
            m.shard.map_or(String::new(), |s| format!(" · shard {s}")),
        ));
        for (name, model) in &m.models {
            let kernels = if model.kernels.is_empty() { String::new() } else { format!(", {} kernels", model.kernels) };
            md.push_str(&format!("- `{name}`: {} ({}, {}, {} threads{kernels})\n", model.source, model.architecture, model.backend, model.threads));
        }
        md.push('\n');
    }
    md.push_str(&format!("{} generations in {} cells. Speedup = speculative ÷ target-only decode tok/s on the same prompt and repeat (mean ± 95% CI half-width over prompts × repeats); c = draft step ÷ target step; v = verification forward ÷ target step; α̂ = accepted ÷ drafted; α = accepted ÷ verified draft positions (the per-token acceptance probability, which α̂ understates for k > 1 because drafts after a rejection are never verified); predicted = Leviathan's (1 − α^(k+1)) / ((1 − α)(k·c + 1)).\n\n", records.len(), cells.len()));
    let best = best_k(cells);
    if !best.is_empty() {
        md.push_str("## Best k\n\n| pair | prompt set | T | best k | speedup |\n|---|---|---|---|---|\n");
        for (pair, set, t, k, s) in best {
            md.push_str(&format!("| {pair} | {set} | {t} | {k} | {s:.2}× |\n"));
        }
        md.push('\n');
    }
    let categories = per_category(records);
    if categories.iter().map(|c| &c.category).collect::<HashSet<_>>().len() > 1 {
        md.push_str("## Per category\n\nSpec-Bench's terms: speedup over target-only decoding of the same prompts (mean ± 95% CI) and mean tokens per target call τ (\"mean accepted tokens\").\n\n| pair | schedule | k | T | category | prompts | speedup | τ |\n|---|---|---|---|---|---|---|---|\n");
        for c in &categories {
            md.push_str(&format!("| {} | {} | {} | {} | {} | {} | {}× | {:.2} |\n", c.pair, c.schedule, c.k, c.temperature, c.category, c.records, c.speedup.show(2), c.tau));
        }
        md.push('\n');
    }
    let paired = paired_differences(records);
    if !paired.is_empty() {
        md.push_str("## Pairs compared on the same prompts\n\nEach pair's generation minus the first pair's on the same prompt and repeat (mean ± 95% CI over the matched generations): paired, so the variation between prompts, which both share, drops out.\n\n| pair | against | prompt set | k | T | matched | Δα̂ | Δspeedup |\n|---|---|---|---|---|---|---|---|\n");
        for p in &paired {
            let speedup = p.speedup_difference.map_or("–".into(), |s| format!("{}×", s.show_signed(2)));
            md.push_str(&format!("| {} | {} | {} | {} | {} | {} | {} | {speedup} |\n", p.pair, p.against, p.prompt_set, p.k, p.temperature, p.matched, p.alpha_difference.show_signed(3)));
        }
        md.push('\n');
    }
    md.push_str("## All cells\n\n");
    md.push_str(&table(cells));
    md.push('\n');
    for p in plots {
        let file = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        md.push_str(&format!("![{file}]({file})\n\n"));
    }
    md
}

/// Writes tidy CSVs of a run into `to`: one row per generation, one row per (generation, draft
/// position), and one row per cell. Returns the files written.
pub fn export(dir: &Path, to: &Path) -> Result<Vec<PathBuf>> {
    let records = read_records(dir)?;
    let cells = summarize(&records);
    let manifest: Manifest = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).with_context(|| format!("reading {}/manifest.json", dir.display()))?)?;
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let stem = format!("{}-{}", manifest.experiment, manifest.run_id);
    let gens = to.join(format!("{stem}.generations.csv"));
    let positions = to.join(format!("{stem}.positions.csv"));
    let cells_path = to.join(format!("{stem}.cells.csv"));

    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "experiment", "run_id", "key", "cell", "kind", "pair", "model", "draft", "proposer", "schedule", "params", "k", "temperature", "top_p", "top_k",
        "max_new_tokens", "prompt_set", "prompt_id", "category", "repeat", "seed", "prompt_tokens", "new_tokens", "stop", "prefill_s",
        "decode_s", "prefill_tok_s", "decode_tok_s", "drafted", "accepted", "iterations", "emitted", "alpha", "tau", "draft_s",
        "verify_s", "overhead_s", "draft_steps",
    ])?;
    for r in &records {
        w.write_record([
            manifest.experiment.clone(),
            manifest.run_id.clone(),
            r.key.clone(),
            r.cell.clone(),
            format!("{:?}", r.kind).to_lowercase(),
            r.pair.clone(),
            r.model.clone(),
            r.draft.clone(),
            r.proposer.clone(),
            r.schedule.clone(),
            r.params.clone(),
            r.k.to_string(),
            r.temperature.to_string(),
            r.top_p.to_string(),
            r.top_k.to_string(),
            r.max_new_tokens.to_string(),
            r.prompt_set.clone(),
            r.prompt_id.clone(),
            r.category.clone(),
            r.repeat.to_string(),
            r.seed.to_string(),
            r.prompt_tokens.to_string(),
            r.new_tokens.to_string(),
            r.stop.clone(),
            r.prefill_s.to_string(),
            r.decode_s.to_string(),
            r.prefill_tok_s.to_string(),
            r.decode_tok_s.to_string(),
            r.drafted.to_string(),
            r.accepted.to_string(),
            r.iterations.to_string(),
            r.emitted.to_string(),
            r.alpha.to_string(),
            r.tau.to_string(),
            r.draft_s.to_string(),
            r.verify_s.to_string(),
            r.overhead_s.to_string(),
            r.draft_steps.to_string(),
        ])?;
    }
    write_atomic(&gens, &csv_done(w)?)?;

    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["experiment", "run_id", "key", "cell", "position", "tested", "accepted"])?;
    for r in &records {
        for (i, (t, a)) in r.position_tested.iter().zip(&r.position_accepted).enumerate() {
            w.write_record([manifest.experiment.clone(), manifest.run_id.clone(), r.key.clone(), r.cell.clone(), (i + 1).to_string(), t.to_string(), a.to_string()])?;
        }
    }
    write_atomic(&positions, &csv_done(w)?)?;
    write_atomic(&cells_path, &csv_bytes(&cells)?)?;
    Ok(vec![gens, positions, cells_path])
}

fn csv_done(w: csv::Writer<Vec<u8>>) -> Result<Vec<u8>> {
    w.into_inner().map_err(|e| anyhow::anyhow!("csv: {}", e.error()))
}

/// Combines shard directories of one experiment into `out`: same config and prompts required;
/// every record exactly once (a key present in two shards with different content is an error).
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<()> {
    if dirs.is_empty() {
        bail!("nothing to merge");
    }
    let config_of = |d: &Path| -> Result<(ExperimentConfig, String)> {
        let cfg = ExperimentConfig::from_file(&d.join("config.toml"))?;
        let prompts = std::fs::read_to_string(d.join("prompts.json")).with_context(|| format!("reading {}/prompts.json", d.display()))?;
        Ok((cfg, prompts))
    };
    let (cfg, prompts_text) = config_of(&dirs[0])?;
    let sets: Vec<PromptSet> = serde_json::from_str(&prompts_text)?;
    let mut manifests = Vec::new();
    let mut records: Vec<Record> = Vec::new();
    let mut seen = HashSet::new();
    for d in dirs {
        let (c, p) = config_of(d)?;
        if c.to_toml()? != cfg.to_toml()? || p != prompts_text {
            bail!("{} has a different config or prompt set than {}: only shards of one run can be merged", d.display(), dirs[0].display());
        }
        let m: Manifest = serde_json::from_str(&std::fs::read_to_string(d.join("manifest.json")).with_context(|| format!("reading {}/manifest.json", d.display()))?)?;
        manifests.push(m);
        for r in read_records(d)? {
            if seen.insert(r.key.clone()) {
                records.push(r);
            } else {
                eprintln!("note: {} repeats record {}; keeping the first", d.display(), r.key);
            }
        }
    }
    let planned: HashSet<String> = planned_keys(&cfg, &sets).into_iter().collect();
    let missing = planned.iter().filter(|k| !seen.contains(*k)).count();
    if missing > 0 {
        eprintln!("note: {missing} of {} planned generations are missing (unfinished or absent shards); the summary covers what exists", planned.len());
    }
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} exists and is not empty", out.display());
    }
    std::fs::create_dir_all(out)?;
    write_atomic(&out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    write_atomic(&out.join("prompts.json"), prompts_text.as_bytes())?;
    let mut manifest = manifests[0].clone();
    manifest.run_id = out.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "merged".into());
    manifest.shard = None;
    manifest.merged_from = dirs.iter().map(|d| d.display().to_string()).collect();
    manifest.resumed = vec![format!("merged {}", now())];
    write_atomic(&out.join("manifest.json"), serde_json::to_string_pretty(&manifest)?.as_bytes())?;
    let mut text = String::new();
    for r in &records {
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
    }
    write_atomic(&out.join("records.jsonl"), text.as_bytes())?;
    finalize(out)?;
    Ok(())
}
