//! The cheap part of routing: leading comments (and the hints in them) and
//! the first keyword, without parsing.

use super::{Reason, Route, Target};

/// Skips white space and comments at the front; returns the rest and the
/// comments seen.
pub(crate) fn skip_leading_comments(sql: &str) -> (&str, Vec<&str>) {
    if sql.as_bytes().first().is_some_and(u8::is_ascii_alphabetic) {
        // Nearly every statement: a keyword first, nothing to skip.
        return (sql, Vec::new());
    }
    let mut rest = sql;
    let mut comments = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(body) = rest.strip_prefix("--") {
            let end = body.find('\n').unwrap_or(body.len());
            comments.push(&body[..end]);
            rest = &body[end..];
        } else if rest.starts_with("/*") {
            // PostgreSQL block comments nest.
            let bytes = rest.as_bytes();
            let (mut depth, mut i) = (0usize, 0usize);
            while i + 1 < bytes.len() {
                match (bytes[i], bytes[i + 1]) {
                    (b'/', b'*') => {
                        depth += 1;
                        i += 2;
                    }
                    (b'*', b'/') => {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => i += 1,
                }
            }
            if depth != 0 {
                // Unterminated: not ours to judge; the parser will refuse it.
                return (rest, comments);
            }
            comments.push(&rest[2..i - 2]);
            rest = &rest[i..];
        } else {
            return (rest, comments);
        }
    }
}

/// A `pgsplit:primary` or `pgsplit:replica` hint in a comment before the
/// first keyword. Hints elsewhere are ignored on purpose: text inside a
/// string literal must never steer a statement.
pub fn leading_hint(sql: &str) -> Option<Target> {
    let (_, comments) = skip_leading_comments(sql);
    comments.iter().rev().find_map(|c| {
        let c = c.trim();
        if c.contains("pgsplit:primary") {
            Some(Target::Primary)
        } else if c.contains("pgsplit:replica") {
            Some(Target::Replica)
        } else {
            None
        }
    })
}

/// A `pgsplit:tag=NAME` hint in a comment before the first keyword.
pub fn leading_tag(sql: &str) -> Option<String> {
    let (_, comments) = skip_leading_comments(sql);
    comments.iter().rev().find_map(|c| {
        let at = c.find("pgsplit:tag=")? + "pgsplit:tag=".len();
        let tag: String = c[at..]
            .chars()
            .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_' || *ch == '-')
            .collect();
        (!tag.is_empty()).then_some(tag)
    })
}

/// The first keyword, lowercased, and what follows it.
fn first_keyword(sql: &str) -> Option<(String, &str)> {
    let (rest, _) = skip_leading_comments(sql);
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic() && c != '_')
        .unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    Some((rest[..end].to_ascii_lowercase(), &rest[end..]))
}

/// Whether the string holds one statement (a `;` only at the end). A `;`
/// inside a literal makes this false, which only costs a parse.
fn single_statement(sql: &str) -> bool {
    !sql.trim_end().trim_end_matches(';').contains(';')
}

/// Routes obvious writes and transaction control without parsing.
pub fn fast_path(sql: &str) -> Option<Route> {
    let (keyword, rest) = first_keyword(sql)?;
    // A DO body holds semicolons of its own; it is a write whatever follows.
    // It may also do anything to the session: the session re-reads it.
    if keyword == "do" {
        return Some(Route::primary(Reason::Write).dirtying());
    }
    if !single_statement(sql) {
        return None;
    }
    let route = match keyword.as_str() {
        "insert" | "update" | "delete" | "merge" | "drop" | "alter" | "truncate" | "grant"
        | "revoke" | "comment" | "vacuum" | "analyze" | "analyse" | "reindex" | "cluster"
        | "checkpoint" | "refresh" | "security" | "import" | "reassign" => {
            Route::primary(Reason::Write)
        }
        "call" => Route::primary(Reason::Write).dirtying(),
        "create" => {
            let lower = rest.trim_start().to_ascii_lowercase();
            // Temporary objects live on one connection: let the parser see
            // them (wherever the word stands: CREATE OR REPLACE TEMP VIEW).
            if ["temp", "local", "global", "unlogged"]
                .iter()
                .any(|w| lower.starts_with(w))
                || lower.contains("temp")
            {
                return None;
            }
            Route::primary(Reason::Write)
        }
        "lock" => Route::primary(Reason::Lock),
        "listen" => Route::pinned(Reason::Session),
        "unlisten" | "notify" => Route::primary(Reason::Session),
        "commit" | "end" | "rollback" | "abort" | "savepoint" | "release" => {
            Route::primary(Reason::Transaction)
        }
        _ => return None,
    };
    Some(route)
}

/// Lock clauses sqlparser 0.64 cannot parse; a guard so that a future
/// parser accepting them under another AST still routes them to the primary.
pub fn has_unparsed_lock_clause(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    words
        .windows(3)
        .any(|w| w == ["for", "no", "key"] || w == ["for", "key", "share"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_only_before_the_first_keyword() {
        assert_eq!(
            leading_hint("/* pgsplit:replica */ SELECT 1"),
            Some(Target::Replica)
        );
        assert_eq!(
            leading_hint("-- pgsplit:primary\nSELECT 1"),
            Some(Target::Primary)
        );
        assert_eq!(
            leading_hint("/* app:x */ /* /* nested */ pgsplit:primary */ SELECT 1"),
            Some(Target::Primary)
        );
        assert_eq!(leading_hint("SELECT '/* pgsplit:replica */'"), None);
        assert_eq!(leading_hint("/* unterminated pgsplit:replica"), None);
        assert_eq!(
            leading_tag("/* pgsplit:tag=analytics */ SELECT 1").as_deref(),
            Some("analytics")
        );
        assert_eq!(leading_tag("SELECT '/* pgsplit:tag=analytics */'"), None);
    }

    #[test]
    fn first_keyword_skips_comments() {
        assert_eq!(
            first_keyword("  /* x */ -- y\n InSeRt INTO t").unwrap().0,
            "insert"
        );
        assert_eq!(first_keyword("(SELECT 1)"), None);
        assert!(fast_path("INSERT INTO t VALUES (1); SELECT 1").is_none());
        assert!(fast_path("insert into t values (1);").is_some());
    }
}
