//! Any text as SQL: the router must answer without panicking, and a
//! statement that starts with a write keyword never goes to a replica.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use pgsplit::router::{Target, classify_text};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else { return };
    let route = classify_text(sql, &HashSet::new());
    let lower = sql.trim_start().to_ascii_lowercase();
    if ["insert ", "update ", "delete ", "create ", "drop "].iter().any(|k| lower.starts_with(k)) {
        assert_eq!(route.target, Target::Primary, "{sql:?}");
    }
});
