//! A cheap refusal of YAML nested deeper than any resource needs, before the YAML parser
//! sees it: a few hundred kilobytes of `[[[[…` cost the parser seconds of CPU per reload.
//!
//! The scan is one pass over the bytes, linear in the text, and never allocates more than
//! the limit. It counts block nesting by indentation (each deeper indentation, and each
//! `- ` or `? ` that opens a node on the same line, is a level) and flow nesting by
//! brackets, skipping quoted text, comments and block scalars (`|`, `>`). It errs towards
//! counting a level too many on odd layouts (a plain scalar continued on a deeper line),
//! never towards missing a bracket, so a document it passes is at most `limit` deep.

/// How deep a document may nest: far beyond any resource, far below what hurts.
pub const MAX_DEPTH: usize = 64;

/// The first document (1-based, counted as the YAML stream counts them: each `---` starts
/// one) that nests deeper than `limit`; `None` when all are within it.
pub fn too_deep(text: &str, limit: usize) -> Option<usize> {
    let mut scan = Scan::new(limit);
    for line in text.as_bytes().split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if scan.line(line).is_err() {
            return Some(scan.doc.max(1));
        }
    }
    None
}

/// Deeper than the limit.
struct TooDeep;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    Single,
    Double,
}

struct Scan {
    limit: usize,
    /// The current document, 0 before any content or marker.
    doc: usize,
    /// A `...` ended the document: content after it starts the next one.
    ended: bool,
    /// Indentations of the open block nodes, outermost first.
    indents: Vec<usize>,
    /// Open `[` and `{`.
    flow: usize,
    /// The outermost open bracket is the node of the innermost block level (it starts where
    /// that level does: a document that is one flow collection, `- [a]`), not a level below.
    flow_is_level: bool,
    /// Inside a quoted scalar, which may run over lines.
    quote: Option<Quote>,
    /// Inside a block scalar whose lines are indented deeper than this.
    block_scalar: Option<usize>,
}

impl Scan {
    fn new(limit: usize) -> Scan {
        Scan {
            limit,
            doc: 0,
            ended: false,
            indents: Vec::new(),
            flow: 0,
            flow_is_level: false,
            quote: None,
            block_scalar: None,
        }
    }

    fn new_document(&mut self) {
        self.doc += 1;
        self.ended = false;
        self.indents.clear();
        self.flow = 0;
        self.flow_is_level = false;
        self.quote = None;
        self.block_scalar = None;
    }

    fn check(&self) -> Result<(), TooDeep> {
        let depth = self.indents.len() + self.flow - usize::from(self.flow_is_level);
        if depth > self.limit {
            Err(TooDeep)
        } else {
            Ok(())
        }
    }

    fn line(&mut self, line: &[u8]) -> Result<(), TooDeep> {
        let indent = line.iter().take_while(|&&b| b == b' ').count();
        let rest = &line[indent..];
        let blank = rest.iter().all(|b| b.is_ascii_whitespace());

        if let Some(parent) = self.block_scalar {
            if blank || indent > parent {
                return Ok(()); // the scalar's own text
            }
            self.block_scalar = None;
        }
        if self.quote.is_some() || self.flow > 0 {
            return self.scan(line, 0, false);
        }
        if indent == 0 && (marker(line, b"---") || marker(line, b"...")) {
            if line.starts_with(b"---") {
                // Every `---` starts a document, even right after another one (the stream
                // then holds an empty document, which still counts).
                self.new_document();
                // Content may follow on the marker's line (`--- {a: 1}`).
                return self.scan(line, 3, true);
            }
            self.ended = true;
            return Ok(());
        }
        if blank || rest.starts_with(b"#") || (indent == 0 && rest.starts_with(b"%")) {
            return Ok(());
        }
        if self.doc == 0 || self.ended {
            self.new_document();
        }
        while self.indents.last().is_some_and(|&top| top > indent) {
            self.indents.pop();
        }
        if self.indents.last() != Some(&indent) {
            self.indents.push(indent);
        }
        self.check()?;
        self.scan(line, indent, true)
    }

