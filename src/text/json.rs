//! Python-compatible `tojson` for chat templates: `json.dumps(value, ensure_ascii=False,
//! indent=indent, sort_keys=sort_keys)`, as transformers defines the filter. minijinja's own
//! `tojson` HTML-escapes `<`, `>`, `&` and `'`, which would change the prompt.

use minijinja::value::{Kwargs, Value};
use minijinja::{Error, ErrorKind};

/// The `tojson` filter, refusing an indent above `max_indent` and output above `max_bytes`
/// (a template's indent is a number it chose: Python would try to allocate it).
pub(crate) fn tojson_filter(
    max_indent: usize,
    max_bytes: usize,
) -> impl Fn(&Value, Kwargs) -> Result<Value, Error> + Send + Sync + 'static {
    move |value: &Value, kwargs: Kwargs| {
        let indent: Option<Value> = kwargs.get("indent")?;
        let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
        let _: Option<bool> = kwargs.get("ensure_ascii")?; // always False here, as in HF
        kwargs.assert_all_used()?;
        let indent = match indent {
            None => None,
            Some(v) if v.is_none() => None,
            Some(v) => Some(usize::try_from(v)?),
        };
        if indent.is_some_and(|n| n > max_indent) {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson: indent {} is larger than {max_indent}", indent.unwrap_or(0)),
            ));
        }
        let mut out = String::new();
        let opts = JsonOptions { indent, sort: sort_keys.unwrap_or(false), max_bytes };
        write_json(&mut out, value, &opts, 0)?;
        Ok(Value::from_safe_string(out))
    }
}

struct JsonOptions {
    indent: Option<usize>,
    sort: bool,
    max_bytes: usize,
}

fn write_json(out: &mut String, v: &Value, opts: &JsonOptions, level: usize) -> Result<(), Error> {
    use minijinja::value::ValueKind as K;
    let indent = opts.indent;
    let newline = |out: &mut String, level: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', n * level));
        }
    };
    if out.len() > opts.max_bytes {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: the output exceeds {} bytes", opts.max_bytes),
        ));
    }
    // Python: item separator ", " without indent, "," with indent.
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        K::Undefined | K::None => out.push_str("null"),
        K::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        K::Number => {
            // as_i64 also accepts integral floats, so ask the representation.
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                out.push_str(&py_float(f64::try_from(v.clone())?));
            }
        }
        K::String => write_json_str(out, v.as_str().unwrap_or_default()),
        K::Seq | K::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_json(out, item, opts, level + 1)?;
            }
            newline(out, level);
            out.push(']');
        }
        K::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if opts.sort {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                // Python converts non-string keys (numbers, bools, None) to strings.
                let key = match k.kind() {
                    K::String => k.as_str().unwrap_or_default().to_owned(),
                    K::None | K::Undefined => "null".to_owned(),
                    K::Bool => (if k.is_true() { "true" } else { "false" }).to_owned(),
                    _ => k.to_string(),
                };
                write_json_str(out, &key);
                out.push_str(": ");
                write_json(out, &v.get_item(k)?, opts, level + 1)?;
            }
            newline(out, level);
            out.push('}');
        }
        other => {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("tojson: cannot serialize {other}")));
        }
    }
    Ok(())
}

/// JSON string with ensure_ascii=False escaping (as Python's json module).
fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)` / json float formatting.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // Shortest round-trip digits; Python switches to exponent form when the
    // decimal exponent is < -4 or >= 16.
    let sci = format!("{f:e}"); // e.g. "1.5e-5"
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = f.to_string();
        if s.contains('.') {
            s
        } else {
            s + ".0"
        }
    } else {
        format!("{mantissa}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The float half of `py_tojson_format` (the rendering half is in template.rs).
    #[test]
    fn py_float_format() {
        assert_eq!(py_float(1.5e-5), "1.5e-05");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_float(123456789.0), "123456789.0");
    }
}
