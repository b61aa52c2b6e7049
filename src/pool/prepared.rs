//! The prepared statements living on one server connection, bounded: the
//! least recently used is closed when a new one needs the room, and one
//! the server reports stale (a migration changed its result type) is
//! closed before its name is prepared again.

use std::sync::Arc;

/// How many statements one server connection keeps.
pub const MAX_PREPARED_PER_CONNECTION: usize = 256;

/// Server-side statement names prepared on a connection.
#[derive(Debug, Default)]
pub struct PreparedSet {
    /// (foldhash: looked up on every Bind; names are the proxy's own)
    names: foldhash::HashMap<Arc<str>, u64>,
    tick: u64,
    /// Names the server still holds but that must not be used: closed
    /// before the connection's next batch (see [`PreparedSet::mark_stale`]).
    stale: Vec<Arc<str>>,
}

impl PreparedSet {
    /// Whether `name` is prepared; marks it used.
    pub fn touch(&mut self, name: &str) -> bool {
        self.tick += 1;
        match self.names.get_mut(name) {
            Some(t) => {
                *t = self.tick;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared; returns the name to close to make room.
    pub fn insert(&mut self, name: Arc<str>) -> Option<Arc<str>> {
        self.tick += 1;
        let evicted =
            if self.names.len() >= MAX_PREPARED_PER_CONNECTION && !self.names.contains_key(&name) {
                let oldest = self
                    .names
                    .iter()
                    .min_by_key(|(_, t)| **t)
                    .map(|(n, _)| n.clone());
                if let Some(n) = &oldest {
                    self.names.remove(n);
                }
                oldest
            } else {
                None
            };
        self.names.insert(name, self.tick);
        evicted
    }

    /// Forgets `name` (its Parse failed or was skipped).
    pub fn remove(&mut self, name: &str) {
        self.names.remove(name);
    }

    /// Records `name` again without evicting (its Close was skipped).
    pub fn restore(&mut self, name: Arc<str>) {
        self.names.insert(name, 0);
    }

    /// The server refused to run `name` as prepared (0A000, "cached plan
    /// must not change result type": its tables changed shape). It is no
    /// longer prepared here, and it is closed before the next batch, so a
    /// new Parse of the same text under the same name starts afresh.
    pub fn mark_stale(&mut self, name: Arc<str>) {
        self.names.remove(&name);
        if !self.stale.contains(&name) {
            self.stale.push(name);
        }
    }

    /// The stale names to close now (see [`PreparedSet::mark_stale`]).
    pub fn take_stale(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.stale)
    }

    /// Whether any name waits to be closed.
    pub fn has_stale(&self) -> bool {
        !self.stale.is_empty()
    }

    /// Forgets everything (DEALLOCATE ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        self.names.clear();
        self.stale.clear();
    }

    /// How many are prepared.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut set = PreparedSet::default();
        for i in 0..MAX_PREPARED_PER_CONNECTION {
            assert_eq!(set.insert(format!("s{i}").into()), None);
        }
        assert!(set.touch("s0"));
        assert_eq!(set.insert("new".into()).as_deref(), Some("s1"));
        assert_eq!(set.len(), MAX_PREPARED_PER_CONNECTION);
        assert!(!set.touch("s1"));
        assert!(set.touch("new"));
    }

    #[test]
    fn a_stale_name_is_unprepared_and_closed_once() {
        let mut set = PreparedSet::default();
        set.insert("a".into());
        set.mark_stale("a".into());
        set.mark_stale("a".into());
        assert!(!set.touch("a"));
        assert!(set.has_stale());
        assert_eq!(set.take_stale(), vec![Arc::<str>::from("a")]);
        assert!(!set.has_stale());
    }
}
