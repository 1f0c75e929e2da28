//! Parse results by statement text, bounded.
//!
//! Applications send the same few hundred statement texts again and again
//! (bind parameters keep values out of the text), so parsing once per text
//! takes pg_query off the hot path. Texts with inlined values are cached
//! by their shape ([`crate::shape`]); the bound keeps memory flat when
//! those are new every time anyway: the oldest entry is dropped first.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Entries kept by default: far more distinct texts than an application
/// uses, few enough (each a parse tree of a few KiB) to stay small.
pub const DEFAULT_CAPACITY: usize = 4096;

pub(crate) struct ParseCache<T> {
    capacity: usize,
    map: HashMap<String, Arc<T>>,
    order: VecDeque<String>,
    pub hits: u64,
    pub misses: u64,
}

impl<T> ParseCache<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
            hits: 0,
            misses: 0,
        }
    }

    pub fn get(&mut self, text: &str) -> Option<Arc<T>> {
        let found = self.map.get(text).cloned();
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    pub fn insert(&mut self, text: &str, value: Arc<T>) {
        if self.map.insert(text.to_string(), value).is_none() {
            self.order.push_back(text.to_string());
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
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
        let mut c = ParseCache::new(2);
        c.insert("a", Arc::new(1));
        c.insert("b", Arc::new(2));
        c.insert("c", Arc::new(3));
        assert_eq!(c.len(), 2);
        assert!(c.get("a").is_none());
        assert_eq!(c.get("c").as_deref(), Some(&3));
        assert_eq!((c.hits, c.misses), (1, 1));
    }
}
