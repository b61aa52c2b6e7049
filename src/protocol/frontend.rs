//! Decoding of the messages a client (frontend) sends after startup.
//!
//! Only what routing and state tracking need is decoded; everything else is
//! forwarded as the raw [`Frame`](super::Frame).

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use super::codec::{ProtocolError, take_cstr};

/// The next NUL-terminated field as bytes: clients send text in their
/// `client_encoding`, which need not be UTF-8.
fn take_field<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = memchr::memchr(0, body)?;
    let field = &body[..end];
    *body = &body[end + 1..];
    Some(field)
}

/// The next NUL-terminated name: names are short, and a plain scan beats
/// memchr's set-up for them.
fn take_name<'a>(body: &mut &'a [u8]) -> Option<&'a [u8]> {
    let end = body.iter().position(|&b| b == 0)?;
    let field = &body[..end];
    *body = &body[end + 1..];
    Some(field)
}

/// SQL text for routing: the client's bytes as UTF-8 where they are, with
/// replacement characters elsewhere (a byte that is not UTF-8 sits inside a
/// literal or an identifier in every client encoding PostgreSQL accepts
/// that is a superset of ASCII). Text that is not UTF-8 and holds a
/// backslash could be cut differently by an encoding whose second bytes
/// include it (SJIS, BIG5, GBK): the caller treats it as unreadable.
pub fn sql_text(sql: &[u8]) -> Cow<'_, str> {
    if sql.is_ascii() {
        // SAFETY: ASCII bytes are UTF-8. (The common case, checked a word
        // at a time: about a third of what from_utf8 spends on it.)
        return Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(sql) });
    }
    non_ascii_text(sql)
}

/// [`sql_text`] of bytes that are not all ASCII (kept out of line, so the
/// parsers that call `sql_text` stay small enough to inline).
#[cold]
#[inline(never)]
fn non_ascii_text(sql: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(sql) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(sql),
    }
}

/// A name (statement, portal) as text, lossless for UTF-8 names.
fn name(bytes: &[u8]) -> Cow<'_, str> {
    sql_text(bytes)
}

/// Query ('Q').
pub const QUERY_TAG: u8 = b'Q';
/// Parse ('P').
pub const PARSE_TAG: u8 = b'P';
/// Bind ('B').
pub const BIND_TAG: u8 = b'B';
/// Describe ('D').
pub const DESCRIBE_TAG: u8 = b'D';
/// Execute ('E').
pub const EXECUTE_TAG: u8 = b'E';
/// Close ('C').
pub const CLOSE_TAG: u8 = b'C';
/// Sync ('S').
pub const SYNC_TAG: u8 = b'S';
/// Flush ('H').
pub const FLUSH_TAG: u8 = b'H';
/// Terminate ('X').
pub const TERMINATE_TAG: u8 = b'X';
/// PasswordMessage, SASLInitialResponse and SASLResponse ('p').
pub const PASSWORD_TAG: u8 = b'p';
/// CopyData ('d').
pub const COPY_DATA_TAG: u8 = b'd';
/// CopyDone ('c').
pub const COPY_DONE_TAG: u8 = b'c';
/// CopyFail ('f').
pub const COPY_FAIL_TAG: u8 = b'f';
/// FunctionCall ('F').
pub const FUNCTION_CALL_TAG: u8 = b'F';
/// Describe and Close of a prepared statement ('S').
pub const STATEMENT: u8 = b'S';
/// Describe and Close of a portal ('P').
pub const PORTAL: u8 = b'P';

fn malformed(what: &'static str) -> ProtocolError {
    ProtocolError::Malformed { what }
}

/// The SQL of a Query message, as the client's bytes.
///
/// # Errors
/// A body that is not one NUL-terminated string.
pub fn query_sql(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut rest = body;
    let sql = take_field(&mut rest).ok_or_else(|| malformed("Query"))?;
    if !rest.is_empty() {
        return Err(malformed("Query"));
    }
    Ok(sql)
}

/// The SQL text of a Query message (see [`sql_text`]).
///
/// # Errors
/// A body that is not one NUL-terminated string.
pub fn query_text(body: &[u8]) -> Result<Cow<'_, str>, ProtocolError> {
    query_sql(body).map(sql_text)
}

/// The password of a cleartext or MD5 PasswordMessage.
///
/// # Errors
/// A body that is not one NUL-terminated string.
pub fn password(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut rest = body;
    take_cstr(&mut rest).ok_or_else(|| malformed("PasswordMessage"))
}

/// A decoded Parse message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name; empty for the unnamed statement.
    pub name: Cow<'a, str>,
    /// SQL, as the client's bytes.
    pub sql: &'a [u8],
    /// The parameter type count and OIDs, as sent.
    pub types: &'a [u8],
}

/// Decodes a Parse message.
///
/// # Errors
/// A body without two NUL-terminated strings and a consistent type list.
pub fn parse(body: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    let mut rest = body;
    let name = take_name(&mut rest).ok_or_else(|| malformed("Parse"))?;
    let sql = take_field(&mut rest).ok_or_else(|| malformed("Parse"))?;
    if rest.len() < 2 {
        return Err(malformed("Parse"));
    }
    // An unsigned count, as PostgreSQL reads it (up to 65535).
    let count = u16::from_be_bytes([rest[0], rest[1]]);
    if rest.len() != 2 + 4 * usize::from(count) {
        return Err(malformed("Parse"));
    }
    Ok(Parse {
        name: self::name(name),
        sql,
        types: rest,
    })
}

