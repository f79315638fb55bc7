//! The budget a chat template runs under. A chat template is a program shipped with the model
//! (untrusted input): unbounded, it can loop forever or build a string of 2^60 bytes, and a
//! failed allocation aborts the whole process. minijinja bounds instructions (fuel) and
//! recursion; bytes it does not count, so every place a template can create or copy bytes is
//! routed through a shared byte budget here:
//!
//! * the compiled program is rewritten: `~` becomes a checked concatenation; `+`, `*`, `in`,
//!   slicing and comparisons are preceded by a charge of their operands' size (the operation
//!   itself stays minijinja's); every filter, test, method and function call is charged its
//!   arguments before and its result after; and literal text is emitted through the same
//!   formatter as values, which counts every byte written (captures, macro bodies and `set`
//!   blocks included);
//! * the filters and Python string methods whose result can be far larger than their arguments
//!   (`replace`, `join`, `indent`, `format`, `string`, `pprint`, `tojson`) are charged their
//!   worst-case result before they run.
//!
//! So the fuel (instructions) and the byte budget bound a template's memory and time, as far as
//! the operations above are the ones whose cost grows with their operands (the tests in
//! `tests/hostile_tokenizer.rs` exercise each). Known gaps: calls with spread arguments
//! (`f(*xs)`, no static argument count) are charged their result only, and `sort`-like filters
//! are charged their input's size, not its n log n.

use minijinja::machinery::{Instruction, Instructions};
use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{Error as JinjaError, ErrorKind, State};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Limits a chat template is rendered under. Exceeding one is an
/// [`Error::ChatTemplateLimit`](crate::Error::ChatTemplateLimit) naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateLimits {
    /// Longest template source accepted, in bytes (default 1 MiB; real templates are < 20 KiB).
    pub max_source_bytes: usize,
    /// Instructions the template may execute (minijinja fuel; default 2,000,000, about 1 s).
    pub fuel: u64,
    /// Deepest nesting, in minijinja's recursion units: a loop or `if` counts 1, a macro call
    /// about 10 (default 500, minijinja's own maximum, which it cannot raise without growing the
    /// stack; lower values are honoured).
    pub max_recursion: usize,
    /// Longest rendered prompt, in bytes (default 16 MiB).
    pub max_output_bytes: usize,
    /// Bytes the template may create, copy, scan or compare in total: every string it builds,
    /// the arguments and result of every call, the operands of `+`, `*`, `in`, slicing and
    /// comparisons, and the output (default 64 MiB). This bounds its memory and, with the fuel,
    /// its time.
    pub max_bytes: usize,
}

impl Default for TemplateLimits {
    fn default() -> Self {
        TemplateLimits {
            max_source_bytes: 1 << 20,
            fuel: 2_000_000,
            max_recursion: 500,
            max_output_bytes: 16 << 20,
            max_bytes: 64 << 20,
        }
    }
}

// Which limit a render exceeded, as named in the error.
pub(super) const SOURCE: &str = "source size";
pub(super) const FUEL: &str = "fuel";
pub(super) const RECURSION: &str = "recursion";
pub(super) const OUTPUT: &str = "output size";
pub(super) const BYTES: &str = "bytes";

/// Bytes charged so far in one render, and the first limit it hit.
pub(super) struct Budget {
    pub(super) limits: TemplateLimits,
    processed: AtomicUsize,
    output: AtomicUsize,
    exceeded: Mutex<Option<(&'static str, String)>>,
}

/// What a `Vec<Value>` slot costs, charged per element of sequences the template builds.
const SLOT: usize = 32;

impl Budget {
    pub(super) fn new(limits: TemplateLimits) -> Arc<Self> {
        Arc::new(Budget {
            limits,
            processed: AtomicUsize::new(0),
            output: AtomicUsize::new(0),
            exceeded: Mutex::new(None),
        })
    }

    /// The limit that stopped the render, with a description.
    pub(super) fn exceeded(&self) -> Option<(&'static str, String)> {
        self.exceeded.lock().map(|e| e.clone()).unwrap_or(None)
    }

