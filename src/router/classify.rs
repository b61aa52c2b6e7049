//! The parsed part of routing: a walk over sqlparser's AST (0.64, pinned:
//! its AST changes every minor release, so all matching on it lives here).

use std::ops::ControlFlow;

use sqlparser::ast::{
    ContextModifier, CopyTarget, Expr, Query, Select, Set, SetExpr, Statement, TableFactor,
    TransactionAccessMode, TransactionIsolationLevel, TransactionMode, Value, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::explain::Seen;
use super::facts::Fact;
use super::functions::{self, Effect};
use super::{Knowledge, Reason, Route, Target, scan};

/// Deep enough for generated SQL; sqlparser grows its stack as it recurses.
const RECURSION_LIMIT: usize = 500;

/// Parses and routes a query string.
pub fn parsed(sql: &str, known: &Knowledge) -> Route {
    let statements = match parse(sql) {
        Some(statements) => statements,
        // Unreadable: anything may happen, session state included.
        None => return Route::primary(Reason::ParseError).dirtying(),
    };
    let mut combined = Route::replica(Reason::Read);
    for statement in &statements {
        let ends_transaction = matches!(
            statement,
            Statement::Commit { .. }
                | Statement::Rollback { .. }
                | Statement::Savepoint { .. }
                | Statement::ReleaseSavepoint { .. }
        );
        // `BEGIN READ ONLY; ...; COMMIT` stays a read-only transaction.
        if ends_transaction && combined.reason == Reason::ReadOnlyTransaction {
            continue;
        }
        let route = statement_route(statement, known);
        combined = merge(combined, route);
    }
    if combined.target == Target::Replica && scan::has_unparsed_lock_clause(sql) {
        return Route::primary(Reason::Lock);
    }
    combined
}

/// The statements of `sql`, or `None` when sqlparser cannot read it.
pub fn parse(sql: &str) -> Option<Vec<Statement>> {
    Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .ok()
}

/// The functions and relations a statement names, with what the facts
/// say of each (for `explain`).
pub fn seen(statement: &Statement, known: &Knowledge) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut walker = Walker {
        known,
        route: Route::replica(Reason::Read),
        ctes: Vec::new(),
        seen: Some(&mut seen),
    };
    let _ = statement.visit(&mut walker);
    seen
}

fn merge(a: Route, b: Route) -> Route {
    a.merge(b)
}

fn statement_route(statement: &Statement, known: &Knowledge) -> Route {
    match statement {
        Statement::Query(_) => walk(statement, known),
        Statement::Explain {
            analyze,
            options,
            statement: inner,
            ..
        } => {
            let analyzes = *analyze
                || options.iter().flatten().any(|o| {
                    o.name.value.eq_ignore_ascii_case("analyze")
                        && !matches!(&o.arg, Some(Expr::Value(v)) if matches!(v.value, Value::Boolean(false)))
                });
            if analyzes {
                statement_route(inner, known)
            } else {
                Route::replica(Reason::Read)
            }
        }
        Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowViews { .. } => Route::replica(Reason::Read),
        Statement::Copy { to, target, .. } => {
            if *to && matches!(target, CopyTarget::Stdout) {
                walk(statement, known)
            } else {
                Route::primary(Reason::Write)
            }
        }
        Statement::StartTransaction { modes, .. } => transaction_route(modes),
        Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => Route::primary(Reason::Transaction),
        Statement::Set(set) => set_route(set),
        Statement::Reset(_) | Statement::Discard { .. } => Route::primary(Reason::Session),
        Statement::LISTEN { .. } => Route::pinned(Reason::Session),
        Statement::UNLISTEN { .. } | Statement::NOTIFY { .. } => Route::primary(Reason::Session),
        Statement::Lock(_) | Statement::LockTables { .. } => Route::primary(Reason::Lock),
        Statement::Declare { stmts, .. } => {
            if stmts.iter().any(|d| d.hold == Some(true)) {
                Route::pinned(Reason::Session)
            } else {
                Route::primary(Reason::Session)
            }
        }
        Statement::Prepare { .. } => Route::pinned(Reason::Session),
        // EXECUTE may run a prepared INSERT.
        Statement::Execute { .. } => Route::primary(Reason::Write),
        Statement::Deallocate { .. } | Statement::Fetch { .. } | Statement::Close { .. } => {
            Route::primary(Reason::Session)
        }
        Statement::CreateTable(t) if t.temporary || in_pg_temp(&t.name) => {
            Route::pinned(Reason::Session)
        }
        Statement::CreateView(v) if v.temporary || in_pg_temp(&v.name) => {
            Route::pinned(Reason::Session)
        }
        Statement::CreateSequence {
            temporary, name, ..
        } if *temporary || in_pg_temp(name) => Route::pinned(Reason::Session),
        // A procedure may do anything, set_config included.
        Statement::Call(_) => Route::primary(Reason::Write).dirtying(),
        _ => Route::primary(Reason::Write),
    }
}

