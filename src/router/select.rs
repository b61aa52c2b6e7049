//! A token scan that routes plain SELECTs without parsing them.
//!
//! A SELECT needs the primary only through a lock clause (`FOR ...`),
//! `INTO`, a data-modifying CTE, or a function that writes, locks or reads
//! session state. The scan answers "a read" only when none of these can be
//! present: the text starts with SELECT, holds no `FOR`, `INTO`, `WITH`,
//! INSERT/UPDATE/DELETE/MERGE word, no backslash, no comment or dollar
//! quote after its start, balanced parentheses, one statement, every
//! `name(` is an unqualified function [`functions::effect`] calls safe,
//! and no word names a relation the catalog keeps on the primary.
//! Anything else is left to the parser (`None`), so the scan can only be
//! more cautious than the parser, never less.

use super::functions::{self, Effect};
use super::{Knowledge, Reason, Route, fold, scan};

/// Words that send the statement to the parser.
const STOP_WORDS: &[&str] = &[
    "for", "into", "with", "insert", "update", "delete", "merge", "lock",
];

/// Routes a plain SELECT as a read, or `None` when the parser must decide.
pub fn plain_select(sql: &str, known: &Knowledge) -> Option<Route> {
    let (body, _) = scan::skip_leading_comments(sql);
    let bytes = body.as_bytes();
    // Backslash escapes (E'...') change where strings end.
    if memchr::memchr(b'\\', bytes).is_some() {
        return None;
    }
    if !bytes
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"select"))
        || bytes.get(6).is_some_and(|b| is_word_byte(*b))
    {
        return None;
    }
    let mut depth = 0usize;
    let mut i = 0;
    // The last word, while only whitespace follows it (`"` for a quoted or
    // qualified name).
    let mut last_word: Option<&str> = None;
    let relations = known.facts.has_primary_relations();
    // The word after a `.` (a qualified name).
    let mut qualified = false;
    let mut from = FromItems::default();
    while i < bytes.len() {
        let b = bytes[i];
        let after_dot = std::mem::take(&mut qualified);
        if !b.is_ascii_whitespace() {
            from.resolve(body, b, known)?;
        }
        match b {
            b'\'' => {
                i = after_quote(bytes, i, b'\'')?;
                last_word = None;
            }
            // A quoted name followed by `(` is a function the scan does not
            // judge; elsewhere it is a name like any other.
            b'"' => {
                // A quoted relation name: the parser looks it up.
                if from.expect {
                    return None;
                }
                i = after_quote(bytes, i, b'"')?;
                last_word = Some("\"");
            }
            b'(' => {
                if let Some(name) = last_word
                    && !safe_function(name, known)
                {
                    return None;
                }
                depth += 1;
                i += 1;
                last_word = None;
                from.expect = false;
            }
            b')' => {
                depth = depth.checked_sub(1)?;
                from.close(depth);
                i += 1;
                last_word = None;
            }
            b',' => {
                from.comma(depth);
                i += 1;
                last_word = None;
            }
            b'$' => {
                // `$1` is a parameter; anything else opens a dollar quote.
                if !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                i += 1;
                while bytes.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                last_word = None;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => return None,
            b'/' if bytes.get(i + 1) == Some(&b'*') => return None,
            b';' => {
                // Only trailing: one statement.
                if !body[i + 1..].trim().is_empty() {
                    return None;
                }
                i += 1;
            }
            b if b.is_ascii_whitespace() => i += 1,
            // `schema.function(`: the parser looks qualified names up.
            b'.' => {
                i += 1;
                qualified = true;
            }
            b if is_word_start(b) => {
                let start = i;
                while bytes.get(i).is_some_and(|b| is_word_byte(*b)) {
                    i += 1;
                }
                let word = &body[start..i];
                if STOP_WORDS.iter().any(|s| word.eq_ignore_ascii_case(s))
                    || functions::is_node_view(word)
                    || (relations && primary_relation(word, known))
                {
                    return None;
                }
                from.word(word, start, i, depth)?;
                last_word = Some(if after_dot { "\"" } else { word });
            }
            _ => {
                i += 1;
                last_word = None;
                from.expect = false;
            }
        }
    }
    from.resolve(body, b' ', known)?;
    // A FROM with no item after it: the parser's to judge.
    (depth == 0 && !from.expect).then_some(Route::replica(Reason::Read))
}

