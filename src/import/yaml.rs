//! YAML read into a small tree that remembers the line of every value.
//!
//! The import's reports name the line of each predicate, filter or middleware it could not
//! translate, and its errors the line of what does not parse. `serde_yaml`, which reads the
//! resources themselves, keeps no position once a value is built, and marking lines by
//! scanning the text would break on flow style (`{ name: Path, args: … }`), multi-line
//! scalars and anchors. `yaml-rust2` is a maintained, pure-Rust YAML 1.2 parser whose event
//! stream carries a position with every event, so the tree is built here from those events
//! with an explicit stack: no recursion, a bound on nesting and on the nodes aliases may
//! expand to, so a hostile file costs bounded time and memory.

use std::collections::{HashMap, HashSet};
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// Nesting deeper than this is refused: no translated configuration comes close.
pub const MAX_DEPTH: usize = 64;
/// Values a file may hold, aliases expanded: a few "billion laughs" aliases cannot make a
/// small file cost gigabytes.
pub const MAX_NODES: usize = 1_000_000;

/// One value and the line (from 1) where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null` or nothing at all.
    Null,
    /// A scalar as written (numbers and booleans too: the reader decides what it needs).
    Text(String),
    List(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// Why a text is not YAML, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct YamlError {
    pub line: usize,
    pub message: String,
}

