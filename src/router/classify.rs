//! The parsed part of routing: a walk over sqlparser's AST (0.64, pinned:
//! its AST changes every minor release, so all matching on it lives here).

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    ContextModifier, CopyTarget, Expr, FunctionArguments, Query, Select, Set, SetExpr, Statement,
    TableFactor, TransactionAccessMode, TransactionIsolationLevel, TransactionMode, Value, Visit,
    Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::functions::{self, Effect};
use super::{Reason, Route, Target, scan};

/// Deep enough for generated SQL; sqlparser grows its stack as it recurses.
const RECURSION_LIMIT: usize = 500;

/// Parses and routes a query string.
pub fn parsed(sql: &str, write_functions: &HashSet<String>) -> Route {
    let dialect = PostgreSqlDialect {};
    let statements = match Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
    {
        Ok(statements) => statements,
        // Unreadable: anything may happen, session state included.
        Err(_) => return Route::primary(Reason::ParseError).dirtying(),
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
        let route = statement_route(statement, write_functions);
        combined = merge(combined, route);
    }
    if combined.target == Target::Replica && scan::has_unparsed_lock_clause(sql) {
        return Route::primary(Reason::Lock);
    }
    combined
}

fn merge(a: Route, b: Route) -> Route {
    a.merge(b)
}

fn statement_route(statement: &Statement, write_functions: &HashSet<String>) -> Route {
    match statement {
        Statement::Query(_) => walk(statement, write_functions),
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
                statement_route(inner, write_functions)
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
                walk(statement, write_functions)
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
fn walk(statement: &Statement, write_functions: &HashSet<String>) -> Route {
    let mut walker = Walker {
        write_functions,
        route: Route::replica(Reason::Read),
    };
    let _ = statement.visit(&mut walker);
    walker.route
}

struct Walker<'a> {
    write_functions: &'a HashSet<String>,
    route: Route,
}

impl Walker<'_> {
    fn force(&mut self, route: Route) -> ControlFlow<()> {
        self.route = merge(self.route, route);
        if self.route.pins {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn function(&mut self, name: &str, is_local_false: bool) -> ControlFlow<()> {
        if name.eq_ignore_ascii_case("set_config") {
            // set_config(name, value, false) changes the session: the
            // session re-reads its settings afterwards.
            let _ = is_local_false;
            return self.force(Route::primary(Reason::Function).dirtying());
        }
        match functions::effect(name, self.write_functions) {
            Effect::None => ControlFlow::Continue(()),
            // A user function may call set_config, create temp tables...
            Effect::Primary if functions::is_builtin(name) => {
                self.force(Route::primary(Reason::Function))
            }
            Effect::Primary => self.force(Route::primary(Reason::Function).dirtying()),
            Effect::Pins => self.force(Route::pinned(Reason::Function)),
        }
    }
}

fn last_name_part(name: &sqlparser::ast::ObjectName) -> Option<String> {
    name.0.last()?.as_ident().map(|i| i.value.clone())
}

fn third_arg_is_false(args: &FunctionArguments) -> bool {
    let FunctionArguments::List(list) = args else {
        return false;
    };
    match list.args.get(2) {
        Some(sqlparser::ast::FunctionArg::Unnamed(sqlparser::ast::FunctionArgExpr::Expr(
            Expr::Value(v),
        ))) => match &v.value {
            Value::Boolean(b) => !b,
            Value::SingleQuotedString(s) => {
                matches!(
                    s.to_ascii_lowercase().as_str(),
                    "f" | "false" | "off" | "no" | "0"
                )
            }
            _ => true,
        },
        // Unknown at parse time: assume it may change the session.
        Some(_) => true,
        None => false,
    }
}

impl Visitor for Walker<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
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
        if let Expr::Function(f) = expr
            && let Some(name) = last_name_part(&f.name)
        {
            return self.function(&name, third_arg_is_false(&f.args));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &sqlparser::ast::ObjectName) -> ControlFlow<()> {
        if last_name_part(relation).is_some_and(|name| functions::is_node_view(&name)) {
            return self.force(Route::primary(Reason::NodeState));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let name = match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => last_name_part(name),
            TableFactor::Function { name, .. } => last_name_part(name),
            _ => None,
        };
        match name {
            Some(name) => self.function(&name, false),
            None => ControlFlow::Continue(()),
        }
    }
}
