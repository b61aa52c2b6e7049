//! Replication lag from the monitor's own samples, pure and clock-free
//! (times are passed in) so it can be tested exactly.
//!
//! Bytes: primary position minus replica replay position, from samples
//! of one poll round. Seconds: how long ago the primary's position passed
//! the replica's replay position, from the history of primary positions
//! this monitor has seen. So a caught-up replica of an idle primary reads
//! 0, and a paused or disconnected replica's lag keeps growing for as long
//! as it stays behind (never a false 0).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Primary WAL positions as the monitor saw them advance.
#[derive(Debug, Default)]
pub struct History {
    points: VecDeque<(Instant, u64)>,
}

impl History {
    /// Records the primary's position at `at`, keeping `window` of history.
    pub fn record(&mut self, at: Instant, lsn: u64, window: Duration) {
        if self.points.back().is_none_or(|&(_, last)| lsn > last) {
            self.points.push_back((at, lsn));
        }
        while self.points.len() > 1 && at.duration_since(self.points[0].0) > window {
            self.points.pop_front();
        }
    }

    /// The latest primary position.
    pub fn latest(&self) -> Option<u64> {
        self.points.back().map(|&(_, l)| l)
    }

    /// When the primary first went past `replay`; `None` when it has not
    /// (the replica is caught up). Positions older than the history count
    /// from its oldest point.
    pub fn passed(&self, replay: u64) -> Option<Instant> {
        if self.latest()? <= replay {
            return None;
        }
        self.points
            .iter()
            .find(|&&(_, lsn)| lsn > replay)
            .map(|&(t, _)| t)
    }
}

/// What the monitor keeps per replica between polls.
#[derive(Debug, Default, Clone)]
pub struct ReplicaTrack {
    replay: Option<u64>,
    passed_at: Option<Instant>,
    last_receiving: Option<Instant>,
    /// Whether reads may go there (with hysteresis).
    pub eligible: bool,
}

/// Lag of one replica at one poll.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// Seconds behind.
    pub seconds: f64,
    /// WAL bytes behind.
    pub bytes: u64,
}

/// The limits of `lag:`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `max_lag`.
    pub max_seconds: f64,
    /// `max_lag_bytes`.
    pub max_bytes: u64,
}

impl Limits {
    /// Freshness from 1 (no lag) down to 0 (at a limit); the worse of the
    /// two measures wins.
    pub fn freshness(&self, lag: Lag) -> f64 {
        let by_time = 1.0 - lag.seconds / self.max_seconds;
        let by_bytes = 1.0 - lag.bytes as f64 / self.max_bytes as f64;
        by_time.min(by_bytes).clamp(0.0, 1.0)
    }
}

impl ReplicaTrack {
    /// A replica not yet judged: eligible until a poll says otherwise.
    pub fn admitted() -> ReplicaTrack {
        ReplicaTrack {
            eligible: true,
            ..ReplicaTrack::default()
        }
    }

    /// Updates from one poll: the replica's replay position and whether
    /// its WAL receiver streams, against the primary's history.
    pub fn observe(
        &mut self,
        now: Instant,
        replay: u64,
        receiving: bool,
        history: &History,
    ) -> Lag {
        if self.replay != Some(replay) || self.passed_at.is_none() {
            self.passed_at = history.passed(replay);
            self.replay = Some(replay);
        }
        if receiving || self.last_receiving.is_none() {
            self.last_receiving = Some(now);
        }
        let mut seconds = self
            .passed_at
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        if !receiving {
            // Nothing streams in: whatever the primary does is not arriving.
            let since = self
                .last_receiving
                .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
            seconds = seconds.max(since);
        }
        let bytes = history.latest().map_or(0, |p| p.saturating_sub(replay));
        Lag { seconds, bytes }
    }

