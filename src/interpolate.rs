//! `${VAR}` and `${VAR:-default}`: in the bootstrap config, replaced from the environment
//! before the YAML is parsed (as `envsubst` does), so they may stand for any scalar; in
//! resources, where secrets may come from the environment (auth policies).
//!
//! A module of its own so that resources and snapshots, below the bootstrap config in the
//! layers, can use it without depending on it.

/// Why interpolation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    #[error("line {line}: environment variable {name} is not set (write ${{{name}:-default}} to give a default)")]
    Unset { name: String, line: usize },
    #[error("line {line}: unclosed ${{")]
    Unclosed { line: usize },
    #[error("line {line}: `{name}` is not a variable name")]
    BadName { name: String, line: usize },
}

/// Replaces every `${NAME}` / `${NAME:-default}` using `lookup`. `$$` stands for a literal `$`.
/// With `:-`, the default applies when the variable is unset or empty, as in POSIX shells.
/// Whole-line comments are left alone, so they may mention `${VAR}`.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
        } else {
            interpolate_line(line, i + 1, &lookup, &mut out)?;
        }
    }
    Ok(out)
}

fn interpolate_line(
    text: &str,
    line: usize,
    lookup: &impl Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), InterpolationError> {
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = body
            .find('}')
            .ok_or(InterpolationError::Unclosed { line })?;
        let expr = &body[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (expr, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(InterpolationError::BadName {
                name: name.to_string(),
                line,
            });
        }
        let value = lookup(name);
        match (value, default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(InterpolationError::Unset {
                    name: name.to_string(),
                    line,
                })
            }
        }
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("8081".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables() {
        assert_eq!(
            interpolate("addr: 0.0.0.0:${PORT}", env).unwrap(),
            "addr: 0.0.0.0:8081"
        );
    }

    #[test]
    fn defaults_apply_when_unset_or_empty() {
        assert_eq!(interpolate("${NOPE:-9}", env).unwrap(), "9");
        assert_eq!(interpolate("${EMPTY:-x}", env).unwrap(), "x");
        assert_eq!(interpolate("${PORT:-x}", env).unwrap(), "8081");
        assert_eq!(interpolate("key: ${NOPE:-}", env).unwrap(), "key: ");
    }

    #[test]
    fn unset_without_default_is_an_error_naming_the_variable_and_line() {
        let err = interpolate("a: 1\nb: ${SECRET}\n", env).unwrap_err();
        assert_eq!(
            err,
            InterpolationError::Unset {
                name: "SECRET".into(),
                line: 2
            }
        );
        assert!(err.to_string().contains("SECRET"));
    }

    #[test]
    fn dollars_without_braces_stay_and_double_dollar_escapes() {
        assert_eq!(
            interpolate("cost: $5 $$HOME $${PORT}", env).unwrap(),
            "cost: $5 $HOME ${PORT}"
        );
    }

    #[test]
    fn whole_line_comments_are_left_alone() {
        assert_eq!(
            interpolate("# uses ${SECRET}\nport: ${PORT}\n", env).unwrap(),
            "# uses ${SECRET}\nport: 8081\n"
        );
    }

    #[test]
    fn malformed_expressions_are_errors() {
        assert!(matches!(
            interpolate("${PORT", env),
            Err(InterpolationError::Unclosed { .. })
        ));
        assert!(matches!(
            interpolate("${1X}", env),
            Err(InterpolationError::BadName { .. })
        ));
    }
}