/// Words that end a FROM list at its own depth.
const AFTER_FROM: &[&str] = &[
    "where",
    "group",
    "order",
    "limit",
    "offset",
    "having",
    "window",
    "union",
    "intersect",
    "except",
    "fetch",
];

/// The FROM items of a plain SELECT: each must be a bare name of a
/// relation the catalog knows (or a function call, judged as one);
/// anything else (a qualified or quoted name, an unknown relation) is the
/// parser's to judge.
#[derive(Default)]
struct FromItems {
    /// Depths of the FROM lists open around the scan.
    depths: [usize; 8],
    open: usize,
    /// The next word is a FROM item.
    expect: bool,
    /// The last FROM item's name, until the next token tells whether it
    /// is a relation or a function.
    candidate: Option<(usize, usize)>,
}

impl FromItems {
    fn word(&mut self, word: &str, start: usize, end: usize, depth: usize) -> Option<()> {
        if word.eq_ignore_ascii_case("from") || word.eq_ignore_ascii_case("join") {
            // `FROM FROM`: a name the parser may read as a relation.
            if self.expect {
                return None;
            }
            if word.eq_ignore_ascii_case("from") {
                *self.depths.get_mut(self.open)? = depth;
                self.open += 1;
            }
            self.expect = true;
        } else if self.expect {
            if !(word.eq_ignore_ascii_case("lateral") || word.eq_ignore_ascii_case("only")) {
                self.candidate = Some((start, end));
                self.expect = false;
            }
        } else if self.open > 0
            && self.depths[self.open - 1] == depth
            && AFTER_FROM.iter().any(|w| word.eq_ignore_ascii_case(w))
        {
            self.open -= 1;
        }
        Some(())
    }

    fn comma(&mut self, depth: usize) {
        if self.open > 0 && self.depths[self.open - 1] == depth {
            self.expect = true;
        }
    }

    fn close(&mut self, depth: usize) {
        while self.open > 0 && self.depths[self.open - 1] > depth {
            self.open -= 1;
        }
        self.expect = false;
    }

    /// Judges the pending FROM item by the token that follows it: `(`
    /// makes it a function, `.` a qualified name (the parser's), anything
    /// else a relation that must be known.
    fn resolve(&mut self, body: &str, next: u8, known: &Knowledge) -> Option<()> {
        let Some((start, end)) = self.candidate.take() else {
            return Some(());
        };
        match next {
            b'(' => Some(()),
            b'.' => None,
            _ => {
                let mut buf = [0; 64];
                let name = fold(&body[start..end], &mut buf)?;
                known.facts.relation_known(None, name).then_some(())
            }
        }
    }
}

/// A function a replica may run: not `set_config` (the parser judges its
/// arguments), not a quoted or qualified name, and of no effect.
fn safe_function(name: &str, known: &Knowledge) -> bool {
    let mut buf = [0; 64];
    name != "\""
        && !name.eq_ignore_ascii_case("set_config")
        && fold(name, &mut buf).is_some_and(|n| functions::effect(None, n, known) == Effect::None)
}

/// Whether a word may name a relation the catalog keeps on the primary.
fn primary_relation(word: &str, known: &Knowledge) -> bool {
    let mut buf = [0; 64];
    fold(word, &mut buf).is_none_or(|n| known.facts.primary_relation(None, n).is_some())
}

