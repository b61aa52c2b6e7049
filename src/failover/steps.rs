//! The step log of a failover: each step's name, outcome and duration.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Report;

/// One step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// What it did.
    pub name: String,
    /// It worked (or, in a drill, is planned).
    pub ok: bool,
    /// How long it took.
    pub ms: f64,
    /// Why it failed, or a note.
    pub detail: Option<String>,
}

/// The steps so far.
#[derive(Debug, Default)]
pub struct Steps(Vec<Step>);

impl Steps {
    /// Runs and records a step.
    pub async fn run<T, F: Future<Output = Result<T, String>>>(
        &mut self,
        name: &str,
        step: F,
    ) -> Result<T, String> {
        let started = Instant::now();
        let result = step.await;
        let detail = result.as_ref().err().cloned();
        self.record(name, started.elapsed(), result.is_ok(), detail);
        result
    }

    /// Records a step that took no waiting.
    pub fn record(&mut self, name: &str, took: Duration, ok: bool, detail: Option<String>) {
        self.0.push(Step {
            name: name.into(),
            ok,
            ms: took.as_secs_f64() * 1000.0,
            detail,
        });
    }

    /// Records what a drill would do.
    pub fn plan(&mut self, name: &str) {
        self.record(name, Duration::ZERO, true, Some("would run (drill)".into()));
    }

    /// Completes a drill's report: the steps it would run, planned; it
    /// would be possible.
    pub fn drilled(mut self, mut report: Report, planned: &[&str]) -> Report {
        for name in planned {
            self.plan(name);
        }
        report.ok = true;
        self.finish(report, None)
    }

    /// Completes the report.
    pub fn finish(self, mut report: Report, error: Option<String>) -> Report {
        report.steps = self.0;
        if error.is_some() {
            report.ok = false;
        }
        report.error = error;
        report
    }
}