impl Node {
    /// The scalar's text; `None` for null, a list or a mapping.
    pub fn text(&self) -> Option<&str> {
        match &self.value {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    pub fn items(&self) -> Option<&[Node]> {
        match &self.value {
            Value::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn entries(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// What the value is, for messages: "a list", "a mapping", "text", "nothing".
    pub fn shape(&self) -> &'static str {
        match self.value {
            Value::Null => "nothing",
            Value::Text(_) => "text",
            Value::List(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// The value of `key` in a mapping, the key compared as Spring Boot and protobuf's JSON
    /// names do: case, `-` and `_` aside (`default-filters` is `defaultFilters`,
    /// `allow_origins` is `allowOrigins`).
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?
            .iter()
            .find(|(k, _)| k.text().is_some_and(|k| same_name(k, key)))
            .map(|(_, v)| v)
    }

    /// The value at a dotted path, whether the file nests the keys (`spring:` / `cloud:` …)
    /// or writes some of them as one dotted key (`spring.cloud.gateway:`), as Spring Boot
    /// reads either.
    pub fn find(&self, path: &[&str]) -> Option<&Node> {
        if path.is_empty() {
            return Some(self);
        }
        for (key, value) in self.entries()? {
            let Some(key) = key.text() else { continue };
            let parts: Vec<&str> = key.split('.').collect();
            if parts.len() <= path.len() && parts.iter().zip(path).all(|(a, b)| same_name(a, b)) {
                if let Some(found) = value.find(&path[parts.len()..]) {
                    return Some(found);
                }
            }
        }
        None
    }
}

/// Names equal once case, `-` and `_` are set aside.
pub fn same_name(a: &str, b: &str) -> bool {
    let mut a = a.chars().filter(|c| *c != '-' && *c != '_');
    let mut b = b.chars().filter(|c| *c != '-' && *c != '_');
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x.eq_ignore_ascii_case(&y) => {}
            _ => return false,
        }
    }
}

/// A container being filled.
enum Open {
    List {
        line: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        seen: HashSet<String>,
        /// The key being read is a plain `<<`: its value is merged in, not kept as an entry.
        merge_key: bool,
        /// The mappings `<<` names, in order (an earlier one wins over a later one).
        merges: Vec<Node>,
        merged: bool,
    },
}

/// Builds the documents of a YAML stream from the parser's events.
#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    docs: Vec<Node>,
    anchors: HashMap<usize, (Node, usize)>,
    nodes: usize,
}

impl Builder {
    fn count(&mut self, n: usize, line: usize) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(YamlError {
                line,
                message: format!("holds more than {MAX_NODES} values (aliases expanded)"),
            });
        }
        Ok(())
    }

    fn open(&mut self, container: Open, line: usize) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError {
                line,
                message: format!("nests deeper than {MAX_DEPTH} levels"),
            });
        }
        self.count(1, line)?;
        self.stack.push(container);
        Ok(())
    }

    /// Puts a finished value where it belongs: in the open container, or as a document.
    fn place(&mut self, node: Node, anchor: usize, size: usize) -> Result<(), YamlError> {
        if anchor > 0 {
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Open::List { items, .. }) => items.push(node),
            Some(Open::Map {
                entries,
                key,
                seen,
                merge_key,
                merges,
                merged,
                ..
            }) => match key.take() {
                None => *key = Some(node),
                Some(k) if *merge_key => {
                    *merge_key = false;
                    if std::mem::replace(merged, true) {
                        return Err(YamlError {
                            line: k.line,
                            message: "the merge key `<<` appears twice in one mapping".into(),
                        });
                    }
                    let sources = match node.value {
                        Value::Map(_) => vec![node],
                        Value::List(items) if items.iter().all(|i| i.entries().is_some()) => items,
                        _ => {
                            return Err(YamlError {
                                line: node.line,
                                message:
                                    "a merge key `<<` must name a mapping or a list of mappings"
                                        .into(),
                            })
                        }
                    };
                    merges.extend(sources);
                }
                Some(k) => {
                    if let Some(name) = k.text() {
                        if !seen.insert(name.to_string()) {
                            return Err(YamlError {
                                line: k.line,
                                message: format!("the key `{name}` appears twice in one mapping"),
                            });
                        }
                    }
                    entries.push((k, node));
                }
            },
        }
        Ok(())
    }

    fn close(&mut self) -> Result<(), YamlError> {
        let (node, anchor) = match self.stack.pop() {
            Some(Open::List {
                line,
                anchor,
                items,
            }) => (
                Node {
                    line,
                    value: Value::List(items),
                },
                anchor,
            ),
            Some(Open::Map {
                line,
                anchor,
                mut entries,
                mut seen,
                merges,
                ..
            }) => {
                // YAML's merge keys: each key of the named mappings the mapping does not set
                // itself, an earlier mapping's before a later one's.
                for source in merges {
                    let Value::Map(more) = source.value else {
                        continue;
                    };
                    for (k, v) in more {
                        let fresh = match k.text() {
                            Some(name) => seen.insert(name.to_string()),
                            None => !entries.iter().any(|(e, _)| *e == k),
                        };
                        if fresh {
                            entries.push((k, v));
                        }
                    }
                }
                (
                    Node {
                        line,
                        value: Value::Map(entries),
                    },
                    anchor,
                )
            }
            None => return Ok(()),
        };
        let size = if anchor > 0 { size_of(&node) } else { 0 };
        self.place(node, anchor, size)
    }
}

/// How many values a node holds, itself included, without recursion.
fn size_of(node: &Node) -> usize {
    let mut count = 0usize;
    let mut todo = vec![node];
    while let Some(n) = todo.pop() {
        count += 1;
        match &n.value {
            Value::List(items) => todo.extend(items.iter()),
            Value::Map(entries) => {
                for (k, v) in entries {
                    todo.push(k);
                    todo.push(v);
                }
            }
            _ => {}
        }
    }
    count
}

