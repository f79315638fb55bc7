//! Chat templates: Jinja programs rendered with minijinja the way transformers renders them.

use super::template_budget::{self, Budget, TemplateLimits, FUEL, RECURSION, SOURCE};
use super::{ChatMessage, Tokenizer};
use crate::error::{Error, Result};

impl Tokenizer {
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders the chat template (Jinja, as transformers does: trim_blocks, lstrip_blocks, Python
    /// string methods) with `messages`, `add_generation_prompt`, `bos_token`, `eos_token`, and the
    /// functions `raise_exception` and `strftime_now`, under [`template_limits`](Self::template_limits):
    /// a template that exceeds one fails with [`Error::ChatTemplateLimit`] naming it.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let Some(template) = &self.chat_template else {
            return Err(Error::ChatTemplate {
                origin: self.origin.clone(),
                problem: "the model has no chat template".into(),
            });
        };
        let text = |id: Option<u32>| id.and_then(|i| self.token_text(i)).unwrap_or_default();
        render_chat_template(
            template,
            self.chat_template_origin.as_deref().unwrap_or(&self.origin),
            messages,
            add_generation_prompt,
            &text(self.bos_id),
            &text(self.eos_ids.first().copied()),
            &self.template_limits,
        )
    }

    /// The limits chat templates are rendered under ([`TemplateLimits::default`] unless set).
    pub fn template_limits(&self) -> &TemplateLimits {
        &self.template_limits
    }

    /// Renders chat templates under `limits` instead.
    pub fn with_template_limits(mut self, limits: TemplateLimits) -> Self {
        self.template_limits = limits;
        self
    }

    /// The special token the chat template closes an assistant turn with (`<|im_end|>`,
    /// `<end_of_turn>`, `<|eot_id|>`, …), found by rendering a probe conversation and reading the
    /// first token after the assistant's text. `None` without a template or when the turn is
    /// closed by plain text.
    pub fn end_of_turn_id(&self) -> Option<u32> {
        const PROBE: &str = "specdec-end-of-turn-probe";
        let messages = [ChatMessage::new("user", "hi"), ChatMessage::new("assistant", PROBE)];
        let text = self.apply_chat_template(&messages, false).ok()?;
        let after = &text[text.rfind(PROBE)? + PROBE.len()..];
        let first = *self.encode(after, false).ok()?.first()?;
        self.is_special(first).then_some(first)
    }
}

fn render_chat_template(
    template: &str,
    origin: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
    limits: &TemplateLimits,
) -> Result<String> {
    use minijinja::machinery::{get_compiled_template, make_string_output, Vm};
    use minijinja::{Environment, ErrorKind};
    let limit = |limit: &'static str, problem: String| Error::ChatTemplateLimit {
        origin: origin.to_string(),
        limit,
        problem,
    };
    if template.len() > limits.max_source_bytes {
        return Err(limit(
            SOURCE,
            format!("the template has {} bytes, more than {}", template.len(), limits.max_source_bytes),
        ));
    }
    let budget = Budget::new(*limits);
    let fail = |e: minijinja::Error| {
        if let Some((which, problem)) = budget.exceeded() {
            return limit(which, problem);
        }
        #[allow(unreachable_patterns)]
        match e.kind() {
            ErrorKind::OutOfFuel => {
                return limit(FUEL, format!("the template ran more than {} instructions", limits.fuel))
            }
            _ if e.detail().is_some_and(|d| d.contains("recursion limit exceeded"))
                || e.to_string().contains("recursion limit exceeded") =>
            {
                return limit(RECURSION, format!("nesting deeper than {} levels", limits.max_recursion))
            }
            _ => {}
        }
        let problem = if e.kind() == ErrorKind::InvalidOperation && e.detail().is_some_and(|d| d.starts_with(RAISED)) {
            let d = e.detail().unwrap_or_default();
            format!("template raised an exception: {}", &d[RAISED.len()..])
        } else {
            let mut p = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                p.push_str(&format!(": {s}"));
                src = s.source();
            }
            p
        };
        Error::ChatTemplate { origin: origin.to_string(), problem }
    };
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}")))
    });
    env.add_function("strftime_now", |fmt: String| -> String {
        let secs =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        strftime(&fmt, secs)
    });
    template_budget::install(&mut env, &budget);
    let tmpl = env.template_from_str(template).map_err(fail)?;
    let compiled = get_compiled_template(&tmpl);
    let instructions = template_budget::rewrite(&compiled.instructions);
    let blocks = compiled.blocks.iter().map(|(name, block)| (*name, template_budget::rewrite(block))).collect();
    let ctx = minijinja::context! {
        messages => minijinja::Value::from_serialize(messages),
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    let mut rendered = String::new();
    Vm::new(&env)
        .eval(&instructions, ctx, &blocks, &mut make_string_output(&mut rendered), compiled.initial_auto_escape)
        .map_err(fail)?;
    Ok(rendered)
}

