//! The value syntax of header, query and cookie matches: `v`, `a|b`, `~regex`.

use regex::Regex;

/// A compiled value test. Regexes are compiled here, once, when config changes.
#[derive(Debug, Clone)]
pub enum ValueMatcher {
    Exact(Box<str>),
    AnyOf(Box<[Box<str>]>),
    /// `~regex`: matches if the regex matches anywhere in the value; anchor with `^…$`.
    Regex(Regex),
}

impl ValueMatcher {
    pub fn parse(text: &str) -> Result<ValueMatcher, String> {
        if let Some(pattern) = text.strip_prefix('~') {
            return Regex::new(pattern)
                .map(ValueMatcher::Regex)
                .map_err(|e| format!("`{pattern}` is not a valid regex: {e}"));
        }
        if text.contains('|') {
            return Ok(ValueMatcher::AnyOf(
                text.split('|').map(Box::from).collect(),
            ));
        }
        Ok(ValueMatcher::Exact(text.into()))
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatcher::Exact(v) => &**v == value,
            ValueMatcher::AnyOf(vs) => vs.iter().any(|v| &**v == value),
            ValueMatcher::Regex(re) => re.is_match(value),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_alternatives_and_regex() {
        let m = ValueMatcher::parse("mobile|web").unwrap();
        assert!(m.matches("web") && m.matches("mobile") && !m.matches("tv"));
        let m = ValueMatcher::parse("1").unwrap();
        assert!(m.matches("1") && !m.matches("10"));
        let m = ValueMatcher::parse("~^v[0-9]+$").unwrap();
        assert!(m.matches("v12") && !m.matches("xv1"));
        assert!(ValueMatcher::parse("~(").unwrap_err().contains("regex"));
    }
}
