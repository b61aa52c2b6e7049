//! The console's language: a query string split into commands, each
//! parsed into a [`Command`]. No I/O; unit tested.

/// A SHOW's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// Nodes, roles, lag and weights.
    Nodes,
    /// One row per (database, user, node) pool.
    Pools,
    /// Client sessions.
    Clients,
    /// Server connections.
    Servers,
    /// Traffic per database and node.
    Stats,
    /// Routing decisions by target and reason.
    Routes,
    /// The configuration in force.
    Config,
    /// The proxy's version.
    Version,
    /// How many of each thing.
    Lists,
    /// The commands.
    Help,
}

impl Show {
    fn parse(word: &str) -> Option<Show> {
        Some(match word {
            "nodes" => Show::Nodes,
            "pools" => Show::Pools,
            "clients" => Show::Clients,
            "servers" => Show::Servers,
            "stats" => Show::Stats,
            "routes" => Show::Routes,
            "config" => Show::Config,
            "version" => Show::Version,
            "lists" => Show::Lists,
            "help" => Show::Help,
            _ => return None,
        })
    }
}

/// One console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW x`.
    Show(Show),
    /// `RELOAD`.
    Reload,
    /// `PAUSE [db]`.
    Pause(Option<String>),
    /// `RESUME [db]`.
    Resume(Option<String>),
    /// `RECONNECT [db]`.
    Reconnect(Option<String>),
    /// `WAIT_CLOSE [db]`.
    WaitClose(Option<String>),
    /// `KILL db`.
    Kill(String),
    /// `SWITCHOVER TO 'x' [CHECK]`, `FAILOVER [TO 'x'] [CHECK]`.
    Failover {
        /// The node to promote (a forced failover may leave it to the
        /// proxy: the most advanced replica).
        to: Option<String>,
        /// FAILOVER: the old primary is gone.
        force: bool,
        /// CHECK: the drill.
        check: bool,
    },
    /// `EXPLAIN ROUTE 'sql'`.
    ExplainRoute(String),
}

impl Command {
    /// Whether an `admin.stats_users` user may run it.
    pub fn read_only(&self) -> bool {
        matches!(self, Command::Show(_) | Command::ExplainRoute(_))
            || matches!(self, Command::Failover { check: true, .. })
    }

    /// The CommandComplete tag PgBouncer would send.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Show(_) => "SHOW",
            Command::Reload => "RELOAD",
            Command::Pause(_) => "PAUSE",
            Command::Resume(_) => "RESUME",
            Command::Reconnect(_) => "RECONNECT",
            Command::WaitClose(_) => "WAIT_CLOSE",
            Command::Kill(_) => "KILL",
            Command::Failover { force: false, .. } => "SWITCHOVER",
            Command::Failover { force: true, .. } => "FAILOVER",
            Command::ExplainRoute(_) => "EXPLAIN",
        }
    }
}

/// A token: a word (lowercased unless it was double-quoted) or a string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
}

impl Token {
    fn text(&self) -> &str {
        match self {
            Token::Word(w) | Token::Quoted(w) => w,
        }
    }
}

/// Splits a query string at the semicolons outside quotes; blank pieces
/// are dropped.
pub fn split(query: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quote: Option<char> = None;
    for (i, c) in query.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, ';') => {
                out.push(&query[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&query[start..]);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' || c == '"' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated {c}quoted{c} text")),
                    Some(x) if x == c => {
                        if chars.peek() == Some(&c) {
                            chars.next();
                            s.push(c);
                        } else {
                            break;
                        }
                    }
                    Some(x) => s.push(x),
                }
            }
            out.push(if c == '\'' {
                Token::Quoted(s)
            } else {
                Token::Word(s)
            });
        } else {
            let mut w = String::new();
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() || x == '\'' || x == '"' {
                    break;
                }
                w.push(x.to_ascii_lowercase());
                chars.next();
            }
            out.push(Token::Word(w));
        }
    }
    Ok(out)
}

