//! Rewriting a libpq connection string's host and port, keeping the rest
//! (user, passfile, sslmode, application_name...).

/// `conninfo` with `host` and `port` replaced (added when missing).
pub fn repoint(conninfo: &str, host: &str, port: u16) -> String {
    let mut parts: Vec<String> = split(conninfo)
        .into_iter()
        .filter(|p| {
            !p.starts_with("host=") && !p.starts_with("hostaddr=") && !p.starts_with("port=")
        })
        .collect();
    parts.push(format!("host={host}"));
    parts.push(format!("port={port}"));
    parts.join(" ")
}

/// Splits `key=value` pairs, keeping single-quoted values whole.
fn split(conninfo: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in conninfo.chars() {
        if escaped {
            current.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => {
                current.push(c);
                escaped = true;
            }
            '\'' => {
                current.push(c);
                quoted = !quoted;
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_replaced() {
        let old = "user=postgres passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer host=127.0.0.1 port=5432 sslmode=prefer application_name='a b'";
        assert_eq!(
            repoint(old, "10.0.0.2", 5433),
            "user=postgres passfile='/var/lib/postgresql/.pgpass' channel_binding=prefer sslmode=prefer application_name='a b' host=10.0.0.2 port=5433"
        );
        assert_eq!(repoint("", "h", 1), "host=h port=1");
    }
}
