//! Value types of proxy.yaml: durations (`250ms`, `10s`, `5m`), sizes
//! (`64MB`), and `${VAR}` / `${VAR:-default}` expansion from the
//! environment, done on the text before YAML parsing.

use std::fmt;

use serde::{Deserialize, Deserializer, de};

/// A duration written the humantime way: `250ms`, `10s`, `5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// The accepted forms, for error messages.
    pub const FORMS: &'static str =
        "a whole number with ms, s, m or h, or several in a row: 250ms, 10s, 5m, 1h, 1m30s";

    /// Parses `250ms`, `10s`, `5m`, `1h` or a run of them (`1m30s`).
    /// Nothing else: not `5 seconds`, not `1d`, not a bare number, so a
    /// typo is an error and not a surprise.
    pub fn parse(text: &str) -> Option<Duration> {
        let mut rest = text.trim();
        if rest.is_empty() {
            return None;
        }
        let mut total = std::time::Duration::ZERO;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return None;
            }
            let n: u64 = rest[..digits].parse().ok()?;
            rest = &rest[digits..];
            let (unit, len) = if rest.starts_with("ms") {
                (std::time::Duration::from_millis(1), 2)
            } else if rest.starts_with('s') {
                (std::time::Duration::from_secs(1), 1)
            } else if rest.starts_with('m') {
                (std::time::Duration::from_secs(60), 1)
            } else if rest.starts_with('h') {
                (std::time::Duration::from_secs(3600), 1)
            } else {
                return None;
            };
            rest = &rest[len..];
            total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
        }
        Some(Duration(total))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Duration::parse(&text).ok_or_else(|| {
            de::Error::custom(format!(
                "invalid duration {text:?}: write {}",
                Duration::FORMS
            ))
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// A size in bytes written `64MB`, `512kB`, `1GB` or a plain number of bytes.
/// Units are PostgreSQL's: powers of 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `64MB`, `512kB`, `1GB`, `1TB`, `100B` or `100`.
    pub fn parse(text: &str) -> Option<ByteSize> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits.parse().ok()?;
        let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "KB" => 1 << 10,
            "MB" => 1 << 20,
            "GB" => 1 << 30,
            "TB" => 1 << 40,
            _ => return None,
        };
        n.checked_mul(mult).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(ByteSize(n)),
            Raw::Text(t) => ByteSize::parse(&t).ok_or_else(|| {
                de::Error::custom(format!("invalid size {t:?}; write e.g. 64MB, 512kB, 1GB"))
            }),
        }
    }
}

/// An unset variable named in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVar {
    /// 1-based line of the reference.
    pub line: usize,
    /// The variable's name.
    pub name: String,
}

/// Replaces `${NAME}` and `${NAME:-default}` with values from `lookup`.
/// `$${` stays a literal `${`.
///
/// # Errors
/// The first variable that is unset and has no default.
pub fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, MissingVar> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if at > 0 && rest.as_bytes()[at - 1] == b'$' {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[at..]);
            return Ok(out);
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match lookup(name).or_else(|| default.map(str::to_owned)) {
            Some(value) => out.push_str(&value),
            None => {
                let line = text[..text.len() - rest.len() + at].matches('\n').count() + 1;
                return Err(MissingVar {
                    line,
                    name: name.to_owned(),
                });
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("64MB"), Some(ByteSize(64 << 20)));
        assert_eq!(ByteSize::parse("512kB"), Some(ByteSize(512 << 10)));
        assert_eq!(ByteSize::parse("100"), Some(ByteSize(100)));
        assert_eq!(ByteSize::parse("1 GB"), Some(ByteSize(1 << 30)));
        assert_eq!(ByteSize::parse("12XB"), None);
        assert_eq!(ByteSize::parse("MB"), None);
    }

    #[test]
    fn env_expansion() {
        let lookup = |n: &str| (n == "PW").then(|| "s3cret".to_owned());
        assert_eq!(expand_env("a: ${PW}\n", lookup).unwrap(), "a: s3cret\n");
        assert_eq!(expand_env("a: ${NOPE:-dflt}", lookup).unwrap(), "a: dflt");
        assert_eq!(expand_env("a: $${PW}", lookup).unwrap(), "a: ${PW}");
        assert_eq!(
            expand_env("x: 1\ny: ${NOPE}\n", lookup),
            Err(MissingVar {
                line: 2,
                name: "NOPE".into()
            })
        );
    }
}
