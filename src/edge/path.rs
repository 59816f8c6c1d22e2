//! Request path normalization (SPEC §8): the path routes match is the path the upstream
//! receives, so no spelling of a path can reach a route other than the one it names.
//!
//! The rules follow Envoy's `normalize_path` + `merge_slashes` and nginx's location
//! matching: unreserved escapes decoded, other escapes upper-cased, encoded slashes refused
//! (or decoded, or kept), runs of `/` merged, dot segments resolved however they are
//! spelled, `;` and `\` refused. The query string is never looked at.
//!
//! Almost every real path is already normal; one scan over its bytes proves it and costs no
//! allocation. Only a path that holds an escape, `;`, `\`, `//` or a segment starting with
//! `.` is rebuilt.

use serde::Deserialize;
use std::borrow::Cow;

/// What to do with `%2F` and `%5C` in a path (`http.path.encoded_slash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EncodedSlash {
    /// 400: an upstream that decodes them would see another path than the one matched.
    #[default]
    Reject,
    /// Turn them into `/` before slashes are merged and dot segments resolved.
    Decode,
    /// Leave them encoded. Unsafe when an upstream decodes them: documented as such.
    Keep,
}

/// What to do with `;` inside a path segment (`http.path.semicolons`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Semicolons {
    /// 400: Java servlet containers read `/a;x/..;/b` as path parameters and serve `/b`.
    #[default]
    Reject,
    /// An ordinary character.
    Keep,
}

/// The bootstrap's `http.path` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathPolicy {
    pub encoded_slash: EncodedSlash,
    pub merge_slashes: bool,
    pub semicolons: Semicolons,
}

impl Default for PathPolicy {
    fn default() -> Self {
        PathPolicy {
            encoded_slash: EncodedSlash::Reject,
            merge_slashes: true,
            semicolons: Semicolons::Reject,
        }
    }
}

/// Why a path was refused; each is answered 400 `bad_request` with this text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with `/`")]
    NotAbsolute,
    #[error("the path holds a `%` that is not followed by two hex digits")]
    BadEscape,
    #[error("the path holds an encoded `/` or `\\` (%2F, %5C)")]
    EncodedSlash,
    #[error("the path holds a `\\`")]
    Backslash,
    #[error("the path holds a `;`")]
    Semicolon,
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
}

impl PathPolicy {
    /// The normal form of `path`, borrowed when it already is one.
    pub fn normalize<'p>(&self, path: &'p str) -> Result<Cow<'p, str>, PathError> {
        let bytes = path.as_bytes();
        if bytes.first() != Some(&b'/') {
            return Err(PathError::NotAbsolute);
        }
        if self.is_normal(bytes) {
            return Ok(Cow::Borrowed(path));
        }
        self.rebuild(bytes).map(Cow::Owned)
    }

    /// One pass: true when nothing in the path could need a change or a refusal. A segment
    /// that merely starts with `.` (`/.well-known`) takes the slow path and comes out as it
    /// went in.
    fn is_normal(&self, bytes: &[u8]) -> bool {
        let mut prev = 0u8;
        for &b in bytes {
            match b {
                b'%' | b'\\' => return false,
                b';' if self.semicolons == Semicolons::Reject => return false,
                b'/' | b'.' if prev == b'/' => return false,
                _ => {}
            }
            prev = b;
        }
        true
    }

    fn rebuild(&self, bytes: &[u8]) -> Result<String, PathError> {
        // Step 1 and 2: escapes, `\` and `;`, into segments separated by real slashes.
        let mut decoded: Vec<u8> = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match b {
                b'%' => {
                    let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                        (Some(&hi), Some(&lo)) => (hex(hi), hex(lo)),
                        _ => (None, None),
                    };
                    let (Some(hi), Some(lo)) = (hi, lo) else {
                        return Err(PathError::BadEscape);
                    };
                    let value = hi << 4 | lo;
                    match value {
                        b'/' | b'\\' => match self.encoded_slash {
                            EncodedSlash::Reject => return Err(PathError::EncodedSlash),
                            EncodedSlash::Decode => decoded.push(b'/'),
                            EncodedSlash::Keep => push_escape(&mut decoded, value),
                        },
                        v if is_unreserved(v) => decoded.push(v),
                        v => push_escape(&mut decoded, v),
                    }
                    i += 3;
                    continue;
                }
                b'\\' => return Err(PathError::Backslash),
                b';' if self.semicolons == Semicolons::Reject => return Err(PathError::Semicolon),
                _ => decoded.push(b),
            }
            i += 1;
        }

        // Steps 3 and 4: merge slashes, resolve dot segments (RFC 3986 §5.2.4).
        let mut out: Vec<&[u8]> = Vec::new();
        let mut segments = decoded[1..].split(|&b| b == b'/').peekable();
        while let Some(seg) = segments.next() {
            let last = segments.peek().is_none();
            match seg {
                b"." | b".." => {
                    if seg == b".." && out.pop().is_none() {
                        return Err(PathError::AboveRoot);
                    }
                    // `/a/.` and `/a/b/..` name a directory: they keep their trailing slash.
                    if last {
                        out.push(b"");
                    }
                }
                b"" if self.merge_slashes && !last => {}
                _ => out.push(seg),
            }
        }
        let mut path = String::with_capacity(decoded.len());
        for seg in out {
            path.push('/');
            // Only ASCII went in: escapes of anything else were kept encoded.
            path.push_str(std::str::from_utf8(seg).map_err(|_| PathError::BadEscape)?);
        }
        if path.is_empty() {
            path.push('/');
        }
        Ok(path)
    }
}