/// A name qualified by `pg_temp` (the session's temporary schema).
fn in_pg_temp(name: &sqlparser::ast::ObjectName) -> bool {
    name.0.len() > 1
        && name.0[0]
            .as_ident()
            .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_temp"))
}

fn transaction_route(modes: &[TransactionMode]) -> Route {
    let read_only = modes.iter().any(|m| {
        matches!(
            m,
            TransactionMode::AccessMode(TransactionAccessMode::ReadOnly)
        )
    });
    // A hot standby refuses SERIALIZABLE; keep those on the primary.
    let serializable = modes.iter().any(|m| {
        matches!(
            m,
            TransactionMode::IsolationLevel(TransactionIsolationLevel::Serializable)
        )
    });
    if read_only && !serializable {
        Route::replica(Reason::ReadOnlyTransaction)
    } else {
        Route::primary(Reason::Transaction)
    }
}

fn set_route(set: &Set) -> Route {
    match set {
        Set::SingleAssignment {
            scope: Some(ContextModifier::Local),
            ..
        } => Route::primary(Reason::Session),
        // SET SESSION CHARACTERISTICS changes the session's defaults.
        Set::SetTransaction { session: true, .. } => Route::primary(Reason::Transaction).dirtying(),
        Set::SetTransaction { .. } => Route::primary(Reason::Transaction),
        // Forms the session does not track (SET ROLE, SET XML OPTION...):
        // it re-reads its state afterwards, and keeps the connection if
        // what it finds cannot be replayed (a role).
        _ => Route::primary(Reason::Session).dirtying(),
    }
}

/// Walks a statement for nested writes, locks, SELECT INTO and functions.
fn walk(statement: &Statement, known: &Knowledge) -> Route {
    let mut walker = Walker {
        known,
        route: Route::replica(Reason::Read),
        ctes: Vec::new(),
        seen: None,
    };
    let _ = statement.visit(&mut walker);
    walker.route
}

struct Walker<'a> {
    known: &'a Knowledge,
    route: Route,
    /// Names of common table expressions seen: not catalog relations.
    ctes: Vec<String>,
    /// Collects what it looked up, for `explain` (it then walks on past
    /// a pin).
    seen: Option<&'a mut Vec<Seen>>,
}

