//! `specdec eval --multiple-choice`: a model's accuracy on MMLU-format questions, scored as
//! Hendrycks et al. (2021) and lm-evaluation-harness do: each question (after `--shots` worked
//! examples from the subject's dev file) ends in "Answer:", every choice's letter is scored by its
//! log-likelihood as the continuation (" A", " B", …), and the most likely letter is the model's
//! answer — or, in the cloze form, every choice's text by its log-likelihood per byte. Per
//! subject and overall: accuracy with a 95% Wilson interval, and chance.
//!
//! The file layout is MMLU's: one CSV file per subject (`<subject>_test.csv`, no header), each
//! row a question, its choices (four in MMLU; 2–26 accepted) and the answer letter.

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use engine::model::CausalLm;
use engine::scoring::score_continuations;
use engine::stats::wilson_interval;
use engine::tokenizer::Tokenizer;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A question file larger than this is refused before it is read.
const MAX_FILE_BYTES: u64 = 64 << 20;
const LETTERS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";

#[derive(Args)]
pub struct EvalArgs {
    /// Model: a .gguf file, an HF directory, hf:/pypi: source or a short name.
    #[arg(long)]
    pub model: String,
    /// A LoRA adapter directory (PEFT format) applied to the model: e.g. to check that aligning a
    /// draft to its target did not cost it what it knew.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// MMLU-format CSV files, or directories whose *.csv files are read (one subject per file).
    #[arg(long, required = true, value_name = "FILE|DIR")]
    pub multiple_choice: Vec<PathBuf>,
    /// Worked examples before each question, the first N of the subject's dev file.
    #[arg(long, default_value_t = 0)]
    pub shots: usize,
    /// Dev files for --shots (same layout; matched to subjects by name, `<subject>_dev.csv`).
    #[arg(long, value_name = "FILE|DIR")]
    pub dev: Vec<PathBuf>,
    /// letters: Hendrycks et al.'s prompt, the answer letter scored; cloze: each answer's text
    /// scored per byte, the choices not shown (for small models).
    #[arg(long, value_enum, default_value = "letters")]
    pub format: Format,
    /// First N questions of each subject (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub runtime: crate::RuntimeArgs,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    pub question: String,
    pub choices: Vec<String>,
    /// Index into `choices`.
    pub answer: usize,
}

#[derive(Debug, Clone)]
pub struct Subject {
    /// File stem without `_test`/`_dev`/`_val` (MMLU's naming), e.g. `high_school_physics`.
    pub name: String,
    pub questions: Vec<Question>,
}

/// Accuracy of one subject (or of all questions pooled).
#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    pub subject: String,
    pub questions: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// 95% Wilson score interval.
    pub ci_low: f64,
    pub ci_high: f64,
    /// Expected accuracy of uniform guessing (mean of 1 / choices).
    pub chance: f64,
    /// The model's answer letter to each question, in file order (per subject only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub predicted: Vec<char>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub model: String,
    /// The LoRA adapter applied to the model, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    pub format: Format,
    pub shots: usize,
    pub cpu: String,
    pub subjects: Vec<Accuracy>,
    /// All questions pooled.
    pub overall: Accuracy,
    /// Mean of the subjects' accuracies (MMLU's usual headline when subjects differ in size).
    pub macro_accuracy: f64,
}

/// The subject name MMLU's file naming implies.
fn subject_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    ["_test", "_dev", "_val"].iter().find_map(|suffix| stem.strip_suffix(suffix)).unwrap_or(&stem).to_string()
}

/// Reads one subject file; every problem names the file and the row.
pub fn read_subject(path: &Path) -> Result<Subject> {
    let size = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    ensure!(size <= MAX_FILE_BYTES, "{}: {size} bytes is more than a question file may hold ({MAX_FILE_BYTES})", path.display());
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let mut questions = Vec::new();
    for (row, record) in reader.records().enumerate() {
        let at = || format!("{}: row {}", path.display(), row + 1);
        let record = record.with_context(at)?;
        let fields: Vec<&str> = record.iter().collect();
        ensure!(
            (4..=LETTERS.len() + 2).contains(&fields.len()),
            "{}: {} fields; expected a question, 2–26 choices and an answer letter",
            at(),
            fields.len()
        );
        let (question, rest) = fields.split_first().expect("checked length");
        let (letter, choices) = rest.split_last().expect("checked length");
        let answer = match LETTERS.find(letter.trim()) {
            Some(i) if letter.trim().len() == 1 && i < choices.len() => i,
            _ => bail!("{}: answer {letter:?} is not the letter of one of its {} choices", at(), choices.len()),
        };
        questions.push(Question { question: question.to_string(), choices: choices.iter().map(|c| c.to_string()).collect(), answer });
    }
    ensure!(!questions.is_empty(), "{}: no questions", path.display());
    Ok(Subject { name: subject_name(path), questions })
}