/// Bind's portal and statement names, and the bytes after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Portal name, as sent.
    pub portal: &'a [u8],
    /// Statement name.
    pub statement: Cow<'a, str>,
    /// Formats and parameter values, untouched.
    pub rest: &'a [u8],
}

/// Decodes the names of a Bind message.
///
/// # Errors
/// A body without portal and statement names.
pub fn bind(body: &[u8]) -> Result<Bind<'_>, ProtocolError> {
    let mut rest = body;
    let portal = take_name(&mut rest).ok_or_else(|| malformed("Bind"))?;
    let statement = take_name(&mut rest).ok_or_else(|| malformed("Bind"))?;
    Ok(Bind {
        portal,
        statement: name(statement),
        rest,
    })
}

/// The statement name a Bind message binds.
///
/// # Errors
/// A body without portal and statement names.
pub fn bind_statement(body: &[u8]) -> Result<Cow<'_, str>, ProtocolError> {
    bind(body).map(|b| b.statement)
}

/// Describe or Close: `'S'` (statement) or `'P'` (portal) and a name.
///
/// # Errors
/// A body that is not a kind byte and one NUL-terminated name.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, Cow<'a, str>), ProtocolError> {
    let (&kind, mut rest) = body.split_first().ok_or_else(|| malformed(what))?;
    if kind != STATEMENT && kind != PORTAL {
        return Err(malformed(what));
    }
    let name = take_name(&mut rest).ok_or_else(|| malformed(what))?;
    Ok((kind, self::name(name)))
}

fn frame(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Writes Parse.
pub fn write_parse(out: &mut BytesMut, name: &str, sql: &[u8], types: &[u8]) {
    frame(out, PARSE_TAG, |b| {
        put_cstr(b, name.as_bytes());
        put_cstr(b, sql);
        b.put_slice(types);
    });
}

/// Writes Bind from a decoded one with another statement name.
pub fn write_bind(out: &mut BytesMut, bind: &Bind<'_>, statement: &str) {
    frame(out, BIND_TAG, |b| {
        put_cstr(b, bind.portal);
        put_cstr(b, statement.as_bytes());
        b.put_slice(bind.rest);
    });
}

/// Writes Describe or Close of a statement or portal.
pub fn write_target(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    frame(out, tag, |b| {
        b.put_u8(kind);
        put_cstr(b, name.as_bytes());
    });
}

/// Writes Sync.
pub fn write_sync(out: &mut BytesMut) {
    frame(out, SYNC_TAG, |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_password() {
        assert_eq!(query_text(b"SELECT 1\0").unwrap(), "SELECT 1");
        assert_eq!(query_text(b"\0").unwrap(), "");
        assert!(query_text(b"SELECT 1").is_err());
        assert!(query_text(b"a\0b\0").is_err());
        assert_eq!(query_sql(b"caf\xe9\0").unwrap(), b"caf\xe9");
        assert_eq!(query_text(b"caf\xe9\0").unwrap(), "caf\u{fffd}");
        assert_eq!(password(b"md5abc\0").unwrap(), "md5abc");
    }

    #[test]
    fn parse_and_bind() {
        let p = parse(b"s1\0SELECT $1\0\0\0").unwrap();
        assert_eq!(
            p,
            Parse {
                name: "s1".into(),
                sql: b"SELECT $1",
                types: &[0, 0]
            }
        );
        // 40,000 parameters: the count is unsigned.
        let mut many = b"\0SELECT 1\0".to_vec();
        many.extend_from_slice(&40_000u16.to_be_bytes());
        many.extend(std::iter::repeat_n(0u8, 4 * 40_000));
        assert_eq!(parse(&many).unwrap().types.len(), 2 + 4 * 40_000);
        assert!(parse(b"s1\0SELECT\0").is_err());
        assert!(parse(b"s1\0SELECT\0\0\x01").is_err());
        let p = parse(b"\0SELECT $1\0\0\x01\0\0\0\x17").unwrap();
        assert_eq!(p.types, &[0, 1, 0, 0, 0, 23]);
        let mut out = BytesMut::new();
        write_parse(&mut out, "x", p.sql, p.types);
        assert_eq!(&out[5..], b"x\0SELECT $1\0\0\x01\0\0\0\x17");
        let b = bind(b"p\0s1\0\0\0\0\0\0\0").unwrap();
        let mut out = BytesMut::new();
        write_bind(&mut out, &b, "srv");
        assert_eq!(&out[5..], b"p\0srv\0\0\0\0\0\0\0");
        assert_eq!(bind_statement(b"\0s1\0\0\0").unwrap(), "s1");
        assert_eq!(b.portal, b"p");
        assert!(bind_statement(b"portal").is_err());
        assert_eq!(
            target(b"Sname\0", "Describe").unwrap(),
            (STATEMENT, "name".into())
        );
        assert!(target(b"Xname\0", "Describe").is_err());
    }
}
