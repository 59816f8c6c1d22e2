//! Durations (`250ms`, `1s`, `2m`, `1h`) and sizes (`32KiB`) as written in config files.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written as a number and a unit: `ms`, `s`, `m` or `h` (`1.5s` is allowed), at
/// most [`Span::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span(pub Duration);

impl Span {
    /// The longest duration a config may give: ten years. No timeout or limit needs more,
    /// and every sum with an instant or count in nanoseconds stays far from overflowing.
    pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

    pub const fn secs(s: u64) -> Span {
        Span(Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Span {
        Span(Duration::from_millis(ms))
    }

    pub fn parse(text: &str) -> Result<Span, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{text}` has no unit; write e.g. 250ms, 1s, 2m or 1h"))?;
        let (number, unit) = text.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration; write e.g. 250ms, 1s, 2m or 1h"))?;
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => {
                return Err(format!(
                    "`{text}` has unknown unit `{unit}`; use ms, s, m or h"
                ))
            }
        };
        match Duration::try_from_secs_f64(number * scale) {
            Ok(span) if span <= Span::MAX => Ok(Span(span)),
            _ => Err(format!("`{text}` is longer than 87600h (ten years)")),
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Span::parse(&text).map_err(de::Error::custom)
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A byte size: a plain number of bytes, or a number with `B`, `KiB`, `MiB` (also `KB`, `MB`
/// as the same binary multiples, as nginx reads `k` and `m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub usize);

impl ByteSize {
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: usize = number
            .parse()
            .map_err(|_| format!("`{text}` is not a size; write e.g. 32KiB"))?;
        let scale = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "KB" | "K" | "k" => 1024,
            "MiB" | "MB" | "M" | "m" => 1024 * 1024,
            other => {
                return Err(format!(
                    "`{text}` has unknown unit `{other}`; use B, KiB or MiB"
                ))
            }
        };
        number
            .checked_mul(scale)
            .map(ByteSize)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(usize),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_every_unit() {
        assert_eq!(Span::parse("250ms").unwrap(), Span::millis(250));
        assert_eq!(Span::parse("1s").unwrap(), Span::secs(1));
        assert_eq!(Span::parse("2m").unwrap(), Span::secs(120));
        assert_eq!(Span::parse("1h").unwrap(), Span::secs(3600));
        assert_eq!(Span::parse("1.5s").unwrap(), Span::millis(1500));
        assert_eq!(Span::parse("0s").unwrap(), Span::secs(0));
    }

    #[test]
    fn spans_refuse_missing_or_unknown_units() {
        assert!(Span::parse("10").unwrap_err().contains("no unit"));
        assert!(Span::parse("10d").unwrap_err().contains("unknown unit"));
        assert!(Span::parse("ms").is_err());
    }

    #[test]
    fn spans_and_sizes_past_their_bounds_are_refused_not_a_panic() {
        assert_eq!(Span::parse("87600h").unwrap().0, Span::MAX);
        for text in ["87601h", "2600000000h", "9000000000000000h", "1e400s"] {
            assert!(Span::parse(text).is_err(), "{text}");
        }
        assert!(ByteSize::parse("18446744073709551615MiB").is_err());
    }

    #[test]
    fn spans_print_back_as_written() {
        for text in ["250ms", "1s", "2m", "1h", "0s"] {
            assert_eq!(Span::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("32KiB").unwrap(), ByteSize(32 * 1024));
        assert_eq!(ByteSize::parse("1MiB").unwrap(), ByteSize(1024 * 1024));
        assert_eq!(ByteSize::parse("100").unwrap(), ByteSize(100));
        assert!(ByteSize::parse("12 parsecs").is_err());
    }
}