/// RFC 3986 §2.3: the characters whose escapes mean nothing but the character itself.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn push_escape(out: &mut Vec<u8>, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[
        b'%',
        HEX[usize::from(value >> 4)],
        HEX[usize::from(value & 15)],
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        PathPolicy::default().normalize(path).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/",
            "/api/v1/users/42",
            "/a-b_c~d",
            "/v1..2/x",
            "/file.txt",
            "/a/",
        ] {
            let policy = PathPolicy::default();
            assert!(
                matches!(policy.normalize(path), Ok(Cow::Borrowed(p)) if p == path),
                "{path}"
            );
        }
    }

    #[test]
    fn every_known_bypass_lands_on_the_path_it_names_or_is_refused() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("//admin/x", Ok("/admin/x")),
            ("/%61dmin/x", Ok("/admin/x")),
            ("/admin%2Fx", Err(PathError::EncodedSlash)),
            ("/admin%2fx", Err(PathError::EncodedSlash)),
            ("/%2Fadmin/x", Err(PathError::EncodedSlash)),
            ("/admin%5Cx", Err(PathError::EncodedSlash)),
            ("/public/.%2e/admin/x", Ok("/admin/x")),
            ("/public/%2e./admin/x", Ok("/admin/x")),
            ("/public/%2E%2E/admin/x", Ok("/admin/x")),
            ("/public/../admin/x", Ok("/admin/x")),
            ("/public/./../admin/x", Ok("/admin/x")),
            ("/public/..%2fadmin/x", Err(PathError::EncodedSlash)),
            ("/public/..;/admin/x", Err(PathError::Semicolon)),
            ("/admin;x", Err(PathError::Semicolon)),
            ("/admin;/x", Err(PathError::Semicolon)),
            ("/admin\\x", Err(PathError::Backslash)),
            ("/..", Err(PathError::AboveRoot)),
            ("/a/../../admin", Err(PathError::AboveRoot)),
            ("/%2e%2e/admin", Err(PathError::AboveRoot)),
            ("/admin%", Err(PathError::BadEscape)),
            ("/admin%4", Err(PathError::BadEscape)),
            ("/admin%zz", Err(PathError::BadEscape)),
            ("admin", Err(PathError::NotAbsolute)),
            ("*", Err(PathError::NotAbsolute)),
        ];
        for (input, want) in cases {
            let got = norm(input);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{input}");
        }
    }

    #[test]
    fn escapes_are_decoded_or_upper_cased() {
        assert_eq!(norm("/a%7Eb%2dc%5f%2E").unwrap(), "/a~b-c_.");
        assert_eq!(norm("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/a%20b").unwrap(), "/a%20b");
        assert_eq!(norm("/a%3bb").unwrap(), "/a%3Bb");
        assert_eq!(norm("/%25").unwrap(), "/%25");
        // A decoded `%` is never decoded again.
        assert_eq!(norm("/%2561dmin").unwrap(), "/%2561dmin");
    }

    #[test]
    fn slashes_and_dots() {
        assert_eq!(norm("/a//b///c/").unwrap(), "/a/b/c/");
        assert_eq!(norm("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/..").unwrap(), "/");
        assert_eq!(norm("/.well-known/x").unwrap(), "/.well-known/x");
        assert_eq!(norm("/a/...").unwrap(), "/a/...");
        assert_eq!(norm("//").unwrap(), "/");
    }

    #[test]
    fn settings_change_the_rules() {
        let keep = PathPolicy {
            encoded_slash: EncodedSlash::Keep,
            merge_slashes: false,
            semicolons: Semicolons::Keep,
        };
        assert_eq!(keep.normalize("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(keep.normalize("/a//b").unwrap(), "/a//b");
        assert_eq!(keep.normalize("/a;x").unwrap(), "/a;x");
        assert_eq!(keep.normalize("/a/..;/b").unwrap(), "/a/..;/b");
        let decode = PathPolicy {
            encoded_slash: EncodedSlash::Decode,
            ..PathPolicy::default()
        };
        assert_eq!(
            decode.normalize("/public/..%2fadmin/x").unwrap(),
            "/admin/x"
        );
        assert_eq!(decode.normalize("/%2F%2Fadmin").unwrap(), "/admin");
        assert_eq!(decode.normalize("/a%5cb").unwrap(), "/a/b");
    }
}
