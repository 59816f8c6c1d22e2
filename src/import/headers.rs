//! A route's header edits, kept in the order the source applies them and written the way
//! gatehouse applies them (`remove`, then `set`): a header removed after it was set ends up
//! removed, one set after it was removed ends up set.

use crate::resource::{HeaderRules, Text};
use std::collections::BTreeMap;

/// One side's edits (request or response).
#[derive(Debug, Default)]
pub struct HeaderEdits {
    set: BTreeMap<String, Text>,
    remove: Vec<String>,
}

impl HeaderEdits {
    fn has_set(&self, name: &str) -> Option<String> {
        self.set
            .keys()
            .find(|k| k.eq_ignore_ascii_case(name))
            .cloned()
    }

    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        if self.has_set(name).is_some() {
            return Err(format!(
                "`{name}` is already set by an earlier filter; gatehouse sets one value per header"
            ));
        }
        self.set.insert(name.to_string(), Text(value.to_string()));
        Ok(())
    }

    /// Sets `name`, replacing what an earlier edit set (go's `Header.Set`).
    pub fn replace(&mut self, name: &str, value: &str) {
        if let Some(key) = self.has_set(name) {
            self.set.remove(&key);
        }
        self.set.insert(name.to_string(), Text(value.to_string()));
    }

    pub fn remove(&mut self, name: &str) {
        if let Some(key) = self.has_set(name) {
            self.set.remove(&key);
        }
        if !self.remove.iter().any(|r| r.eq_ignore_ascii_case(name)) {
            self.remove.push(name.to_string());
        }
    }

    pub fn finish(self) -> Option<HeaderRules> {
        (!self.set.is_empty() || !self.remove.is_empty()).then_some(HeaderRules {
            set: self.set,
            remove: self.remove,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_edits_win() {
        let mut e = HeaderEdits::default();
        e.set("X-A", "1").unwrap();
        e.remove("x-a");
        assert!(e.set("X-B", "1").is_ok());
        assert!(e.set("x-b", "2").is_err());
        e.remove("X-C");
        e.set("X-C", "3").unwrap();
        let rules = e.finish().unwrap();
        assert_eq!(rules.remove, ["x-a", "X-C"]);
        assert_eq!(rules.set.keys().collect::<Vec<_>>(), ["X-B", "X-C"]);
    }
}