const RAISED: &str = "raise_exception: ";

/// `tojson` as transformers defines it: Python's `json.dumps(ensure_ascii=False)` (separators
/// `", "`/`": "`, keys in insertion order unless `sort_keys`), not HTML-escaped.
pub(super) fn tojson_python(
    value: minijinja::Value,
    indent: Option<minijinja::Value>,
    kwargs: minijinja::value::Kwargs,
) -> std::result::Result<minijinja::Value, minijinja::Error> {
    let indent: Option<minijinja::Value> = match indent {
        Some(v) => Some(v),
        None => kwargs.get("indent")?,
    };
    let indent: Option<usize> = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let separators: Option<minijinja::Value> = kwargs.get("separators")?;
    let (item_sep, key_sep) = match separators {
        Some(s) => (
            s.get_item_by_index(0)?.as_str().unwrap_or(",").to_string(),
            s.get_item_by_index(1)?.as_str().unwrap_or(": ").to_string(),
        ),
        None if indent.is_some() => (",".to_string(), ": ".to_string()),
        None => (", ".to_string(), ": ".to_string()),
    };
    let mut out = String::new();
    let style = JsonStyle { indent, item_sep, key_sep, sort_keys: sort_keys.unwrap_or(false) };
    write_json(&value, &style, 0, &mut out)?;
    Ok(minijinja::Value::from_safe_string(out))
}

struct JsonStyle {
    indent: Option<usize>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn write_json(
    v: &minijinja::Value,
    style: &JsonStyle,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    use minijinja::value::ValueKind;
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = style.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let json_err =
        |e: serde_json::Error| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("tojson: {e}"));
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::String => out.push_str(&serde_json::to_string(v.as_str().unwrap_or_default()).map_err(json_err)?),
        ValueKind::Map => {
            let mut keys: Vec<minijinja::Value> = v.try_iter()?.collect();
            if style.sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                let key = match k.as_str() {
                    Some(s) => s.to_string(),
                    None => k.to_string(),
                };
                out.push_str(&serde_json::to_string(&key).map_err(json_err)?);
                out.push_str(&style.key_sep);
                write_json(&v.get_item(k)?, style, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<minijinja::Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&style.item_sep);
                }
                newline(out, depth + 1);
                write_json(item, style, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => out.push_str(&serde_json::to_string(v).map_err(json_err)?),
    }
    Ok(())
}

/// A small `strftime` for `strftime_now` (UTC): `%Y %y %m %d %e %H %I %M %S %p %b %B %a %A %j %%`.
pub(super) fn strftime(fmt: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (h, mi, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_march + 2) / 153;
    let d = doy_march - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let weekday = (days + 4).rem_euclid(7) as usize;
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:>2}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('I') => out.push_str(&format!("{:02}", if h % 12 == 0 { 12 } else { h % 12 })),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('b') => out.push_str(&MONTHS[(m - 1) as usize][..3]),
            Some('B') => out.push_str(MONTHS[(m - 1) as usize]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}