/// Reads every document of a YAML stream. Empty documents are left out.
pub fn parse(text: &str) -> Result<Vec<Node>, YamlError> {
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder::default();
    loop {
        let (event, mark) = parser.next_token().map_err(|e| YamlError {
            line: e.marker().line(),
            message: e.info().to_string(),
        })?;
        let line = mark.line();
        match event {
            Event::StreamEnd => break,
            Event::Nothing | Event::StreamStart | Event::DocumentStart | Event::DocumentEnd => {}
            Event::Scalar(text, style, anchor, _tag) => {
                b.count(1, line)?;
                let null = style == TScalarStyle::Plain
                    && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL");
                let merge = style == TScalarStyle::Plain && text == "<<";
                if let Some(Open::Map {
                    key: None,
                    merge_key,
                    ..
                }) = b.stack.last_mut()
                {
                    *merge_key = merge;
                }
                let value = if null { Value::Null } else { Value::Text(text) };
                b.place(Node { line, value }, anchor, 1)?;
            }
            Event::Alias(id) => {
                let Some((node, size)) = b.anchors.get(&id).cloned() else {
                    return Err(YamlError {
                        line,
                        message: "an alias names no anchor".into(),
                    });
                };
                b.count(size, line)?;
                b.place(node, 0, size)?;
            }
            Event::SequenceStart(anchor, _) => b.open(
                Open::List {
                    line,
                    anchor,
                    items: Vec::new(),
                },
                line,
            )?,
            Event::MappingStart(anchor, _) => b.open(
                Open::Map {
                    line,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                    seen: HashSet::new(),
                    merge_key: false,
                    merges: Vec::new(),
                    merged: false,
                },
                line,
            )?,
            Event::SequenceEnd | Event::MappingEnd => b.close()?,
        }
    }
    Ok(b.docs.into_iter().filter(|d| !d.is_null()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_knows_its_line() {
        let docs = parse(
            "spring:\n  cloud:\n    gateway:\n      routes:\n        - id: a\n          predicates:\n            - Path=/x/**\n            - name: Header\n              args: { header: X, regexp: y }\n",
        )
        .unwrap();
        let routes = docs[0]
            .find(&["spring", "cloud", "gateway", "routes"])
            .unwrap();
        let route = &routes.items().unwrap()[0];
        assert_eq!(route.get("id").unwrap().line, 5);
        let predicates = route.get("predicates").unwrap().items().unwrap();
        assert_eq!(predicates[0].line, 7);
        assert_eq!(predicates[0].text(), Some("Path=/x/**"));
        assert_eq!(predicates[1].line, 8);
        assert_eq!(predicates[1].get("args").unwrap().line, 9);
    }

    #[test]
    fn dotted_and_relaxed_keys_are_found() {
        let docs = parse("spring.cloud.gateway:\n  default-filters: [A]\n").unwrap();
        let found = docs[0]
            .find(&["spring", "cloud", "gateway", "defaultFilters"])
            .unwrap();
        assert_eq!(found.items().unwrap()[0].text(), Some("A"));
    }

    #[test]
    fn documents_nulls_and_aliases() {
        let docs = parse("a: &x [1, 2]\nb: *x\nc: ~\n---\n---\nd: e\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].get("b").unwrap().items().unwrap().len(), 2);
        assert!(docs[0].get("c").unwrap().is_null());
        assert_eq!(docs[1].get("d").unwrap().text(), Some("e"));
    }

    #[test]
    fn merge_keys_merge_and_explicit_keys_win() {
        let docs = parse(
            "a: &a {x: 1, y: 2}\nb: &b {y: 3, z: 4}\nc:\n  x: 0\n  <<: [*a, *b]\nd: {<<: *b, '<<': q}\n",
        )
        .unwrap();
        let c = docs[0].get("c").unwrap();
        assert_eq!(c.get("x").unwrap().text(), Some("0"));
        assert_eq!(c.get("y").unwrap().text(), Some("2"));
        assert_eq!(c.get("z").unwrap().text(), Some("4"));
        assert!(c.get("<<").is_none());
        let d = docs[0].get("d").unwrap();
        assert_eq!(d.get("z").unwrap().text(), Some("4"));
        assert_eq!(d.get("<<").unwrap().text(), Some("q"));
        let e = parse("a: 1\nb:\n  <<: 1\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("merge"), "{e}");
    }

    #[test]
    fn bad_yaml_names_its_line() {
        let e = parse("a: b\nc: [d\n").unwrap_err();
        assert!(e.line >= 2, "{e}");
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("twice"), "{e}");
    }

    #[test]
    fn nesting_and_alias_bombs_are_bounded() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(parse(&deep).unwrap_err().message.contains("deeper"));
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        assert!(parse(&bomb).unwrap_err().message.contains("aliases"));
    }
}
