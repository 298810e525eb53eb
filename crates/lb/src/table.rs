//! A table of rows that each hold an object, found by the object's own kind, namespace and
//! name ([`ObjectKey`]) without a copy of that key beside it.
//!
//! A `HashMap<ObjectKey, Row>` keeps two more strings per object (its namespace and name,
//! already in the object's metadata) and 56 bytes of key in every slot: at 10,000 Services
//! and their slices, the agent's tables of rows spent about 300 bytes per Service on them.

use std::fmt;
use std::hash::BuildHasher;

use ciliate_model::k8s::{Kind, Object, ObjectKey};
use hashbrown::HashTable;

/// What a row of an [`ObjectTable`] is keyed by: the object it holds.
pub trait ObjectRow {
    /// The object whose kind, namespace and name are the row's key.
    fn object(&self) -> &Object;
}

/// Rows keyed by their object's [`ObjectKey`]; at most one row per key.
pub struct ObjectTable<T> {
    rows: HashTable<T>,
    hasher: foldhash::fast::RandomState,
}

impl<T> Default for ObjectTable<T> {
    fn default() -> Self {
        Self {
            rows: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T: Clone> Clone for ObjectTable<T> {
    fn clone(&self) -> Self {
        Self {
            rows: self.rows.clone(),
            hasher: self.hasher.clone(),
        }
    }
}

impl<T: ObjectRow + fmt::Debug> fmt::Debug for ObjectTable<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.rows.iter()).finish()
    }
}

fn parts(o: &Object) -> (Kind, &str, &str) {
    let m = o.metadata();
    (o.kind(), &m.namespace, &m.name)
}

fn key_parts(k: &ObjectKey) -> (Kind, &str, &str) {
    (k.kind, &k.namespace, &k.name)
}

impl<T: ObjectRow> ObjectTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    fn hash(&self, parts: (Kind, &str, &str)) -> u64 {
        self.hasher.hash_one(parts)
    }

    /// How many rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The row of `key`.
    pub fn get(&self, key: &ObjectKey) -> Option<&T> {
        let want = key_parts(key);
        self.rows
            .find(self.hash(want), |r| parts(r.object()) == want)
    }

    /// The row holding an object of the same kind, namespace and name as `o`.
    pub fn get_like(&self, o: &Object) -> Option<&T> {
        let want = parts(o);
        self.rows
            .find(self.hash(want), |r| parts(r.object()) == want)
    }

    /// Room for `additional` more rows without growing.
    pub fn reserve(&mut self, additional: usize) {
        let hasher = &self.hasher;
        self.rows
            .reserve(additional, |r| hasher.hash_one(parts(r.object())));
    }

    /// Whether `key` has a row.
    pub fn contains_key(&self, key: &ObjectKey) -> bool {
        self.get(key).is_some()
    }

    /// Puts `row` in the place of its object's key; the row it replaced.
    pub fn insert(&mut self, row: T) -> Option<T> {
        let hasher = &self.hasher;
        let h = hasher.hash_one(parts(row.object()));
        match self.rows.entry(
            h,
            |r| parts(r.object()) == parts(row.object()),
            |r| hasher.hash_one(parts(r.object())),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut e) => {
                Some(std::mem::replace(e.get_mut(), row))
            }
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(row);
                None
            }
        }
    }

    /// Removes the row of `key`; it.
    pub fn remove(&mut self, key: &ObjectKey) -> Option<T> {
        let want = key_parts(key);
        let h = self.hash(want);
        self.rows
            .find_entry(h, |r| parts(r.object()) == want)
            .ok()
            .map(|e| e.remove().0)
    }

    /// Removes the row holding an object of the same kind, namespace and name as `o`; it.
    pub fn remove_like(&mut self, o: &Object) -> Option<T> {
        let want = parts(o);
        let h = self.hash(want);
        self.rows
            .find_entry(h, |r| parts(r.object()) == want)
            .ok()
            .map(|e| e.remove().0)
    }

    /// The rows, in no order.
    pub fn iter(&self) -> hashbrown::hash_table::Iter<'_, T> {
        self.rows.iter()
    }

    /// Gives back the table's room once under a quarter of it is used (after most rows went:
    /// a table keeps its room when emptied), as [`crate::balancer::shrink`] does.
    pub fn shrink(&mut self) {
        if self.rows.capacity() > 64 && self.rows.len() * 4 < self.rows.capacity() {
            let hasher = &self.hasher;
            self.rows
                .shrink_to_fit(|r| hasher.hash_one(parts(r.object())));
        }
    }
}

impl<T: ObjectRow> FromIterator<T> for ObjectTable<T> {
    /// The rows; of two with one key, the later.
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut t = Self::new();
        t.extend(iter);
        t
    }
}

impl<T: ObjectRow> Extend<T> for ObjectTable<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, iter: I) {
        let iter = iter.into_iter();
        self.reserve(iter.size_hint().0);
        for r in iter {
            self.insert(r);
        }
    }
}

impl<T> IntoIterator for ObjectTable<T> {
    type Item = T;
    type IntoIter = hashbrown::hash_table::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.rows.into_iter()
    }
}

impl<'a, T> IntoIterator for &'a ObjectTable<T> {
    type Item = &'a T;
    type IntoIter = hashbrown::hash_table::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.rows.iter()
    }
}

impl ObjectRow for std::sync::Arc<Object> {
    fn object(&self) -> &Object {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ciliate_model::k8s::{ObjectMeta, Service};
    use std::sync::Arc;

    fn svc(ns: &str, name: &str, ip: &str) -> Arc<Object> {
        let mut s = Service {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: ns.into(),
                ..ObjectMeta::default()
            },
            ..Service::default()
        };
        s.spec.cluster_ip = ip.into();
        Arc::new(Object::Service(s))
    }

    #[test]
    fn rows_are_found_replaced_and_removed_by_their_objects_key() {
        let mut t: ObjectTable<Arc<Object>> = ObjectTable::new();
        assert!(t.insert(svc("a", "web", "10.0.0.1")).is_none());
        assert!(t.insert(svc("b", "web", "10.0.0.2")).is_none());
        let old = t.insert(svc("a", "web", "10.0.0.3")).expect("replaced");
        assert_eq!(old.key(), svc("a", "web", "").key());
        assert_eq!(t.len(), 2);
        let k = svc("a", "web", "").key();
        let Some(Object::Service(s)) = t.get(&k).map(|r| r.as_ref()) else {
            panic!("found")
        };
        assert_eq!(s.spec.cluster_ip, "10.0.0.3");
        assert!(t.get_like(&svc("b", "web", "")).is_some());
        let mut other_kind = k.clone();
        other_kind.kind = Kind::Endpoints;
        assert!(!t.contains_key(&other_kind));
        assert!(t.remove(&k).is_some());
        assert!(t.remove(&k).is_none());
        assert!(t.remove_like(&svc("b", "web", "")).is_some());
        t.insert(svc("b", "web", ""));
        assert_eq!(t.len(), 1);
        for i in 0..1000 {
            t.insert(svc("c", &format!("s{i}"), ""));
        }
        for i in 0..1000 {
            t.remove(&svc("c", &format!("s{i}"), "").key());
        }
        t.shrink();
        assert_eq!(t.iter().count(), 1);
        assert!(t.rows.capacity() < 64, "room given back");
    }
}
