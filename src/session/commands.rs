//! Recognises the few single statements whose effect on the session the
//! proxy keeps track of itself: session SET/RESET, DISCARD ALL,
//! DEALLOCATE, and BEGIN (for read-only transactions placed by their first
//! statement). A word-level reading, no parser: anything else returns
//! `None` and is left to the router's conservative verdict.

use crate::router::scan::skip_leading_comments;

/// A session command the proxy tracks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SET [SESSION] name {TO|=} ...`, `SET TIME ZONE ...`, `SET SCHEMA ...`,
    /// `SET NAMES ...`: recorded by (lowercased) parameter name.
    Set { name: String },
    /// `RESET name`.
    Reset { name: String },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`.
    DiscardAll,
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate { name: String },
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `BEGIN ...` or `START TRANSACTION ...` alone.
    Begin,
}

/// Reads a single-statement query string.
pub fn recognise(sql: &str) -> Option<Command> {
    let (rest, _) = skip_leading_comments(sql);
    // Cheap exit for the common case: only SET, RESET, DISCARD, DEALLOCATE.
    let head = rest
        .as_bytes()
        .get(..3)
        .map(|h| [h[0], h[1], h[2]].map(|c| c.to_ascii_lowercase()));
    if !matches!(
        head.as_ref(),
        Some(b"set" | b"res" | b"dis" | b"dea" | b"beg" | b"sta")
    ) {
        return None;
    }
    let rest = rest.trim_end().trim_end_matches(';').trim_end();
    if rest.contains(';') {
        return None;
    }
    let words = split_words(rest)?;
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let name_at = |i: usize| -> Option<String> { words.get(i).map(|w| identifier(w)) };
    let reset = |name: &str| Some(Command::Reset { name: name.into() });
    match lower.as_slice() {
        ["begin", ..] | ["start", "transaction", ..] => Some(Command::Begin),
        ["set", "time", "zone", "default" | "local"]
        | ["set", "session", "time", "zone", "default" | "local"] => reset("timezone"),
        ["set", "session", _, "to" | "=", "default"] => Some(Command::Reset { name: name_at(2)? }),
        ["set", _, "to" | "=", "default"] => Some(Command::Reset { name: name_at(1)? }),
        ["set", "local", ..] | ["set", "transaction", ..] | ["set", "role", ..] => None,
        ["set", "session", "authorization", ..] | ["set", "session", "characteristics", ..] => None,
        ["set", "time", "zone", _, ..] | ["set", "session", "time", "zone", _, ..] => {
            Some(Command::Set {
                name: "timezone".into(),
            })
        }
        ["set", "schema", _] => Some(Command::Set {
            name: "search_path".into(),
        }),
        ["set", "names", ..] => Some(Command::Set {
            name: "client_encoding".into(),
        }),
        ["set", "session", _, "to" | "=", _, ..] => Some(Command::Set { name: name_at(2)? }),
        ["set", _, "to" | "=", _, ..] => Some(Command::Set { name: name_at(1)? }),
        ["reset", "all"] => Some(Command::ResetAll),
        ["reset", "time", "zone"] => reset("timezone"),
        ["reset", _] => Some(Command::Reset { name: name_at(1)? }),
        ["discard", "all"] => Some(Command::DiscardAll),
        ["deallocate", "prepare", "all"] | ["deallocate", "all"] => Some(Command::DeallocateAll),
        ["deallocate", "prepare", _] => Some(Command::Deallocate { name: name_at(2)? }),
        ["deallocate", _] => Some(Command::Deallocate { name: name_at(1)? }),
        _ => None,
    }
}

/// Splits on white space and around `=`, keeping quoted words whole.
fn split_words(text: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '=' {
            chars.next();
            words.push("=".to_owned());
        } else if c == '"' || c == '\'' {
            let quote = c;
            let mut word = String::from(c);
            chars.next();
            loop {
                let c = chars.next()?;
                word.push(c);
                if c == quote {
                    if chars.peek() == Some(&quote) {
                        word.push(chars.next()?);
                    } else {
                        break;
                    }
                }
            }
            words.push(word);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '=' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            words.push(word);
        }
    }
    Some(words)
}

/// A parameter or statement name: quoted keeps its case, bare is lowered.
fn identifier(word: &str) -> String {
    match word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => word.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognised_commands() {
        let set = |n: &str| Some(Command::Set { name: n.into() });
        assert_eq!(
            recognise("SET search_path TO app, public"),
            set("search_path")
        );
        assert_eq!(
            recognise("set statement_timeout=1000;"),
            set("statement_timeout")
        );
        assert_eq!(recognise("SET SESSION DateStyle = 'ISO'"), set("datestyle"));
        assert_eq!(
            recognise("/* x */ SET myapp.user_id = '42'"),
            set("myapp.user_id")
        );
        assert_eq!(recognise("SET TIME ZONE 'UTC'"), set("timezone"));
        assert_eq!(recognise("SET SCHEMA 'app'"), set("search_path"));
        assert_eq!(recognise("SET NAMES 'UTF8'"), set("client_encoding"));
        assert_eq!(recognise("SET LOCAL search_path = x"), None);
        assert_eq!(recognise("SET ROLE admin"), None);
        assert_eq!(recognise("SET SESSION AUTHORIZATION bob"), None);
        assert_eq!(recognise("SET TRANSACTION READ ONLY"), None);
        assert_eq!(recognise("SET a = 1; SELECT 1"), None);
        assert_eq!(
            recognise("RESET search_path"),
            Some(Command::Reset {
                name: "search_path".into()
            })
        );
        assert_eq!(recognise("reset all"), Some(Command::ResetAll));
        assert_eq!(recognise("DISCARD ALL"), Some(Command::DiscardAll));
        assert_eq!(recognise("DEALLOCATE ALL"), Some(Command::DeallocateAll));
        assert_eq!(
            recognise("DEALLOCATE PREPARE \"S1\""),
            Some(Command::Deallocate { name: "S1".into() })
        );
        assert_eq!(
            recognise("deallocate s1"),
            Some(Command::Deallocate { name: "s1".into() })
        );
        assert_eq!(recognise("SELECT 'SET a = 1'"), None);
        let reset = |n: &str| Some(Command::Reset { name: n.into() });
        assert_eq!(recognise("SET TimeZone TO DEFAULT"), reset("timezone"));
        assert_eq!(recognise("set search_path = default"), reset("search_path"));
        assert_eq!(recognise("SET TIME ZONE LOCAL"), reset("timezone"));
        assert_eq!(recognise("BEGIN READ ONLY"), Some(Command::Begin));
        assert_eq!(
            recognise("start transaction read only"),
            Some(Command::Begin)
        );
        assert_eq!(recognise("BEGIN; SELECT 1"), None);
        assert_eq!(recognise("SET a = 'x;y'"), None);
    }
}
