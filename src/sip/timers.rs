//! One table of wake-up times for many machines (client and server
//! transactions, registrations, resent answers, the keepalive), kept in
//! time order: the next wake-up is the first entry, and a timeout touches
//! only what is due — nothing scans every transaction. Each machine keeps
//! its own small timer set (as in `transaction`); this table holds the
//! earliest instant of each, refreshed whenever that machine changes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

#[derive(Debug)]
pub struct TimerTable<K: Ord + Clone> {
    by_key: BTreeMap<K, Instant>,
    by_time: BTreeSet<(Instant, K)>,
}

impl<K: Ord + Clone> Default for TimerTable<K> {
    fn default() -> Self {
        TimerTable {
            by_key: BTreeMap::new(),
            by_time: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> TimerTable<K> {
    /// `key` next wakes at `at` (None: it has nothing to wait for).
    pub fn set(&mut self, key: K, at: Option<Instant>) {
        if let Some(old) = self.by_key.remove(&key) {
            self.by_time.remove(&(old, key.clone()));
        }
        if let Some(at) = at {
            self.by_key.insert(key.clone(), at);
            self.by_time.insert((at, key));
        }
    }

    /// The earliest wake-up of all.
    pub fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Takes every key due at `now`, earliest first; each must `set` its
    /// next wake-up again once handled.
    pub fn take_due(&mut self, now: Instant) -> Vec<K> {
        let mut due = Vec::new();
        while let Some((at, _)) = self.by_time.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.by_time.pop_first() {
                self.by_key.remove(&key);
                due.push(key);
            }
        }
        due
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn earliest_first_and_only_what_is_due() {
        let t0 = Instant::now();
        let at = |ms| Some(t0 + Duration::from_millis(ms));
        let mut table = TimerTable::default();
        table.set("b", at(20));
        table.set("a", at(10));
        table.set("c", at(30));
        assert_eq!(table.next(), at(10));
        // Moving a key replaces its old time.
        table.set("a", at(40));
        assert_eq!(table.next(), at(20));
        assert_eq!(
            table.take_due(t0 + Duration::from_millis(30)),
            vec!["b", "c"]
        );
        assert_eq!(table.len(), 1);
        table.set("a", None);
        assert!(table.is_empty() && table.next().is_none());
        assert!(table.take_due(t0 + Duration::from_secs(60)).is_empty());
    }
}