    fn fail(&self, limit: &'static str, problem: String) -> JinjaError {
        if let Ok(mut e) = self.exceeded.lock() {
            e.get_or_insert((limit, problem.clone()));
        }
        JinjaError::new(ErrorKind::InvalidOperation, format!("{limit} limit: {problem}"))
    }

    fn remaining(&self) -> usize {
        self.limits.max_bytes.saturating_sub(self.processed.load(Ordering::Relaxed))
    }

    /// Charges `bytes` processed by `what`, failing if the total would pass the limit.
    fn charge(&self, bytes: usize, what: &str) -> Result<(), JinjaError> {
        let before = self.processed.fetch_add(bytes.min(usize::MAX / 2), Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limits.max_bytes {
            return Err(self.fail(
                BYTES,
                format!("{what} would bring the bytes the template processed past {}", self.limits.max_bytes),
            ));
        }
        Ok(())
    }

    /// The size of `v` as text, or an error once it passes what the budget still allows.
    fn text_size(&self, v: &Value, what: &str) -> Result<usize, JinjaError> {
        let limit = self.remaining();
        text_size(v, limit).ok_or_else(|| {
            self.fail(BYTES, format!("{what} would process more than the {limit} bytes the template has left"))
        })
    }

    /// Cost of holding `v` (not displaying it): its bytes if a string, its slots if a sequence.
    fn shallow_size(&self, v: &Value) -> usize {
        match v.kind() {
            ValueKind::String | ValueKind::Bytes => v.len().unwrap_or(0),
            ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => {
                v.len().unwrap_or_else(|| bounded_count(v, self.remaining() / SLOT + 1)).saturating_mul(SLOT)
            }
            _ => SLOT,
        }
    }

    fn output(&self, bytes: usize) -> Result<(), JinjaError> {
        let before = self.output.fetch_add(bytes.min(usize::MAX / 2), Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limits.max_output_bytes {
            return Err(self.fail(OUTPUT, format!("the rendered text would pass {} bytes", self.limits.max_output_bytes)));
        }
        self.charge(bytes, "the output")
    }
}

fn bounded_count(v: &Value, limit: usize) -> usize {
    v.try_iter().map(|it| it.take(limit).count()).unwrap_or(0)
}

/// Bytes `v` displays as (an upper bound: strings inside containers count as if every
/// character were escaped), or `None` past `limit`. Stops walking as soon as it passes
/// `limit`, so its cost is bounded by `limit` too.
pub(super) fn text_size(v: &Value, limit: usize) -> Option<usize> {
    fn walk(v: &Value, nested: bool, limit: usize, depth: usize) -> Option<usize> {
        if depth > 256 {
            return None;
        }
        let n = match v.kind() {
            ValueKind::String | ValueKind::Bytes => {
                let len = v.len().unwrap_or(0);
                if nested {
                    // Quoted, and a control character escapes to at most six (`\u001b`).
                    len.saturating_mul(6).saturating_add(2)
                } else {
                    len
                }
            }
            ValueKind::Seq | ValueKind::Iterable | ValueKind::Map => {
                let is_map = v.kind() == ValueKind::Map;
                let mut total = 2usize;
                for item in v.try_iter().ok()? {
                    total = total.saturating_add(2).saturating_add(walk(&item, true, limit, depth + 1)?);
                    if is_map {
                        let value = v.get_item(&item).unwrap_or_default();
                        total = total.saturating_add(2).saturating_add(walk(&value, true, limit, depth + 1)?);
                    }
                    if total > limit {
                        return None;
                    }
                }
                total
            }
            // Numbers, booleans, none, undefined, macros and other plain objects: short texts.
            _ => 64,
        };
        (n <= limit).then_some(n)
    }
    walk(v, false, limit, 0)
}

/// Functions the rewritten program calls; names no template uses.
const CONCAT: &str = "__specdec_concat";
const CHECK_ADD: &str = "__specdec_check_add";
const CHECK_MUL: &str = "__specdec_check_mul";
const CHECK_SCAN: &str = "__specdec_check_scan";
const CHECK_COMPARE: &str = "__specdec_check_compare";
const CHECK_ARGS: &str = "__specdec_check_args";
const CHARGE: &str = "__specdec_charge";

/// Rewrites compiled instructions so every byte the program creates, copies, scans or compares
/// goes through `Budget` (see the module comment). A check takes the operands off the stack and
/// returns them as a list that `UnpackList` puts back, so the operation itself stays
/// minijinja's. Jump targets and macro offsets are remapped to the new positions.
pub(super) fn rewrite<'s>(old: &Instructions<'s>) -> Instructions<'s> {
    let n = old.len() as u32;
    let mut out = Instructions::new(old.name(), old.source());
    let mut new_pc = Vec::with_capacity(n as usize + 1);
    let mut emitted: Vec<(u32, Instruction<'s>)> = Vec::new();
    for pc in 0..n {
        new_pc.push(emitted.len() as u32);
        let Some(instr) = old.get(pc) else { continue };
        let mut push = |i: Instruction<'s>| emitted.push((pc, i));
        let mut checked = |check: &'static str, operands: usize, i: Instruction<'s>| {
            if operands > 0 {
                push(Instruction::CallFunction(check, Some(operands as u16)));
                push(Instruction::UnpackList(operands));
            }
            push(i);
        };
        let args = |count: &Option<u16>| count.map_or(0, usize::from);
        match instr {
            Instruction::StringConcat => push(Instruction::CallFunction(CONCAT, Some(2))),
            Instruction::Add => checked(CHECK_ADD, 2, instr.clone()),
            Instruction::Mul => checked(CHECK_MUL, 2, instr.clone()),
            // `in` scans its container (the top operand), slicing copies its value (the bottom one).
            Instruction::In => checked(CHECK_SCAN, 2, instr.clone()),
            Instruction::Slice => checked(CHECK_SCAN, 4, instr.clone()),
            Instruction::Eq
            | Instruction::Ne
            | Instruction::Lt
            | Instruction::Lte
            | Instruction::Gt
            | Instruction::Gte => checked(CHECK_COMPARE, 2, instr.clone()),
            Instruction::EmitRaw(text) => {
                push(Instruction::LoadConst(Value::from_safe_string(text.to_string())));
                push(Instruction::Emit);
            }
            // Calls are charged their arguments (what a filter, test or method walks) before,
            // and their result after. Calls with spread arguments (`f(*xs)`) have no static
            // count: they are charged their result only.
            Instruction::ApplyFilter(_, count, _)
            | Instruction::CallMethod(_, count)
            | Instruction::CallFunction(_, count) => {
                checked(CHECK_ARGS, args(count), instr.clone());
                push(Instruction::CallFunction(CHARGE, Some(1)));
            }
            Instruction::PerformTest(_, count, _) => checked(CHECK_ARGS, args(count), instr.clone()),
            Instruction::CallObject(..) => {
                push(instr.clone());
                push(Instruction::CallFunction(CHARGE, Some(1)));
            }
            other => push(other.clone()),
        }
    }
    new_pc.push(emitted.len() as u32);
    let map = |t: &u32| new_pc.get(*t as usize).copied().unwrap_or(*t);
    for (pc, mut instr) in emitted {
        match &mut instr {
            Instruction::Jump(t)
            | Instruction::JumpIfFalse(t)
            | Instruction::JumpIfFalseOrPop(t)
            | Instruction::JumpIfTrueOrPop(t)
            | Instruction::Iterate(t)
            | Instruction::BuildMacro(_, t, _) => *t = map(t),
            _ => {}
        }
        match old.get_span(pc) {
            Some(span) => out.add_with_span(instr, span),
            None => out.add_with_line(instr, old.get_line(pc).unwrap_or(0).min(u16::MAX as usize) as u16),
        };
    }
    out
}

/// The operands, in the order `UnpackList` restores them.
fn restore(mut operands: Vec<Value>) -> Value {
    operands.reverse();
    Value::from(operands)
}

/// Registers the checking functions, the size-checked filters and methods, and the counting
/// formatter on `env`, all charging `budget`.
pub(super) fn install(env: &mut minijinja::Environment<'_>, budget: &Arc<Budget>) {
    env.set_fuel(Some(budget.limits.fuel));
    env.set_recursion_limit(budget.limits.max_recursion);

    let b = budget.clone();
    env.add_function(CONCAT, move |a: Value, c: Value| -> Result<Value, JinjaError> {
        let size = b.text_size(&a, "`~`")?.saturating_add(b.text_size(&c, "`~`")?);
        b.charge(size, "`~`")?;
        Ok(Value::from(format!("{a}{c}")))
    });
    let b = budget.clone();
    env.add_function(CHECK_ADD, move |a: Value, c: Value| -> Result<Value, JinjaError> {
        b.charge(b.shallow_size(&a).saturating_add(b.shallow_size(&c)), "`+`")?;
        Ok(restore(vec![a, c]))
    });
    let b = budget.clone();
    env.add_function(CHECK_MUL, move |a: Value, c: Value| -> Result<Value, JinjaError> {
        let times = |x: &Value| x.as_usize().unwrap_or(1);
        let size = b.shallow_size(&a).saturating_mul(times(&c)).max(b.shallow_size(&c).saturating_mul(times(&a)));
        b.charge(size, "`*`")?;
        Ok(restore(vec![a, c]))
    });
    let b = budget.clone();
    env.add_function(CHECK_SCAN, move |operands: Rest<Value>| -> Result<Value, JinjaError> {
        // `x in container` scans the container; `value[start:stop:step]` copies from the value.
        let scanned = if operands.len() == 2 { operands.get(1) } else { operands.first() };
        b.charge(scanned.map_or(0, |v| b.shallow_size(v)), "`in` or slicing")?;
        Ok(restore(operands.0))
    });
    let b = budget.clone();
    env.add_function(CHECK_COMPARE, move |a: Value, c: Value| -> Result<Value, JinjaError> {
        b.charge(b.shallow_size(&a).min(b.shallow_size(&c)), "a comparison")?;
        Ok(restore(vec![a, c]))
    });
    let b = budget.clone();
    env.add_function(CHECK_ARGS, move |args: Rest<Value>| -> Result<Value, JinjaError> {
        let size = args.iter().fold(0usize, |n, v| n.saturating_add(b.shallow_size(v)));
        b.charge(size, "a call's arguments")?;
        Ok(restore(args.0))
    });
    let b = budget.clone();
    env.add_function(CHARGE, move |v: Value| -> Result<Value, JinjaError> {
        b.charge(b.shallow_size(&v), "a call result")?;
        Ok(v)
    });

    let b = budget.clone();
    env.set_formatter(move |out, state, value| {
        let size = b.text_size(value, "emitting a value")?;
        b.output(size)?;
        minijinja::escape_formatter(out, state, value)
    });

    wrap_filter(env, budget, "replace", Value::from_function(minijinja::filters::replace), replace_size);
    wrap_filter(env, budget, "join", Value::from_function(minijinja::filters::join), join_size);
    wrap_filter(env, budget, "indent", Value::from_function(minijinja::filters::indent), indent_size);
    wrap_filter(env, budget, "format", Value::from_function(minijinja::filters::format), format_size);
    wrap_filter(env, budget, "string", Value::from_function(minijinja::filters::string), display_size);
    wrap_filter(env, budget, "pprint", Value::from_function(minijinja::filters::pprint), pprint_size);
    wrap_filter(env, budget, "tojson", Value::from_function(super::chat_template::tojson_python), tojson_size);

    let b = budget.clone();
    env.set_unknown_method_callback(move |state, value, method, args| {
        if value.kind() == ValueKind::String {
            let mut all = vec![value.clone()];
            all.extend_from_slice(args);
            let size = match method {
                "replace" => Some(replace_size(&b, &all)?),
                "join" => Some(join_size(&b, &[args.first().cloned().unwrap_or_default(), value.clone()])?),
                "format" => Some(format_size(&b, &all)?),
                _ => None,
            };
            if let Some(size) = size {
                b.charge(size, &format!("str.{method}"))?;
            }
        }
        minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
    });
}

type SizeBound = fn(&Budget, &[Value]) -> Result<usize, JinjaError>;

/// Replaces filter `name` by `filter` preceded by a charge of `bound`, its worst-case result size.
fn wrap_filter(env: &mut minijinja::Environment<'_>, budget: &Arc<Budget>, name: &'static str, filter: Value, bound: SizeBound) {
    let b = budget.clone();
    env.add_filter(name, move |state: &State, args: Rest<Value>| -> Result<Value, JinjaError> {
        b.charge(bound(&b, &args)?, &format!("the `{name}` filter"))?;
        filter.call(state, &args)
    });
}

fn str_len(b: &Budget, v: Option<&Value>, what: &str) -> Result<usize, JinjaError> {
    v.map_or(Ok(0), |v| b.text_size(v, what))
}

/// `replace(s, old, new[, count])`: every occurrence of `old` (or every gap, if empty) becomes `new`.
fn replace_size(b: &Budget, args: &[Value]) -> Result<usize, JinjaError> {
    let what = "`replace`";
    let s = str_len(b, args.first(), what)?;
    let new = str_len(b, args.get(2), what)?;
    let count = match (args.first().and_then(|v| v.as_str()), args.get(1).and_then(|v| v.as_str())) {
        (Some(text), Some(old)) if !old.is_empty() => text.matches(old).count(),
        _ => s.saturating_add(1),
    };
    Ok(s.saturating_add(count.saturating_mul(new)))
}

fn join_size(b: &Budget, args: &[Value]) -> Result<usize, JinjaError> {
    let what = "`join`";
    let items = b.text_size(args.first().unwrap_or(&Value::UNDEFINED), what)?;
    let n = args.first().map_or(0, |v| bounded_count(v, b.remaining().saturating_add(1)));
    let sep = str_len(b, args.get(1), what)?;
    Ok(items.saturating_add(n.saturating_mul(sep)))
}

fn indent_size(b: &Budget, args: &[Value]) -> Result<usize, JinjaError> {
    let what = "`indent`";
    let text = args.first().and_then(|v| v.as_str()).unwrap_or_default();
    let width = args
        .iter()
        .skip(1)
        .map(|v| match v.as_str() {
            Some(s) => s.len(),
            None => v.as_usize().unwrap_or(0),
        })
        .max()
        .unwrap_or(4);
    let lines = text.bytes().filter(|&c| c == b'\n').count().saturating_add(1);
    Ok(str_len(b, args.first(), what)?.saturating_add(lines.saturating_mul(width)))
}

/// `format`: the format string, every argument, and every number in the format string (an
/// upper bound on field widths and precisions).
fn format_size(b: &Budget, args: &[Value]) -> Result<usize, JinjaError> {
    let what = "`format`";
    let mut total = 0usize;
    for a in args {
        total = total.saturating_add(b.text_size(a, what)?);
    }
    let fmt = args.first().and_then(|v| v.as_str()).unwrap_or_default();
    let mut widths = 0usize;
    for digits in fmt.split(|c: char| !c.is_ascii_digit()).filter(|d| !d.is_empty()) {
        widths = widths.saturating_add(digits.parse::<usize>().unwrap_or(usize::MAX));
    }
    Ok(total.saturating_add(widths))
}

fn display_size(b: &Budget, args: &[Value]) -> Result<usize, JinjaError> {
    str_len(b, args.first(), "`string`")
}

fn pprint_size(b: &Budget, args: &[Value]) -> Result<usize, JinjaError> {
    // Pretty printing indents nested items: a few times the flat text, and depth is bounded.
    Ok(str_len(b, args.first(), "`pprint`")?.saturating_mul(4))
}

fn tojson_size(b: &Budget, args: &[Value]) -> Result<usize, JinjaError> {
    let flat = str_len(b, args.first(), "`tojson`")?;
    // An indent repeats per nesting level and per item: bounded by flat size times indent.
    let indent = args
        .iter()
        .skip(1)
        .filter_map(|v| v.as_usize().or_else(|| v.get_attr("indent").ok().and_then(|i| i.as_usize())))
        .max()
        .unwrap_or(1)
        .max(1);
    Ok(flat.saturating_mul(indent.saturating_add(1)))
}