    /// Applies the limits with hysteresis: out at a limit, back in only
    /// under half of both.
    pub fn judge(&mut self, lag: Lag, limits: Limits) -> bool {
        let over = lag.seconds >= limits.max_seconds || lag.bytes >= limits.max_bytes;
        let clearly_under =
            lag.seconds < limits.max_seconds / 2.0 && lag.bytes < limits.max_bytes / 2;
        if self.eligible && over {
            self.eligible = false;
        } else if !self.eligible && clearly_under {
            self.eligible = true;
        }
        self.eligible
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(600);

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn idle_primary_caught_up_replica_reads_zero() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.record(t0, 100, W);
        let mut r = ReplicaTrack::default();
        for i in 1..10 {
            h.record(at(t0, i * 250), 100, W);
            let lag = r.observe(at(t0, i * 250), 100, true, &h);
            assert_eq!(
                lag,
                Lag {
                    seconds: 0.0,
                    bytes: 0
                }
            );
        }
    }

    #[test]
    fn paused_replica_lag_keeps_growing() {
        let t0 = Instant::now();
        let mut h = History::default();
        let mut r = ReplicaTrack::default();
        h.record(t0, 100, W);
        r.observe(t0, 100, true, &h);
        // the primary moves on at 1 s, the replica stays at 100
        h.record(at(t0, 1000), 200, W);
        let lag = r.observe(at(t0, 1000), 100, true, &h);
        assert_eq!(lag.seconds, 0.0);
        assert_eq!(lag.bytes, 100);
        // then the primary goes idle: the lag still grows
        for s in 2..6u64 {
            h.record(at(t0, s * 1000), 200, W);
            let lag = r.observe(at(t0, s * 1000), 100, true, &h);
            assert_eq!(lag.seconds, (s - 1) as f64);
        }
        // the replica catches up
        let lag = r.observe(at(t0, 6000), 200, true, &h);
        assert_eq!(
            lag,
            Lag {
                seconds: 0.0,
                bytes: 0
            }
        );
    }

    #[test]
    fn replay_behind_history_counts_from_when_primary_passed_it() {
        let t0 = Instant::now();
        let mut h = History::default();
        for i in 0..10u64 {
            h.record(at(t0, i * 1000), 100 + i * 10, W);
        }
        let mut r = ReplicaTrack::default();
        // replay 135: the primary passed it at 4 s (position 140)
        let lag = r.observe(at(t0, 9000), 135, true, &h);
        assert_eq!(lag.seconds, 5.0);
        assert_eq!(lag.bytes, 190 - 135);
    }

    #[test]
    fn a_silent_wal_receiver_is_not_fresh() {
        let t0 = Instant::now();
        let mut h = History::default();
        h.record(t0, 100, W);
        let mut r = ReplicaTrack::default();
        r.observe(t0, 100, true, &h);
        h.record(at(t0, 3000), 100, W);
        // last seen streaming at 0 s: nothing is known to have arrived since
        let lag = r.observe(at(t0, 3000), 100, false, &h);
        assert_eq!(lag.seconds, 3.0);
        let lag = r.observe(at(t0, 7000), 100, false, &h);
        assert_eq!(lag.seconds, 7.0);
        // streaming again and caught up: fresh
        let lag = r.observe(at(t0, 8000), 100, true, &h);
        assert_eq!(lag.seconds, 0.0);
    }

    #[test]
    fn freshness_and_hysteresis() {
        let limits = Limits {
            max_seconds: 10.0,
            max_bytes: 1000,
        };
        assert_eq!(
            limits.freshness(Lag {
                seconds: 0.0,
                bytes: 0
            }),
            1.0
        );
        assert_eq!(
            limits.freshness(Lag {
                seconds: 5.0,
                bytes: 0
            }),
            0.5
        );
        assert_eq!(
            limits.freshness(Lag {
                seconds: 1.0,
                bytes: 800
            }),
            1.0 - 0.8
        );
        assert_eq!(
            limits.freshness(Lag {
                seconds: 20.0,
                bytes: 0
            }),
            0.0
        );
        let mut r = ReplicaTrack {
            eligible: true,
            ..ReplicaTrack::default()
        };
        assert!(r.judge(
            Lag {
                seconds: 9.0,
                bytes: 0
            },
            limits
        ));
        assert!(!r.judge(
            Lag {
                seconds: 10.0,
                bytes: 0
            },
            limits
        ));
        assert!(
            !r.judge(
                Lag {
                    seconds: 6.0,
                    bytes: 0
                },
                limits
            ),
            "not clearly under yet"
        );
        assert!(r.judge(
            Lag {
                seconds: 4.0,
                bytes: 0
            },
            limits
        ));
    }
}