    /// Scans `line` from `at`. `value_start` says a node may begin there (block context).
    fn scan(&mut self, line: &[u8], mut at: usize, mut value_start: bool) -> Result<(), TooDeep> {
        // In flow context, a quote only opens where a scalar may begin.
        let mut token_start = true;
        while at < line.len() {
            let b = line[at];
            if let Some(quote) = self.quote {
                match (quote, b) {
                    (Quote::Double, b'\\') => at += 1,
                    (Quote::Double, b'"') => self.quote = None,
                    (Quote::Single, b'\'') if line.get(at + 1) == Some(&b'\'') => at += 1,
                    (Quote::Single, b'\'') => self.quote = None,
                    _ => {}
                }
                at += 1;
                token_start = false;
                continue;
            }
            let after_space = at == 0 || matches!(line[at - 1], b' ' | b'\t');
            if b == b'#' && after_space {
                return Ok(()); // a comment
            }
            if self.flow > 0 {
                match b {
                    b'[' | b'{' => {
                        self.flow += 1;
                        self.check()?;
                        token_start = true;
                    }
                    b']' | b'}' => {
                        self.flow -= 1;
                        token_start = false;
                        if self.flow == 0 {
                            value_start = false;
                            self.flow_is_level = false;
                        }
                    }
                    b',' | b':' => token_start = true,
                    b'"' if token_start => self.quote = Some(Quote::Double),
                    b'\'' if token_start => self.quote = Some(Quote::Single),
                    b' ' | b'\t' => {}
                    _ => token_start = false,
                }
                at += 1;
                continue;
            }
            // Block context.
            if value_start {
                match b {
                    b' ' | b'\t' => {}
                    b'-' | b'?' if matches!(line.get(at + 1), None | Some(b' ')) => {
                        // A sequence entry or complex key: its node starts where the next
                        // text does, one level deeper.
                        let spaces = line[at + 1..].iter().take_while(|&&b| b == b' ').count();
                        self.indents.push(at + 1 + spaces);
                        self.check()?;
                    }
                    b'[' | b'{' => {
                        self.flow = 1;
                        self.flow_is_level = self.indents.last() == Some(&at);
                        self.check()?;
                        value_start = false;
                        token_start = true;
                    }
                    b'"' => {
                        self.quote = Some(Quote::Double);
                        value_start = false;
                    }
                    b'\'' => {
                        self.quote = Some(Quote::Single);
                        value_start = false;
                    }
                    b'|' | b'>' => {
                        let parent = line.iter().take_while(|&&b| b == b' ').count();
                        self.block_scalar = Some(parent);
                        return Ok(());
                    }
                    b'&' | b'!' | b'*' => {
                        // An anchor, tag or alias: the node (if any) follows it.
                        while at < line.len() && line[at] != b' ' {
                            at += 1;
                        }
                        continue;
                    }
                    _ => value_start = false,
                }
                at += 1;
                continue;
            }
            // Inside a plain scalar or key: `: ` starts a value.
            if b == b':' && matches!(line.get(at + 1), None | Some(b' ' | b'\t')) {
                value_start = true;
            }
            at += 1;
        }
        Ok(())
    }
}

/// `---` or `...` alone or followed by a space.
fn marker(line: &[u8], m: &[u8]) -> bool {
    line.starts_with(m) && matches!(line.get(3), None | Some(b' ' | b'\t'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str, limit: usize) -> bool {
        too_deep(text, limit).is_none()
    }

    #[test]
    fn ordinary_resources_pass() {
        let route = "kind: Route\nid: r\nmatch:\n  paths: [\"/a/**\"]\n  headers: { X-A: \"a|b\" }\nrewrite: { strip_prefix: 1 }\ncanary:\n  - match: { headers: { X-C: \"true\" } }\n    upstream: u\nupstream: u\n";
        // The root, canary, canary[0], its match and match.headers: five collections.
        assert!(depth_ok(route, 5));
        assert!(!depth_ok(route, 4));
        let all = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/routes"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap());
        for text in all {
            assert!(depth_ok(&text, 16), "{text}");
        }
    }

    #[test]
    fn deep_flow_and_block_nesting_are_found_in_their_document() {
        let flow = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(too_deep(&flow, 64), Some(1));
        assert_eq!(too_deep(&format!("a: 1\n---\nb: {flow}\n"), 64), Some(2));
        let under = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(too_deep(&under, 64), None);
        let mut block = String::new();
        for i in 0..70 {
            block.push_str(&format!("{}k{i}:\n", "  ".repeat(i)));
        }
        assert_eq!(too_deep(&block, 64), Some(1));
        assert_eq!(too_deep(&"- ".repeat(70), 64), Some(1));
        assert_eq!(
            too_deep(&format!("---\n{}", "{a: ".repeat(70)), 64),
            Some(1)
        );
    }

    #[test]
    fn brackets_in_quotes_comments_and_block_scalars_do_not_count() {
        let brackets = "[".repeat(100);
        for text in [
            format!("a: \"{brackets}\"\n"),
            format!("a: '{brackets}'\n"),
            format!("a: 1 # {brackets}\n"),
            format!("a: |\n  {brackets}\n  more\nb: 2\n"),
            format!("a: [\"x{brackets}\", 'it''s {brackets}']\n"),
            format!("path: /a{brackets}\n"),
            format!("a: \"multi\n  line {brackets}\"\nb: 1\n"),
        ] {
            assert!(depth_ok(&text, 8), "{text}");
        }
    }

    #[test]
    fn documents_are_counted_as_the_stream_counts_them() {
        let deep = format!("x: {}{}", "[".repeat(70), "]".repeat(70));
        assert_eq!(too_deep(&format!("---\na: 1\n---\n{deep}\n"), 64), Some(2));
        assert_eq!(too_deep(&format!("# c\n---\n{deep}\n"), 64), Some(1));
        assert_eq!(too_deep(&format!("a: 1\n---\n---\n{deep}\n"), 64), Some(3));
    }

    #[test]
    fn hostile_input_is_refused_at_the_limit() {
        let text = format!("a: {}", "[".repeat(200_000));
        assert_eq!(too_deep(&text, 64), Some(1));
        let text = "{a: ".repeat(100_000);
        assert_eq!(too_deep(&text, 64), Some(1));
    }
}
