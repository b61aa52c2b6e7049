//! The prepared statements living on one server connection, bounded: the
//! least recently used is closed when a new one needs the room.

use std::sync::Arc;

/// How many statements one server connection keeps.
pub const MAX_PREPARED_PER_CONNECTION: usize = 256;

/// Server-side statement names prepared on a connection.
#[derive(Debug, Default)]
pub struct PreparedSet {
    /// (foldhash: looked up on every Bind; names are the proxy's own)
    names: foldhash::HashMap<Arc<str>, u64>,
    tick: u64,
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

    /// Forgets everything (DEALLOCATE ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        self.names.clear();
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
}