/// Files as given, directories as their *.csv files in name order.
pub fn read_subjects(paths: &[PathBuf]) -> Result<Vec<Subject>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "csv"))
                .collect();
            inside.sort();
            ensure!(!inside.is_empty(), "{}: no .csv files", path.display());
            files.extend(inside);
        } else {
            files.push(path.clone());
        }
    }
    files.iter().map(|f| read_subject(f)).collect()
}

/// How a question is put to the model and its answer read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Hendrycks et al.: the choices listed as A.–D., the answer letter scored (" A", " B", …).
    Letters,
    /// The cloze form (lm-evaluation-harness's `acc_norm`, the SmolLM evaluations): the choices
    /// are not shown; each choice's own text is scored after "Answer:", by log-likelihood per
    /// byte so that long answers are not penalized for their length. Small models that pick
    /// letters no better than chance are measurable this way.
    Cloze,
}

/// One question in `format`; with its answer for a worked example.
fn format_question(format: Format, q: &Question, with_answer: bool) -> String {
    let mut s = match format {
        Format::Letters => q.question.trim().to_string(),
        Format::Cloze => format!("Question: {}", q.question.trim()),
    };
    if format == Format::Letters {
        for (letter, choice) in LETTERS.chars().zip(&q.choices) {
            s.push_str(&format!("\n{letter}. {}", choice.trim()));
        }
    }
    s.push_str("\nAnswer:");
    if with_answer {
        s.push_str(&format!("{}\n\n", answer_text(format, q, q.answer)));
    }
    s
}

/// What follows "Answer:" for choice `i`.
fn answer_text(format: Format, q: &Question, i: usize) -> String {
    match format {
        Format::Letters => format!(" {}", LETTERS.as_bytes()[i] as char),
        Format::Cloze => format!(" {}", q.choices[i].trim()),
    }
}

/// The prompt: a one-line header naming the subject (Hendrycks et al.), the worked examples,
/// then the question up to "Answer:".
pub fn prompt(format: Format, subject: &str, shots: &[Question], q: &Question) -> String {
    let mut s = format!("The following are multiple choice questions (with answers) about {}.\n\n", subject.replace('_', " "));
    for shot in shots {
        s.push_str(&format_question(format, shot, true));
    }
    s.push_str(&format_question(format, q, false));
    s
}

/// The tokens `continuation` adds after `context`, as the tokenizer splits the whole text (so a
/// space that merges into the answer's first token is scored with it); where the whole text does
/// not start with the context's own tokens, the continuation tokenized alone.
fn continuation_tokens(tok: &Tokenizer, context: &str, context_ids: &[u32], continuation: &str) -> Result<Vec<u32>> {
    let whole = tok.encode(&format!("{context}{continuation}"), true)?;
    if whole.len() > context_ids.len() && whole.starts_with(context_ids) {
        return Ok(whole[context_ids.len()..].to_vec());
    }
    Ok(tok.encode(continuation, false)?)
}

