//! Messages a server (backend) sends: writers for the ones pgsplit speaks
//! itself to clients, and readers for the few it acts on when relaying.

use bytes::{BufMut, BytesMut};

use super::codec::{ProtocolError, take_cstr};

/// Authentication request ('R').
pub const AUTHENTICATION_TAG: u8 = b'R';
/// ParameterStatus ('S').
pub const PARAMETER_STATUS_TAG: u8 = b'S';
/// BackendKeyData ('K').
pub const BACKEND_KEY_DATA_TAG: u8 = b'K';
/// ReadyForQuery ('Z').
pub const READY_FOR_QUERY_TAG: u8 = b'Z';
/// ErrorResponse ('E').
pub const ERROR_RESPONSE_TAG: u8 = b'E';
/// NoticeResponse ('N').
pub const NOTICE_RESPONSE_TAG: u8 = b'N';
/// CopyInResponse ('G').
pub const COPY_IN_RESPONSE_TAG: u8 = b'G';
/// CopyOutResponse ('H').
pub const COPY_OUT_RESPONSE_TAG: u8 = b'H';
/// CopyBothResponse ('W').
pub const COPY_BOTH_RESPONSE_TAG: u8 = b'W';
/// NegotiateProtocolVersion ('v').
pub const NEGOTIATE_PROTOCOL_VERSION_TAG: u8 = b'v';
/// DataRow ('D').
pub const DATA_ROW_TAG: u8 = b'D';
/// CopyData ('d'), in COPY TO STDOUT.
pub const COPY_DATA_TAG: u8 = b'd';
/// NotificationResponse ('A').
pub const NOTIFICATION_TAG: u8 = b'A';
/// ParseComplete ('1').
pub const PARSE_COMPLETE_TAG: u8 = b'1';
/// BindComplete ('2').
pub const BIND_COMPLETE_TAG: u8 = b'2';
/// CloseComplete ('3').
pub const CLOSE_COMPLETE_TAG: u8 = b'3';
/// NoData ('n').
pub const NO_DATA_TAG: u8 = b'n';
/// EmptyQueryResponse ('I').
pub const EMPTY_QUERY_TAG: u8 = b'I';
/// PortalSuspended ('s').
pub const PORTAL_SUSPENDED_TAG: u8 = b's';
/// RowDescription ('T').
pub const ROW_DESCRIPTION_TAG: u8 = b'T';
/// ParameterDescription ('t').
pub const PARAMETER_DESCRIPTION_TAG: u8 = b't';
/// CommandComplete ('C').
pub const COMMAND_COMPLETE_TAG: u8 = b'C';

/// Transaction status carried by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    /// 'I': not in a transaction.
    Idle,
    /// 'T': inside a transaction block.
    InTransaction,
    /// 'E': inside a failed transaction block.
    Failed,
}

impl TxnStatus {
    /// The status byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            TxnStatus::Idle => b'I',
            TxnStatus::InTransaction => b'T',
            TxnStatus::Failed => b'E',
        }
    }

    /// Reads a ReadyForQuery body.
    pub fn from_body(body: &[u8]) -> Option<Self> {
        match body {
            [b'I'] => Some(TxnStatus::Idle),
            [b'T'] => Some(TxnStatus::InTransaction),
            [b'E'] => Some(TxnStatus::Failed),
            _ => None,
        }
    }
}

fn with_frame(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    let len = (buf.len() - at) as i32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// AuthenticationOk.
pub fn authentication_ok(buf: &mut BytesMut) {
    with_frame(buf, AUTHENTICATION_TAG, |b| b.put_i32(0));
}

/// AuthenticationCleartextPassword.
pub fn authentication_cleartext(buf: &mut BytesMut) {
    with_frame(buf, AUTHENTICATION_TAG, |b| b.put_i32(3));
}

/// AuthenticationMD5Password with its salt.
pub fn authentication_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    with_frame(buf, AUTHENTICATION_TAG, |b| {
        b.put_i32(5);
        b.put_slice(&salt);
    });
}