/// Parses one command (a piece from [`split`]).
///
/// # Errors
/// A message naming what was wrong, and pointing at `SHOW HELP`.
pub fn parse(text: &str) -> Result<Command, String> {
    let tokens = tokens(text)?;
    let words: Vec<&str> = tokens.iter().map(Token::text).collect();
    let keyword = |i: usize| match tokens.get(i) {
        Some(Token::Word(w)) => Some(w.as_str()),
        _ => None,
    };
    let optional_db = |what: &str| -> Result<Option<String>, String> {
        match words.len() {
            1 => Ok(None),
            2 => Ok(Some(words[1].to_owned())),
            _ => Err(format!("{what} takes at most one database name")),
        }
    };
    let command = match keyword(0).unwrap_or("") {
        "show" => {
            let subject = keyword(1).filter(|_| words.len() == 2).ok_or_else(|| {
                "SHOW takes one of NODES, POOLS, CLIENTS, SERVERS, STATS, ROUTES, CONFIG, \
                 VERSION, LISTS, HELP"
                    .to_owned()
            })?;
            Command::Show(
                Show::parse(subject).ok_or_else(|| format!("there is no SHOW {subject}"))?,
            )
        }
        "reload" if words.len() == 1 => Command::Reload,
        "pause" => Command::Pause(optional_db("PAUSE")?),
        "resume" => Command::Resume(optional_db("RESUME")?),
        "reconnect" => Command::Reconnect(optional_db("RECONNECT")?),
        "wait_close" => Command::WaitClose(optional_db("WAIT_CLOSE")?),
        "kill" if words.len() == 2 => Command::Kill(words[1].to_owned()),
        "kill" => return Err("KILL takes one database name".into()),
        verb @ ("switchover" | "failover") => {
            let force = verb == "failover";
            let mut rest = &tokens[1..];
            let mut to = None;
            if let Some(Token::Word(w)) = rest.first()
                && w == "to"
            {
                to = Some(
                    rest.get(1)
                        .ok_or_else(|| format!("{} TO needs a node name", verb.to_uppercase()))?
                        .text()
                        .to_owned(),
                );
                rest = &rest[2..];
            }
            let check = match rest {
                [] => false,
                [Token::Word(w)] if w == "check" => true,
                _ => {
                    return Err(format!("write {} TO 'node' [CHECK]", verb.to_uppercase()));
                }
            };
            if to.is_none() && !force {
                return Err("SWITCHOVER needs TO 'node'".into());
            }
            Command::Failover { to, force, check }
        }
        "explain" => match &tokens[1..] {
            [Token::Word(w), Token::Quoted(sql)] if w == "route" => {
                Command::ExplainRoute(sql.clone())
            }
            _ => return Err("write EXPLAIN ROUTE 'statement'".into()),
        },
        _ => {
            return Err(format!(
                "unknown console command {:?}; SHOW HELP lists them",
                text.trim()
            ));
        }
    };
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_as_pgbouncer_writes_them() {
        assert_eq!(parse("show pools"), Ok(Command::Show(Show::Pools)));
        assert_eq!(parse(" SHOW  Nodes "), Ok(Command::Show(Show::Nodes)));
        assert_eq!(parse("PAUSE"), Ok(Command::Pause(None)));
        assert_eq!(parse("pause app"), Ok(Command::Pause(Some("app".into()))));
        assert_eq!(
            parse("resume \"MyDb\""),
            Ok(Command::Resume(Some("MyDb".into())))
        );
        assert_eq!(parse("KILL app"), Ok(Command::Kill("app".into())));
        assert_eq!(
            parse("SWITCHOVER TO 'pg2' CHECK"),
            Ok(Command::Failover {
                to: Some("pg2".into()),
                force: false,
                check: true
            })
        );
        assert_eq!(
            parse("failover"),
            Ok(Command::Failover {
                to: None,
                force: true,
                check: false
            })
        );
        assert_eq!(
            parse("EXPLAIN ROUTE 'select ''a''; select 1'"),
            Ok(Command::ExplainRoute("select 'a'; select 1".into()))
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert!(parse("SHOW TABLES").unwrap_err().contains("no SHOW tables"));
        assert!(parse("SELECT 1").unwrap_err().contains("SHOW HELP"));
        assert!(parse("SWITCHOVER").unwrap_err().contains("TO"));
        assert!(
            parse("SWITCHOVER TO pg2 NOW")
                .unwrap_err()
                .contains("CHECK")
        );
        assert!(parse("KILL").is_err());
        assert!(parse("EXPLAIN ROUTE select").is_err());
    }

    #[test]
    fn a_query_string_splits_outside_quotes() {
        assert_eq!(
            split("SHOW POOLS; EXPLAIN ROUTE 'a;b';;"),
            vec!["SHOW POOLS", " EXPLAIN ROUTE 'a;b'"]
        );
        assert!(split(" ; ").is_empty());
    }

    #[test]
    fn stats_users_may_look_but_not_touch() {
        assert!(parse("SHOW STATS").expect("parses").read_only());
        assert!(
            parse("SWITCHOVER TO 'x' CHECK")
                .expect("parses")
                .read_only()
        );
        assert!(!parse("SWITCHOVER TO 'x'").expect("parses").read_only());
        assert!(!parse("PAUSE").expect("parses").read_only());
        assert!(!parse("RELOAD").expect("parses").read_only());
    }
}