/// The index of the model's answer to `q`: the choice with the highest log-likelihood (per byte
/// in the cloze form; ties to the first).
pub fn answer(model: &dyn CausalLm, tok: &Tokenizer, format: Format, subject: &str, shots: &[Question], q: &Question) -> Result<usize> {
    let context = prompt(format, subject, shots, q);
    let context_ids = tok.encode(&context, true)?;
    let texts: Vec<String> = (0..q.choices.len()).map(|i| answer_text(format, q, i)).collect();
    let continuations = texts.iter().map(|t| continuation_tokens(tok, &context, &context_ids, t)).collect::<Result<Vec<_>>>()?;
    let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
    let window = model.config().context_length;
    ensure!(
        context_ids.len() + longest <= window,
        "the prompt is {} tokens, past the model's {window}-token context (fewer --shots?)",
        context_ids.len()
    );
    let scores = score_continuations(model, &context_ids, &continuations)?;
    let value = |i: usize| match format {
        Format::Letters => scores[i].log_likelihood,
        Format::Cloze => scores[i].log_likelihood / texts[i].len() as f64,
    };
    Ok((1..scores.len()).fold(0, |best, i| if value(i) > value(best) { i } else { best }))
}

impl Accuracy {
    /// From (correct?, number of choices) per question.
    fn of(subject: &str, outcomes: &[(bool, usize)]) -> Accuracy {
        let questions = outcomes.len();
        let correct = outcomes.iter().filter(|(ok, _)| *ok).count();
        let (ci_low, ci_high) = wilson_interval(correct as u64, questions as u64, 0.95);
        let chance = outcomes.iter().map(|&(_, choices)| 1.0 / choices as f64).sum::<f64>() / questions.max(1) as f64;
        let accuracy = if questions == 0 { f64::NAN } else { correct as f64 / questions as f64 };
        Accuracy { subject: subject.to_string(), questions, correct, accuracy, ci_low, ci_high, chance, predicted: Vec::new() }
    }
}

/// Scores every subject (the first `limit` questions of each; 0 = all) with `shots` worked
/// examples from the dev subject of the same name. `progress` sees (questions done, total).
pub fn evaluate(
    model: &dyn CausalLm,
    tok: &Tokenizer,
    format: Format,
    subjects: &[Subject],
    dev: &[Subject],
    shots: usize,
    limit: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Vec<Accuracy>, Accuracy)> {
    let take = |s: &Subject| if limit == 0 { s.questions.len() } else { limit.min(s.questions.len()) };
    let total: usize = subjects.iter().map(take).sum();
    let (mut done, mut all, mut per_subject) = (0, Vec::new(), Vec::new());
    for subject in subjects {
        let examples: &[Question] = if shots == 0 {
            &[]
        } else {
            let d = dev.iter().find(|d| d.name == subject.name).with_context(|| format!("--shots {shots}: no dev file for subject `{}`", subject.name))?;
            ensure!(d.questions.len() >= shots, "--shots {shots}: the dev file of `{}` has {} questions", subject.name, d.questions.len());
            &d.questions[..shots]
        };
        let (mut outcomes, mut predicted) = (Vec::new(), Vec::new());
        for (i, q) in subject.questions[..take(subject)].iter().enumerate() {
            let picked = answer(model, tok, format, &subject.name, examples, q).with_context(|| format!("subject `{}`, question {}", subject.name, i + 1))?;
            outcomes.push((picked == q.answer, q.choices.len()));
            predicted.push(LETTERS.as_bytes()[picked] as char);
            done += 1;
            progress(done, total);
        }
        per_subject.push(Accuracy { predicted, ..Accuracy::of(&subject.name, &outcomes) });
        all.extend(outcomes);
    }
    Ok((per_subject, Accuracy::of("overall", &all)))
}

/// A plain-text table of the report.
pub fn table(report: &EvalReport) -> String {
    let format = match report.format {
        Format::Letters => "letters",
        Format::Cloze => "cloze",
    };
    let mut s = format!("{} · {format} · {}-shot · {}\n", report.model, report.shots, report.cpu);
    s.push_str(&format!("{:<40} {:>5} {:>8} {:>17} {:>7}\n", "subject", "n", "accuracy", "95% CI", "chance"));
    for a in report.subjects.iter().chain([&report.overall]) {
        s.push_str(&format!("{:<40} {:>5} {:>8.3} {:>8.3}–{:<8.3} {:>7.3}\n", a.subject, a.questions, a.accuracy, a.ci_low, a.ci_high, a.chance));
    }
    s.push_str(&format!("macro average over {} subjects: {:.3}\n", report.subjects.len(), report.macro_accuracy));
    s
}

