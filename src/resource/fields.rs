//! Small shared pieces of resource parsing and checking.

use gatehouse_plugins::selector::{Forms, Selector, SelectorError};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// One problem with one field of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path of the field, e.g. `match.paths[0]`; empty for the whole document.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Collects the errors of one resource so all of them are reported at once.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<FieldError>);

impl Problems {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn into_result<T>(self, value: T) -> Result<T, Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self.0)
        }
    }
}

/// A string field that also accepts a YAML number or boolean, so `debug: 1` means `"1"`
/// rather than a type error in match values and header values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(pub String);

impl Text {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Resource ids appear in etcd keys and admin URLs, so they keep to a URL-safe alphabet.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "`{id}` may only hold letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

pub fn check_header_name(name: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a valid header name"))
}

/// A request selector as a resource writes it (`header:X-User-Id`, `client_ip`).
///
/// The text is kept as written, so the resource reads back (admin API, `gatehouse get`) and
/// compares (admission keeps an unchanged object's `Arc`) exactly as it was given. It is
/// parsed once, when the document is read; the field checks and compilation both use that
/// one parse ([`SelectorText::selector`]), so no two places can read the text differently.
/// A text that does not parse is kept with its error and reported by the field check, next
/// to the resource's other problems.
#[derive(Debug, Clone)]
pub struct SelectorText {
    text: String,
    parsed: Result<Selector, SelectorError>,
}

impl SelectorText {
    pub fn new(text: impl Into<String>) -> SelectorText {
        let text = text.into();
        let parsed = Selector::parse(&text);
        SelectorText { text, parsed }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The selector, judged as the value of a setting that takes `forms`.
    pub fn selector(&self, forms: Forms) -> Result<&Selector, SelectorError> {
        forms.judge(&self.text, &self.parsed)
    }
}

impl From<&str> for SelectorText {
    fn from(text: &str) -> SelectorText {
        SelectorText::new(text)
    }
}

/// Two selectors are the same setting when they are written the same way.
impl PartialEq for SelectorText {
    fn eq(&self, other: &SelectorText) -> bool {
        self.text == other.text
    }
}

impl<'de> Deserialize<'de> for SelectorText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SelectorText::new)
    }
}

impl Serialize for SelectorText {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

pub fn is_false(b: &bool) -> bool {
    !*b
}

pub fn is_zero(n: &i32) -> bool {
    *n == 0
}
