//! Decoding of the messages a client (frontend) sends after startup.
//!
//! Only what routing and state tracking need is decoded; everything else is
//! forwarded as the raw [`Frame`](super::Frame).

use bytes::{BufMut, BytesMut};

use super::codec::{ProtocolError, take_cstr};

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

fn malformed(what: &'static str) -> ProtocolError {
    ProtocolError::Malformed { what }
}

/// The SQL text of a Query message.
///
/// # Errors
/// A body that is not one NUL-terminated UTF-8 string.
pub fn query_text(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut rest = body;
    let sql = take_cstr(&mut rest).ok_or_else(|| malformed("Query"))?;
    if !rest.is_empty() {
        return Err(malformed("Query"));
    }
    Ok(sql)
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
    pub name: &'a str,
    /// SQL text.
    pub sql: &'a str,
    /// The parameter type count and OIDs, as sent.
    pub types: &'a [u8],
}

/// Decodes a Parse message.
///
/// # Errors
/// A body without two NUL-terminated strings and a consistent type list.
pub fn parse(body: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    let mut rest = body;
    let name = take_cstr(&mut rest).ok_or_else(|| malformed("Parse"))?;
    let sql = take_cstr(&mut rest).ok_or_else(|| malformed("Parse"))?;
    if rest.len() < 2 {
        return Err(malformed("Parse"));
    }
    let count = i16::from_be_bytes([rest[0], rest[1]]);
    if count < 0 || rest.len() != 2 + 4 * count as usize {
        return Err(malformed("Parse"));
    }
    Ok(Parse {
        name,
        sql,
        types: rest,
    })
}

/// Bind's portal and statement names, and the bytes after them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Portal name.
    pub portal: &'a str,
    /// Statement name.
    pub statement: &'a str,
    /// Formats and parameter values, untouched.
    pub rest: &'a [u8],
}

/// Decodes the names of a Bind message.
///
/// # Errors
/// A body without portal and statement names.
pub fn bind(body: &[u8]) -> Result<Bind<'_>, ProtocolError> {
    let mut rest = body;
    let portal = take_cstr(&mut rest).ok_or_else(|| malformed("Bind"))?;
    let statement = take_cstr(&mut rest).ok_or_else(|| malformed("Bind"))?;
    Ok(Bind {
        portal,
        statement,
        rest,
    })
}

/// The statement name a Bind message binds.
///
/// # Errors
/// A body without portal and statement names.
pub fn bind_statement(body: &[u8]) -> Result<&str, ProtocolError> {
    bind(body).map(|b| b.statement)
}

/// Describe or Close: `'S'` (statement) or `'P'` (portal) and a name.
///
/// # Errors
/// A body that is not a kind byte and one NUL-terminated name.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<(u8, &'a str), ProtocolError> {
    let (&kind, mut rest) = body.split_first().ok_or_else(|| malformed(what))?;
    if kind != b'S' && kind != b'P' {
        return Err(malformed(what));
    }
    let name = take_cstr(&mut rest).ok_or_else(|| malformed(what))?;
    Ok((kind, name))
}

fn frame(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_i32(0);
    body(out);
    let len = (out.len() - at) as i32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// Writes Parse.
pub fn write_parse(out: &mut BytesMut, name: &str, sql: &str, types: &[u8]) {
    frame(out, PARSE_TAG, |b| {
        put_cstr(b, name);
        put_cstr(b, sql);
        b.put_slice(types);
    });
}

/// Writes Bind from a decoded one with another statement name.
pub fn write_bind(out: &mut BytesMut, bind: &Bind<'_>, statement: &str) {
    frame(out, BIND_TAG, |b| {
        put_cstr(b, bind.portal);
        put_cstr(b, statement);
        b.put_slice(bind.rest);
    });
}

/// Writes Describe or Close of a statement or portal.
pub fn write_target(out: &mut BytesMut, tag: u8, kind: u8, name: &str) {
    frame(out, tag, |b| {
        b.put_u8(kind);
        put_cstr(b, name);
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
        assert!(query_text(b"\xff\xfe\0").is_err());
        assert_eq!(password(b"md5abc\0").unwrap(), "md5abc");
    }

    #[test]
    fn parse_and_bind() {
        let p = parse(b"s1\0SELECT $1\0\0\0").unwrap();
        assert_eq!(
            p,
            Parse {
                name: "s1",
                sql: "SELECT $1",
                types: &[0, 0]
            }
        );
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
        assert!(bind_statement(b"portal").is_err());
        assert_eq!(target(b"Sname\0", "Describe").unwrap(), (b'S', "name"));
        assert!(target(b"Xname\0", "Describe").is_err());
    }
}