pub fn run(args: &EvalArgs) -> Result<()> {
    args.runtime.init()?;
    let device = args.runtime.backend.device()?;
    let subjects = read_subjects(&args.multiple_choice)?;
    let dev = if args.dev.is_empty() { Vec::new() } else { read_subjects(&args.dev)? };
    ensure!(args.shots == 0 || !dev.is_empty(), "--shots {} needs --dev FILE|DIR with the worked examples", args.shots);
    let adapter = args.adapter.as_deref().map(engine::model::LoraAdapter::open).transpose()?;
    let loaded = engine::load_model_adapted(&args.model, adapter.as_ref(), &device).with_context(|| format!("loading model `{}`", args.model))?;
    let mut last_percent = usize::MAX;
    let (per_subject, overall) = evaluate(loaded.model.as_ref(), &loaded.tokenizer, args.format, &subjects, &dev, args.shots, args.limit, |done, total| {
        let percent = done * 100 / total.max(1);
        if percent != last_percent {
            last_percent = percent;
            eprint!("\r{done}/{total} questions");
        }
    })?;
    eprintln!();
    let macro_accuracy = per_subject.iter().map(|a| a.accuracy).sum::<f64>() / per_subject.len().max(1) as f64;
    let report = EvalReport { model: args.model.clone(), adapter: args.adapter.as_ref().map(|a| a.display().to_string()), format: args.format, shots: args.shots, cpu: engine::cpu::features::cpu_model(), subjects: per_subject, overall, macro_accuracy };
    print!("{}", table(&report));
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n").with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("specdec-mc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn reads_mmlu_rows_with_quotes_commas_and_newlines() {
        let path = write("toy_physics_test.csv", "\"What is 2, plus 2?\",3,4,5,\"six,\nor more\",B\nSky colour?,blue,red,B\n");
        let s = read_subject(&path).unwrap();
        assert_eq!(s.name, "toy_physics");
        assert_eq!(s.questions.len(), 2);
        assert_eq!(s.questions[0], Question { question: "What is 2, plus 2?".into(), choices: vec!["3".into(), "4".into(), "5".into(), "six,\nor more".into()], answer: 1 });
        assert_eq!((s.questions[1].choices.len(), s.questions[1].answer), (2, 1));
    }

    #[test]
    fn malformed_rows_name_the_file_and_row() {
        for (text, expect) in [
            ("q,a,b,c,d,E\n", "answer \"E\""),
            ("q,a,b,c,d,AB\n", "answer \"AB\""),
            ("q,a,b,C\n", "answer \"C\" is not the letter of one of its 2 choices"),
            ("q,a,b,c,d,A\nq,a,A\n", "row 2: 3 fields"),
            ("", "no questions"),
            ("q,a,b,\"unterminated\n", "row 1"),
        ] {
            let path = write("bad_test.csv", text);
            let err = format!("{:#}", read_subject(&path).unwrap_err());
            assert!(err.contains("bad_test.csv") && err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn prompt_is_the_hendrycks_format() {
        let q = |text: &str, answer| Question { question: text.into(), choices: vec!["w".into(), "x".into(), "y".into(), "z".into()], answer };
        let p = prompt(Format::Letters, "high_school_physics", &[q("Shot?", 3)], &q("Asked?", 0));
        assert_eq!(
            p,
            "The following are multiple choice questions (with answers) about high school physics.\n\n\
             Shot?\nA. w\nB. x\nC. y\nD. z\nAnswer: D\n\n\
             Asked?\nA. w\nB. x\nC. y\nD. z\nAnswer:"
        );
        let p = prompt(Format::Cloze, "geography", &[q("Shot?", 3)], &q("Asked?", 0));
        assert_eq!(
            p,
            "The following are multiple choice questions (with answers) about geography.\n\n\
             Question: Shot?\nAnswer: z\n\n\
             Question: Asked?\nAnswer:"
        );
    }

    #[test]
    fn accuracy_counts_and_chance() {
        let a = Accuracy::of("s", &[(true, 4), (false, 4), (true, 2), (true, 4)]);
        assert_eq!((a.questions, a.correct), (4, 3));
        assert!((a.accuracy - 0.75).abs() < 1e-12 && (a.chance - 0.3125).abs() < 1e-12);
        assert!(a.ci_low < 0.75 && a.ci_high > 0.75);
    }
}
