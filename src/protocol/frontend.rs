//! Decoding of the messages a client (frontend) sends after startup.
//!
//! Only what routing and state tracking need is decoded; everything else is
//! forwarded as the raw [`Frame`](super::Frame).

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
}

/// Decodes Parse's name and SQL text (parameter types are left in place).
///
/// # Errors
/// A body without two NUL-terminated strings.
pub fn parse(body: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    let mut rest = body;
    let name = take_cstr(&mut rest).ok_or_else(|| malformed("Parse"))?;
    let sql = take_cstr(&mut rest).ok_or_else(|| malformed("Parse"))?;
    if rest.len() < 2 {
        return Err(malformed("Parse"));
    }
    Ok(Parse { name, sql })
}

/// The statement name a Bind message binds.
///
/// # Errors
/// A body without portal and statement names.
pub fn bind_statement(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut rest = body;
    take_cstr(&mut rest).ok_or_else(|| malformed("Bind"))?;
    take_cstr(&mut rest).ok_or_else(|| malformed("Bind"))
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
                sql: "SELECT $1"
            }
        );
        assert!(parse(b"s1\0SELECT\0").is_err());
        assert_eq!(bind_statement(b"\0s1\0\0\0").unwrap(), "s1");
        assert!(bind_statement(b"portal").is_err());
    }
}
