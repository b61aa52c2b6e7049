//! `explain`: a route together with the facts behind it, for operators
//! (`pgsplit explain`, `POST /explain`).

use super::{Knowledge, Route, classify, scan};

/// A function or relation the statement names, and what the facts say.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Seen {
    /// `function` or `relation`.
    pub kind: String,
    /// As written, folded (`schema.name` when qualified).
    pub name: String,
    /// `safe`, `primary_only`, `pins_session`, `unknown`, `set_config`,
    /// `unlogged`, `calls_primary_only`, `node_state`.
    pub fact: String,
}

/// Why a statement goes where it goes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Explanation {
    /// `primary` or `replica`.
    pub target: String,
    /// The routing reason (the metric label).
    pub reason: String,
    /// It pins the session to its server connection.
    pub pins: bool,
    /// The session re-reads its state after it.
    pub dirties: bool,
    /// The leading `/* pgsplit:... */` hint, if any.
    pub hint: Option<String>,
    /// The route rule a session of the given user and database matches
    /// (it picks the replicas a read may use).
    #[serde(default)]
    pub rule: Option<String>,
    /// The route came from the route cache.
    pub cached: bool,
    /// sqlparser read it (facts are listed only then).
    pub parsed: bool,
    /// What it names.
    pub seen: Vec<Seen>,
    /// Databases whose catalogs the facts come from.
    pub catalog_databases: Vec<String>,
}

/// Explains `route`, the verdict on `sql`.
pub fn explain(sql: &str, route: Route, cached: bool, known: &Knowledge) -> Explanation {
    let statements = classify::parse(sql);
    let mut seen: Vec<Seen> = Vec::new();
    for one in statements
        .iter()
        .flatten()
        .flat_map(|s| classify::seen(s, known))
    {
        // A FROM item is met as a relation twice; the one that judged it
        // stays.
        match seen
            .iter_mut()
            .find(|s| s.kind == one.kind && s.name == one.name)
        {
            Some(old) if old.fact == "safe" => *old = one,
            Some(_) => {}
            None => seen.push(one),
        }
    }
    Explanation {
        target: route.target.as_str().to_owned(),
        reason: route.reason.as_str().to_owned(),
        pins: route.pins,
        dirties: route.dirties,
        hint: scan::leading_hint(sql).map(|t| t.as_str().to_owned()),
        rule: None,
        cached,
        parsed: statements.is_some(),
        seen,
        catalog_databases: known.facts.databases().map(str::to_owned).collect(),
    }
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "route:   {}", self.target)?;
        writeln!(f, "reason:  {}", self.reason)?;
        if self.pins {
            writeln!(f, "pins:    the session keeps its server connection")?;
        }
        if self.dirties {
            writeln!(f, "state:   the session re-reads its settings after it")?;
        }
        if let Some(hint) = &self.hint {
            writeln!(f, "hint:    {hint}")?;
        }
        if let Some(rule) = &self.rule {
            writeln!(f, "rule:    {rule}")?;
        }
        writeln!(f, "cache:   {}", if self.cached { "hit" } else { "miss" })?;
        if !self.parsed {
            writeln!(f, "parsed:  no (sqlparser cannot read it)")?;
        }
        for seen in &self.seen {
            writeln!(f, "{:<9}{} -> {}", seen.kind, seen.name, seen.fact)?;
        }
        write!(
            f,
            "catalog: {}",
            if self.catalog_databases.is_empty() {
                "not read yet".to_owned()
            } else {
                self.catalog_databases.join(", ")
            }
        )
    }
}
