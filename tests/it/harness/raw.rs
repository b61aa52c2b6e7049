//! A raw protocol client for tests that need bytes no driver sends: other
//! client encodings, huge parameter counts, the unnamed statement described
//! on its own. Speaks to a proxy configured with `auth.method: trust`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One server message: its tag and body.
#[derive(Debug, Clone)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// An ErrorResponse's SQLSTATE and message.
    pub fn error(&self) -> Option<(String, String)> {
        if self.tag != b'E' {
            return None;
        }
        let (mut code, mut message) = (String::new(), String::new());
        for field in self.body.split(|b| *b == 0) {
            match field.first() {
                Some(b'C') => code = String::from_utf8_lossy(&field[1..]).into_owned(),
                Some(b'M') => message = String::from_utf8_lossy(&field[1..]).into_owned(),
                _ => {}
            }
        }
        Some((code, message))
    }

    /// A DataRow's columns as raw bytes (NULL as None).
    pub fn columns(&self) -> Vec<Option<Vec<u8>>> {
        assert_eq!(self.tag, b'D');
        let n = u16::from_be_bytes([self.body[0], self.body[1]]) as usize;
        let mut at = 2;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = i32::from_be_bytes(self.body[at..at + 4].try_into().unwrap());
            at += 4;
            if len < 0 {
                out.push(None);
            } else {
                out.push(Some(self.body[at..at + len as usize].to_vec()));
                at += len as usize;
            }
        }
        out
    }
}

/// A connection speaking raw protocol messages.
pub struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(s);
    out.push(0);
}

impl Raw {
    /// Connects and logs in (trust) with extra startup parameters.
    pub async fn connect(port: u16, params: &[(&str, &str)]) -> Raw {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut all = vec![("user", "app"), ("database", "app")];
        all.extend_from_slice(params);
        stream
            .write_all(&super::startup_packet(196608, &all))
            .await
            .unwrap();
        let mut raw = Raw {
            stream,
            buf: Vec::new(),
        };
        let greeting = raw.until_ready().await;
        assert!(
            greeting.iter().all(|m| m.tag != b'E'),
            "login failed: {greeting:?}"
        );
        raw
    }

    /// Sends bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one message.
    pub async fn read(&mut self) -> Msg {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let body = self.buf[5..1 + len].to_vec();
                    let tag = self.buf[0];
                    self.buf.drain(..1 + len);
                    return Msg { tag, body };
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(
                std::time::Duration::from_secs(20),
                self.stream.read(&mut chunk),
            )
            .await
            .expect("a reply within 20 s")
            .unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads up to and including ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.read().await;
            let done = m.tag == b'Z';
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// A simple Query, its replies up to ReadyForQuery.
    pub async fn query(&mut self, sql: &[u8]) -> Vec<Msg> {
        let mut body = Vec::new();
        cstr(&mut body, sql);
        self.send(&message(b'Q', &body)).await;
        self.until_ready().await
    }
}

/// Parse of `name` with `sql` and parameter types.
pub fn parse(name: &str, sql: &[u8], types: &[u32]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, name.as_bytes());
    cstr(&mut body, sql);
    body.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        body.extend_from_slice(&t.to_be_bytes());
    }
    message(b'P', &body)
}

/// Bind of `statement` to the unnamed portal with text parameters.
pub fn bind(statement: &str, params: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, b"");
    cstr(&mut body, statement.as_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        body.extend_from_slice(&(p.len() as i32).to_be_bytes());
        body.extend_from_slice(p);
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    message(b'B', &body)
}

/// Describe of a statement.
pub fn describe_statement(name: &str) -> Vec<u8> {
    let mut body = vec![b'S'];
    cstr(&mut body, name.as_bytes());
    message(b'D', &body)
}

/// Execute of the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    let mut body = Vec::new();
    cstr(&mut body, b"");
    body.extend_from_slice(&0i32.to_be_bytes());
    message(b'E', &body)
}

/// Sync.
pub fn sync() -> Vec<u8> {
    message(b'S', &[])
}