impl Walker<'_> {
    fn force(&mut self, route: Route) -> ControlFlow<()> {
        self.route = merge(self.route, route);
        if self.route.pins && self.seen.is_none() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn function(&mut self, name: &sqlparser::ast::ObjectName) -> ControlFlow<()> {
        let Some((schema, name)) = folded_name(name) else {
            // `catalog.schema.name` or an expression: nothing to look up.
            return self.force(Route::primary(Reason::Unknown).dirtying());
        };
        if name == "set_config" && schema.as_deref().is_none_or(|s| s == "pg_catalog") {
            // set_config(name, value, false) changes the session: the
            // session re-reads its settings afterwards.
            self.note(&name, "set_config");
            return self.force(Route::primary(Reason::Function).dirtying());
        }
        let effect = functions::effect(schema.as_deref(), &name, self.known);
        let label = match effect {
            Effect::None => "safe",
            Effect::Primary { .. } => "primary_only",
            Effect::Pins => "pins_session",
            Effect::Unknown => "unknown",
        };
        let shown = match &schema {
            Some(s) => format!("{s}.{name}"),
            None => name.clone(),
        };
        self.note(&shown, label);
        match effect {
            Effect::None => ControlFlow::Continue(()),
            Effect::Primary { user: false } => self.force(Route::primary(Reason::Function)),
            // A user function may call set_config, create temp tables...
            Effect::Primary { user: true } => {
                self.force(Route::primary(Reason::Function).dirtying())
            }
            Effect::Pins => self.force(Route::pinned(Reason::Function)),
            Effect::Unknown => self.force(Route::primary(Reason::Unknown).dirtying()),
        }
    }

    fn note(&mut self, name: &str, fact: &str) {
        if let Some(seen) = self.seen.as_deref_mut() {
            seen.push(Seen {
                kind: "function".into(),
                name: name.to_owned(),
                fact: fact.to_owned(),
            });
        }
    }

    /// A relation the statement reads; `from` when it is a FROM item (not
    /// a CTE), which must be a relation the catalog knows.
    fn relation(&mut self, name: &sqlparser::ast::ObjectName, from: bool) -> ControlFlow<()> {
        let Some((schema, name)) = folded_name(name) else {
            return ControlFlow::Continue(());
        };
        let facts = &self.known.facts;
        let (route, fact) = if functions::is_node_view(&name) {
            (Some(Route::primary(Reason::NodeState)), "node_state")
        } else if let Some(fact) = facts.primary_relation(schema.as_deref(), &name) {
            (Some(Route::primary(Reason::PrimaryRelation)), fact.as_str())
        } else if from
            && !(schema.is_none() && self.ctes.contains(&name))
            && !facts.relation_known(schema.as_deref(), &name)
        {
            (Some(Route::primary(Reason::Unknown)), "unknown")
        } else {
            (None, Fact::Safe.as_str())
        };
        if let Some(seen) = self.seen.as_deref_mut() {
            seen.push(Seen {
                kind: "relation".into(),
                name: match &schema {
                    Some(s) => format!("{s}.{name}"),
                    None => name.clone(),
                },
                fact: fact.to_owned(),
            });
        }
        match route {
            Some(route) => self.force(route),
            None => ControlFlow::Continue(()),
        }
    }
}

/// An identifier as the catalog stores it: unquoted ones fold to lower case.
fn fold_ident(ident: &sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

/// `(schema, name)` of a one- or two-part name, folded; the schema of a
/// three-part `database.schema.name`.
fn folded_name(name: &sqlparser::ast::ObjectName) -> Option<(Option<String>, String)> {
    let parts: Vec<&sqlparser::ast::Ident> =
        name.0.iter().map(|p| p.as_ident()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [name] => Some((None, fold_ident(name))),
        [.., schema, name] => Some((Some(fold_ident(schema)), fold_ident(name))),
        [] => None,
    }
}

impl Visitor for Walker<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            self.ctes
                .extend(with.cte_tables.iter().map(|c| fold_ident(&c.alias.name)));
        }
        if !query.locks.is_empty() {
            return self.force(Route::primary(Reason::Lock));
        }
        if let SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) =
            query.body.as_ref()
        {
            return self.force(Route::primary(Reason::Write));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        match &select.into {
            Some(into) if into.temporary => self.force(Route::pinned(Reason::Session)),
            Some(_) => self.force(Route::primary(Reason::Write)),
            None => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        // Nested statements: data-modifying CTEs and the like.
        match statement {
            Statement::Query(_) => ControlFlow::Continue(()),
            Statement::Copy { .. } => ControlFlow::Continue(()),
            _ => self.force(Route::primary(Reason::Write)),
        }
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            return self.function(&f.name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &sqlparser::ast::ObjectName) -> ControlFlow<()> {
        self.relation(relation, false)
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.function(name),
            TableFactor::Table {
                name, args: None, ..
            } => self.relation(name, true),
            _ => ControlFlow::Continue(()),
        }
    }
}
