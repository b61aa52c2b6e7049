//! Why a session keeps one server connection for itself (a pin), counted
//! per reason for `/status` and `/metrics`, and capped by
//! `limits.max_pinned_sessions`.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::router::contains_ignoring_case;

/// What a pinned session holds on its server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// Temporary tables, views or sequences.
    Temp,
    /// LISTEN.
    Listen,
    /// SQL-level PREPARE.
    Prepare,
    /// A cursor WITH HOLD.
    Cursor,
    /// A session-level advisory lock.
    AdvisoryLock,
    /// SET ROLE or SET SESSION AUTHORIZATION.
    Role,
    /// Anything else the session cannot move.
    Other,
}

impl PinReason {
    /// Every reason, for metric series.
    pub const ALL: [PinReason; 7] = [
        PinReason::Temp,
        PinReason::Listen,
        PinReason::Prepare,
        PinReason::Cursor,
        PinReason::AdvisoryLock,
        PinReason::Role,
        PinReason::Other,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::Temp => "temp",
            PinReason::Listen => "listen",
            PinReason::Prepare => "prepare",
            PinReason::Cursor => "cursor",
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::Role => "role",
            PinReason::Other => "other",
        }
    }

    /// Its position in [`PinReason::ALL`].
    pub fn index(self) -> usize {
        PinReason::ALL
            .iter()
            .position(|r| *r == self)
            .expect("listed")
    }

    /// The reason a statement the router says pins would pin for, read
    /// from its text.
    pub fn of_sql(sql: &str) -> PinReason {
        let (rest, _) = crate::router::scan::skip_leading_comments(sql);
        let starts = |word: &str| {
            rest.as_bytes()
                .get(..word.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(word.as_bytes()))
        };
        if starts("listen") {
            PinReason::Listen
        } else if starts("prepare") {
            PinReason::Prepare
        } else if starts("declare") {
            PinReason::Cursor
        } else if contains_ignoring_case(sql, "advisory") {
            PinReason::AdvisoryLock
        } else if contains_ignoring_case(sql, "temp") {
            PinReason::Temp
        } else if contains_ignoring_case(sql, "role")
            || contains_ignoring_case(sql, "authorization")
        {
            PinReason::Role
        } else {
            PinReason::Other
        }
    }
}

/// Pinned sessions now, by reason.
#[derive(Debug, Default)]
pub struct PinCounts {
    total: AtomicUsize,
}

impl PinCounts {
    /// Takes a pin unless `cap` sessions hold one already.
    pub fn try_pin(&self, cap: usize) -> bool {
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a pin back.
    pub fn unpin(&self) {
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    /// Pins held now.
    pub fn count(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_text() {
        assert_eq!(PinReason::of_sql("LISTEN x"), PinReason::Listen);
        assert_eq!(
            PinReason::of_sql("/* c */ prepare p AS SELECT 1"),
            PinReason::Prepare
        );
        assert_eq!(
            PinReason::of_sql("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            PinReason::Cursor
        );
        assert_eq!(
            PinReason::of_sql("SELECT pg_advisory_lock(1)"),
            PinReason::AdvisoryLock
        );
        assert_eq!(
            PinReason::of_sql("CREATE TEMP TABLE t (a int)"),
            PinReason::Temp
        );
        assert_eq!(PinReason::of_sql("SET ROLE admin"), PinReason::Role);
    }

    #[test]
    fn the_cap_holds() {
        let pins = PinCounts::default();
        assert!(pins.try_pin(2));
        assert!(pins.try_pin(2));
        assert!(!pins.try_pin(2));
        pins.unpin();
        assert!(pins.try_pin(2));
    }
}