/// The index after the quote that closes the one at `start` (doubled
/// quotes are escapes); `None` when unterminated.
fn after_quote(bytes: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match bytes.get(i)? {
            q if *q == quote && bytes.get(i + 1) == Some(&quote) => i += 2,
            q if *q == quote => return Some(i + 1),
            _ => i += 1,
        }
    }
}

fn is_word_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(sql: &str) -> Option<Route> {
        plain_select(sql, &known())
    }

    fn known() -> Knowledge {
        Knowledge::new(
            &["audit_log".to_owned()],
            std::sync::Arc::new(crate::router::facts::tests::sample()),
        )
    }

    /// Pieces of SQL, harmless and harmful, for random statements.
    const PIECES: &[&str] = &[
        "SELECT",
        "a",
        "t.b",
        ",",
        "FROM",
        "t",
        "WHERE",
        "=",
        "1",
        "$1",
        "'x'",
        "'it''s'",
        "\"Q\"",
        "(",
        ")",
        "nextval",
        "now",
        "count",
        "pg_advisory_lock",
        "set_config",
        "audit_log",
        "FOR",
        "UPDATE",
        "INTO",
        "WITH",
        "AS",
        "DELETE",
        ";",
        "--",
        "/*",
        "*/",
        "$$",
        "E'\\''",
        ".",
        "UNION",
        "IN",
        "generate_series",
        "abs",
    ];

    proptest::proptest! {
        #[test]
        fn the_scan_never_calls_read_what_the_parser_sends_elsewhere(
            picks in proptest::collection::vec(0..PIECES.len(), 1..24)
        ) {
            let sql = std::iter::once("SELECT")
                .chain(picks.iter().map(|&i| PIECES[i]))
                .collect::<Vec<_>>()
                .join(" ");
            let known = known();
            if let Some(fast) = plain_select(&sql, &known) {
                let parsed = super::super::classify::parsed(&sql, &known);
                // The parser may refuse text PostgreSQL would too; what it
                // understands, it must route as the scan did.
                proptest::prop_assert!(
                    parsed == fast || parsed.reason == Reason::ParseError,
                    "{sql:?}: scan {fast:?}, parser {parsed:?}"
                );
            }
        }
    }

    #[test]
    fn plain_reads_are_routed_without_the_parser() {
        for sql in [
            "SELECT 1",
            "select abalance from pgbench_accounts where aid = 52341;",
            "SELECT o.id, now() - interval '7 days' FROM orders o WHERE o.status = $1",
            "SELECT count(*) FROM t WHERE a IN (SELECT b FROM u WHERE c > 3)",
            "SELECT \"Weird\".x, 'it''s' FROM t AS \"Weird\"",
            "  /* pgsplit:replica */ SELECT now()",
            "SELECT * FROM generate_series(1, 10) g",
        ] {
            assert_eq!(scan(sql), Some(Route::replica(Reason::Read)), "{sql}");
        }
    }

    #[test]
    fn anything_that_may_need_the_primary_goes_to_the_parser() {
        for sql in [
            "SELECT nextval('s')",
            "SELECT pg_catalog.nextval('s')",
            "SELECT NEXTVAL ('s')",
            "SELECT audit_log(1)",
            "SELECT pg_advisory_lock(1)",
            "SELECT set_config('a', 'b', false)",
            "SELECT \"nextval\"('s')",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM t FOR SHARE",
            "SELECT * INTO new_table FROM t",
            "SELECT * FROM (WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x) y",
            "SELECT 1; DELETE FROM t",
            "SELECT $$nextval('s')$$",
            "SELECT E'\\x41'",
            "SELECT 1 -- nextval('s')",
            "SELECT 1 /* */",
            "SELECT (1",
            "SELECT 1)",
            "SELECT 'unterminated",
            "SELECTx FROM t",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "INSERT INTO t SELECT 1",
        ] {
            assert_eq!(scan(sql), None, "{sql}");
        }
    }
}
