//! Parse results by statement text, bounded.
//!
//! Applications send the same few hundred statement texts again and again
//! (bind parameters keep values out of the text), so parsing once per text
//! takes pg_query off the hot path. Texts with inlined values are cached
//! by their shape ([`crate::shape`]); the bounds keep memory flat when
//! those are new every time anyway: the oldest entry is dropped first, on
//! a count of entries and on their estimated bytes, so a stream of huge
//! texts (a 1 MB multi-row INSERT each) cannot hold gigabytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Entries kept by default: far more distinct texts than an application
/// uses, few enough (each a parse tree of a few KiB) to stay small.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Estimated bytes kept by default, per cache: 4096 entries of 8 KiB.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

pub(crate) struct ParseCache<T> {
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    /// Each entry with its estimated weight in bytes.
    map: HashMap<String, (Arc<T>, usize)>,
    order: VecDeque<String>,
    pub hits: u64,
    pub misses: u64,
}

impl<T> ParseCache<T> {
    pub fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            max_bytes,
            bytes: 0,
            map: HashMap::new(),
            order: VecDeque::new(),
            hits: 0,
            misses: 0,
        }
    }

    pub fn get(&mut self, text: &str) -> Option<Arc<T>> {
        let found = self.map.get(text).map(|(v, _)| v.clone());
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    /// Keeps `value` for `text`; `weight` is its estimated size in bytes
    /// besides the text. One heavier than the whole budget is not kept.
    pub fn insert(&mut self, text: &str, value: Arc<T>, weight: usize) {
        let weight = weight + 2 * text.len();
        if weight > self.max_bytes {
            return;
        }
        match self.map.insert(text.to_string(), (value, weight)) {
            Some((_, old)) => self.bytes -= old,
            None => self.order.push_back(text.to_string()),
        }
        self.bytes += weight;
        while self.map.len() > self.capacity || self.bytes > self.max_bytes {
            match self.order.pop_front() {
                Some(old) => {
                    if let Some((_, w)) = self.map.remove(&old) {
                        self.bytes -= w;
                    }
                }
                None => break,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_entry_goes_first_when_full() {
        let mut c = ParseCache::new(2, 1 << 20);
        c.insert("a", Arc::new(1), 10);
        c.insert("b", Arc::new(2), 10);
        c.insert("c", Arc::new(3), 10);
        assert_eq!(c.len(), 2);
        assert!(c.get("a").is_none());
        assert_eq!(c.get("c").as_deref(), Some(&3));
        assert_eq!((c.hits, c.misses), (1, 1));
    }

    #[test]
    fn heavy_entries_push_out_old_ones_by_bytes() {
        let mut c = ParseCache::new(100, 1000);
        c.insert("a", Arc::new(1), 400);
        c.insert("b", Arc::new(2), 400);
        // 600 more: over the budget, so the oldest goes.
        c.insert("c", Arc::new(3), 400);
        assert_eq!(c.len(), 2);
        assert!(c.get("a").is_none());
        // Heavier than the whole budget: not kept, nothing dropped for it.
        c.insert("huge", Arc::new(4), 5000);
        assert!(c.get("huge").is_none());
        assert_eq!(c.len(), 2);
        // Replacing an entry counts its new weight, not both.
        c.insert("c", Arc::new(5), 100);
        c.insert("d", Arc::new(6), 400);
        assert_eq!(c.len(), 3);
    }
}