/// AuthenticationSASL with the mechanisms offered.
pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    with_frame(buf, AUTHENTICATION_TAG, |b| {
        b.put_i32(10);
        for m in mechanisms {
            put_cstr(b, m);
        }
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue.
pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    with_frame(buf, AUTHENTICATION_TAG, |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal.
pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    with_frame(buf, AUTHENTICATION_TAG, |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    with_frame(buf, PARAMETER_STATUS_TAG, |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// BackendKeyData (protocol 3.0: 4-byte secret).
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: i32) {
    with_frame(buf, BACKEND_KEY_DATA_TAG, |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// ReadyForQuery.
pub fn ready_for_query(buf: &mut BytesMut, status: TxnStatus) {
    with_frame(buf, READY_FOR_QUERY_TAG, |b| b.put_u8(status.byte()));
}

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Ends the statement; the session goes on.
    Error,
    /// Ends the session.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// ErrorResponse with severity, SQLSTATE and message, as PostgreSQL sends
/// them (both 'S' and the untranslated 'V' severity).
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    with_frame(buf, ERROR_RESPONSE_TAG, |b| {
        for (field, value) in [
            (b'S', severity.as_str()),
            (b'V', severity.as_str()),
            (b'C', code),
            (b'M', message),
        ] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
}

/// ParseComplete.
pub fn parse_complete(buf: &mut BytesMut) {
    with_frame(buf, b'1', |_| {});
}

/// CloseComplete.
pub fn close_complete(buf: &mut BytesMut) {
    with_frame(buf, b'3', |_| {});
}

/// CommandComplete with its tag.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    with_frame(buf, b'C', |b| put_cstr(b, tag));
}

/// Rewrites the message ('M') and detail fields of an ErrorResponse body,
/// replacing `from` with `to`; other fields are kept as sent.
pub fn rename_in_error(buf: &mut BytesMut, body: &[u8], from: &str, to: &str) -> bool {
    let Ok(fields) = error_fields(body) else {
        return false;
    };
    with_frame(buf, ERROR_RESPONSE_TAG, |b| {
        for (kind, value) in &fields {
            b.put_u8(*kind);
            if matches!(kind, b'M' | b'D') {
                put_cstr(b, &value.replace(from, to));
            } else {
                put_cstr(b, value);
            }
        }
        b.put_u8(0);
    });
    true
}

/// A Query message (pgsplit sends these to nodes for resets).
pub fn query(buf: &mut BytesMut, sql: &str) {
    with_frame(buf, b'Q', |b| put_cstr(b, sql));
}

/// The fields of an ErrorResponse or NoticeResponse body.
///
/// # Errors
/// A body that is not a list of typed NUL-terminated strings.
pub fn error_fields(body: &[u8]) -> Result<Vec<(u8, &str)>, ProtocolError> {
    let mut rest = body;
    let mut fields = Vec::new();
    loop {
        let Some((&kind, tail)) = rest.split_first() else {
            return Err(ProtocolError::Malformed {
                what: "ErrorResponse",
            });
        };
        if kind == 0 {
            return Ok(fields);
        }
        rest = tail;
        let value = take_cstr(&mut rest).ok_or(ProtocolError::Malformed {
            what: "ErrorResponse",
        })?;
        fields.push((kind, value));
    }
}

/// The SQLSTATE and message of an ErrorResponse body, if well formed.
pub fn error_code_and_message(body: &[u8]) -> Option<(String, String)> {
    let fields = error_fields(body).ok()?;
    let find = |k: u8| {
        fields
            .iter()
            .find(|(f, _)| *f == k)
            .map(|(_, v)| v.to_string())
    };
    Some((find(b'C')?, find(b'M').unwrap_or_default()))
}

/// The columns of a text-format DataRow body (NULL as `None`; bytes that
/// are not UTF-8 replaced). Malformed rows give what could be read.
pub fn data_row_text(body: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let Some(count) = body.get(..2) else {
        return out;
    };
    let count = u16::from_be_bytes([count[0], count[1]]);
    let mut at = 2;
    for _ in 0..count {
        let Some(len) = body.get(at..at + 4) else {
            break;
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        match usize::try_from(len) {
            Ok(len) => {
                let Some(value) = body.get(at..at + len) else {
                    break;
                };
                out.push(Some(String::from_utf8_lossy(value).into_owned()));
                at += len;
            }
            Err(_) => out.push(None),
        }
    }
    out
}

/// RowDescription of text-format columns, each with its type OID.
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32)]) {
    with_frame(buf, b'T', |b| {
        b.put_i16(i16::try_from(columns.len()).unwrap_or(i16::MAX));
        for (name, oid) in columns {
            put_cstr(b, name);
            b.put_i32(0); // table
            b.put_i16(0); // column
            b.put_u32(*oid);
            b.put_i16(-1); // size
            b.put_i32(-1); // modifier
            b.put_i16(0); // text
        }
    });
}

/// DataRow of text values (`None`: NULL).
pub fn data_row(buf: &mut BytesMut, values: &[Option<String>]) {
    with_frame(buf, b'D', |b| {
        b.put_i16(i16::try_from(values.len()).unwrap_or(i16::MAX));
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                    b.put_slice(v.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
    });
}

/// NoticeResponse at severity NOTICE.
pub fn notice_response(buf: &mut BytesMut, message: &str) {
    with_frame(buf, b'N', |b| {
        for (field, value) in [
            (b'S', "NOTICE"),
            (b'V', "NOTICE"),
            (b'C', "00000"),
            (b'M', message),
        ] {
            b.put_u8(field);
            put_cstr(b, value);
        }
        b.put_u8(0);
    });
}

/// EmptyQueryResponse.
pub fn empty_query_response(buf: &mut BytesMut) {
    with_frame(buf, b'I', |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::decode_frame;

    #[test]
    fn data_rows() {
        let body = [0, 2, 0, 0, 0, 2, b'h', b'i', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(data_row_text(&body), vec![Some("hi".to_owned()), None]);
        assert_eq!(data_row_text(&[0, 1, 0, 0]), Vec::<Option<String>>::new());
    }

    #[test]
    fn error_response_round_trip() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, Severity::Error, "08P01", "bad message");
        let frame = decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        assert_eq!(frame.tag, ERROR_RESPONSE_TAG);
        assert_eq!(
            error_code_and_message(frame.body()),
            Some(("08P01".into(), "bad message".into()))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn ready_for_query_and_key_data() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, TxnStatus::InTransaction);
        assert_eq!(&buf[..], &[b'Z', 0, 0, 0, 5, b'T']);
        let frame = decode_frame(&mut buf, 64).unwrap().unwrap();
        assert_eq!(
            TxnStatus::from_body(frame.body()),
            Some(TxnStatus::InTransaction)
        );
        backend_key_data(&mut buf, 1, 2);
        assert_eq!(&buf[..], &[b'K', 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 2]);
    }
}
