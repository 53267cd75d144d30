//! The durable metrics spool (metrics.md §7.4): every datum waits here, in the agent's redb store,
//! from collection until CloudWatch accepted it. It survives restarts and kill -9, keeps each
//! datum's original timestamp, and is bounded by count (oldest dropped first) and by age.
//!
//! Layout: one store entry per (collection pass, namespace), keyed by zero-padded timestamp and a
//! sequence number so keys sort oldest first. Each datum inside an entry carries a small id, so an
//! acknowledgement removes exactly the datums that were sent even if overflow trimmed the entry
//! meanwhile. Only an index (key, namespace, timestamp, count) is kept in memory; datums are read
//! back from the store when a request is built.
//!
//! Every mutation is one durable store transaction. This module never talks to CloudWatch and
//! never decides what to send first beyond [`Spool::flush_order`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::datum::Datum;
use crate::store::{self, Store, Table};

/// The spool's table in the store.
pub const SPOOL: Table = Table("metrics_spool");
/// Metrics bookkeeping (process starts).
pub const META: Table = Table("metrics_meta");

/// Spool errors: the store failed. Not retryable inside the agent (broken disk).
#[derive(Debug, thiserror::Error)]
#[error("metrics spool: {0}")]
pub struct Error(#[from] pub store::Error);

impl Error {
    /// A failing store does not heal by itself.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// A datum reference: (entry key, datum id).
pub type DatumRef = (String, u32);

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(rename = "ns")]
    namespace: String,
    #[serde(rename = "ts")]
    timestamp_ms: i64,
    #[serde(rename = "d")]
    datums: Vec<(u32, Datum)>,
}

/// An entry as [`Spool::open`] reads it: the datums are counted, never materialised, so opening a
/// full spool does not allocate every datum at once.
#[derive(Deserialize)]
struct EntryHead {
    #[serde(rename = "ns")]
    namespace: String,
    #[serde(rename = "ts")]
    timestamp_ms: i64,
    #[serde(rename = "d")]
    datums: Count,
}

/// The length of a JSON array, skipping its elements.
struct Count(usize);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Count;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Count, A::Error> {
                let mut n = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(Count(n))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Meta {
    namespace: String,
    timestamp_ms: i64,
    len: usize,
}

/// Drops by cause, cumulative for this process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// Dropped because the spool was full.
    pub overflow: u64,
    /// Dropped because they grew older than the age cap.
    pub age: u64,
}

/// The spool. Not shared: the pipeline owns it behind one mutex.
pub struct Spool {
    store: Store,
    index: BTreeMap<String, Meta>,
    total: usize,
    max_datums: usize,
    max_age_ms: i64,
    seq: u64,
    drops: Drops,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("entries", &self.index.len())
            .field("datums", &self.total)
            .finish()
    }
}

fn key(timestamp_ms: i64, seq: u64) -> String {
    format!("{:015}-{seq:012}", timestamp_ms.max(0))
}

fn seq_of(key: &str) -> u64 {
    key.rsplit('-')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Spool {
    /// Opens the spool in `store`, rebuilding the index from what a previous process left.
    pub fn open(store: Store, max_datums: usize, max_age_ms: i64) -> Result<Spool, Error> {
        let entries: Vec<(String, EntryHead)> = store.list(SPOOL)?;
        let mut index = BTreeMap::new();
        let mut total = 0;
        let mut seq = 0;
        for (k, e) in entries {
            seq = seq.max(seq_of(&k) + 1);
            total += e.datums.0;
            index.insert(
                k,
                Meta {
                    namespace: e.namespace,
                    timestamp_ms: e.timestamp_ms,
                    len: e.datums.0,
                },
            );
        }
        Ok(Spool {
            store,
            index,
            total,
            max_datums: max_datums.max(1),
            max_age_ms,
            seq,
            drops: Drops::default(),
        })
    }

    /// Datums waiting.
    pub fn depth(&self) -> usize {
        self.total
    }

    /// Drops so far.
    pub fn drops(&self) -> Drops {
        self.drops
    }

    /// Timestamp of the oldest datum waiting.
    pub fn oldest_ms(&self) -> Option<i64> {
        self.index.values().map(|m| m.timestamp_ms).min()
    }

    /// Adds one pass's datums of one namespace durably, then enforces the count bound by dropping
    /// the oldest datums (in the same transaction). Returns how many were dropped.
    pub fn push(
        &mut self,
        namespace: &str,
        timestamp_ms: i64,
        datums: Vec<Datum>,
    ) -> Result<u64, Error> {
        if datums.is_empty() {
            return Ok(0);
        }
        let k = key(timestamp_ms, self.seq);
        let entry = Entry {
            namespace: namespace.to_owned(),
            timestamp_ms,
            datums: datums
                .into_iter()
                .enumerate()
                .map(|(i, d)| (i as u32, d))
                .collect(),
        };
        let len = entry.datums.len();
        let mut index = self.index.clone();
        index.insert(
            k.clone(),
            Meta {
                namespace: entry.namespace.clone(),
                timestamp_ms,
                len,
            },
        );
        let mut total = self.total + len;
        let mut dropped = 0u64;
        self.store.transaction(|tx| {
            tx.put(SPOOL, &k, &entry)?;
            while total > self.max_datums {
                let Some((oldest, meta)) = index.iter().next().map(|(k, m)| (k.clone(), m.clone()))
                else {
                    break;
                };
                let excess = total - self.max_datums;
                if meta.len <= excess {
                    tx.remove(SPOOL, &oldest)?;
                    index.remove(&oldest);
                    total -= meta.len;
                    dropped += meta.len as u64;
                } else {
                    let mut e: Entry = match tx.get(SPOOL, &oldest)? {
                        Some(e) => e,
                        None => {
                            index.remove(&oldest);
                            continue;
                        }
                    };
                    e.datums.drain(..excess);
                    tx.put(SPOOL, &oldest, &e)?;
                    if let Some(m) = index.get_mut(&oldest) {
                        m.len = e.datums.len();
                    }
                    total -= excess;
                    dropped += excess as u64;
                }
            }
            Ok(())
        })?;
        self.seq += 1;
        self.index = index;
        self.total = total;
        self.drops.overflow += dropped;
        Ok(dropped)
    }

    /// Drops every entry older than the age cap at `now_ms`. Returns how many datums went.
    pub fn expire(&mut self, now_ms: i64) -> Result<u64, Error> {
        let cutoff = now_ms - self.max_age_ms;
        let old: Vec<(String, usize)> = self
            .index
            .iter()
            .filter(|(_, m)| m.timestamp_ms < cutoff)
            .map(|(k, m)| (k.clone(), m.len))
            .collect();
        if old.is_empty() {
            return Ok(0);
        }
        self.store.transaction(|tx| {
            for (k, _) in &old {
                tx.remove(SPOOL, k)?;
            }
            Ok(())
        })?;
        let mut n = 0;
        for (k, len) in old {
            self.index.remove(&k);
            self.total -= len;
            n += len as u64;
        }
        self.drops.age += n;
        Ok(n)
    }

    /// Entry keys in flush order (metrics.md §7.4): the newest pass first (every namespace of
    /// it), then the backlog oldest first.
    pub fn flush_order(&self) -> Vec<String> {
        let Some(newest) = self.index.values().map(|m| m.timestamp_ms).max() else {
            return Vec::new();
        };
        let (fresh, backlog): (Vec<_>, Vec<_>) = self
            .index
            .iter()
            .partition(|(_, m)| m.timestamp_ms == newest);
        fresh
            .into_iter()
            .chain(backlog)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The namespace of an entry.
    pub fn namespace_of(&self, key: &str) -> Option<&str> {
        self.index.get(key).map(|m| m.namespace.as_str())
    }

    /// The datums of an entry with their ids (empty when it is gone).
    pub fn load(&mut self, key: &str) -> Result<Vec<(u32, Datum)>, Error> {
        if !self.index.contains_key(key) {
            return Ok(Vec::new());
        }
        match self.store.get::<Entry>(SPOOL, key)? {
            Some(e) => Ok(e.datums),
            None => {
                // Index and store disagree (cannot happen short of a bug): trust the store.
                if let Some(m) = self.index.remove(key) {
                    self.total -= m.len;
                }
                Ok(Vec::new())
            }
        }
    }

    /// Removes the given datums durably (they were accepted, or dropped as invalid). Datums that
    /// are already gone are ignored.
    pub fn remove(&mut self, refs: &[DatumRef]) -> Result<(), Error> {
        let mut by_key: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (k, id) in refs {
            by_key.entry(k.as_str()).or_default().push(*id);
        }
        let mut new_lens: Vec<(String, usize)> = Vec::new();
        self.store.transaction(|tx| {
            for (k, ids) in &by_key {
                if !self.index.contains_key(*k) {
                    continue;
                }
                let Some(mut e) = tx.get::<Entry>(SPOOL, k)? else {
                    new_lens.push(((*k).to_owned(), 0));
                    continue;
                };
                e.datums.retain(|(id, _)| !ids.contains(id));
                if e.datums.is_empty() {
                    tx.remove(SPOOL, k)?;
                } else {
                    tx.put(SPOOL, k, &e)?;
                }
                new_lens.push(((*k).to_owned(), e.datums.len()));
            }
            Ok(())
        })?;
        for (k, len) in new_lens {
            if let Some(m) = self.index.get_mut(&k) {
                self.total = self.total - m.len + len;
                m.len = len;
                if len == 0 {
                    self.index.remove(&k);
                }
            }
        }
        Ok(())
    }
}

/// Counts this process start in the store and returns the total number of starts recorded.
pub fn record_start(store: &Store) -> Result<u64, Error> {
    Ok(store.transaction(|tx| {
        let n: u64 = tx.get(META, "process_starts")?.unwrap_or(0) + 1;
        tx.put(META, "process_starts", &n)?;
        Ok(n)
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::catalogue::Unit;

    fn d(name: &str, ts: i64) -> Datum {
        Datum::new(name, Unit::Percent, 1.0, ts, Vec::new(), false)
    }

    fn open(dir: &tempfile::TempDir, max: usize) -> Spool {
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        Spool::open(store, max, 86_400_000).unwrap()
    }

    #[test]
    fn survives_reopen_with_timestamps_and_order() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = open(&dir, 100);
            s.push("CWAgent", 1_000, vec![d("a", 1_000), d("b", 1_000)])
                .unwrap();
            s.push("CWAgent", 2_000, vec![d("a", 2_000)]).unwrap();
            s.push("System/Linux", 2_000, vec![d("L", 2_000)]).unwrap();
            s.push("CWAgent", 3_000, vec![d("a", 3_000)]).unwrap();
        }
        let mut s = open(&dir, 100);
        assert_eq!(s.depth(), 5);
        let order: Vec<i64> = s
            .flush_order()
            .iter()
            .map(|k| s.load(k).unwrap()[0].1.timestamp_ms)
            .collect();
        assert_eq!(
            order,
            [3_000, 1_000, 2_000, 2_000],
            "newest first, then oldest first"
        );
        // New pushes after a reopen sort after the old ones with the same timestamp.
        s.push("CWAgent", 3_000, vec![d("c", 3_000)]).unwrap();
        assert_eq!(s.flush_order().len(), 5);
        assert_eq!(s.oldest_ms(), Some(1_000));
    }

    #[test]
    fn overflow_drops_the_oldest_datums_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir, 5);
        s.push("N", 1, vec![d("a", 1), d("b", 1), d("c", 1)])
            .unwrap();
        s.push("N", 2, vec![d("d", 2), d("e", 2)]).unwrap();
        let dropped = s.push("N", 3, vec![d("f", 3), d("g", 3)]).unwrap();
        assert_eq!(dropped, 2);
        assert_eq!(s.depth(), 5);
        let k = s.flush_order();
        let oldest: Vec<String> = s
            .load(&k[1])
            .unwrap()
            .into_iter()
            .map(|(_, d)| d.name)
            .collect();
        assert_eq!(oldest, ["c"], "a and b went first");
        s.push("N", 4, vec![d("h", 4); 5]).unwrap();
        assert_eq!(s.depth(), 5);
        assert_eq!(s.drops().overflow, 7);
        drop(s);
        assert_eq!(open(&dir, 5).depth(), 5, "the bound holds on disk too");
    }

    #[test]
    fn remove_by_id_survives_trimming_and_age_cap_expires() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(&dir, 100);
        s.push("N", 10, vec![d("a", 10), d("b", 10), d("c", 10)])
            .unwrap();
        let k = s.flush_order()[0].clone();
        let refs: Vec<DatumRef> = s
            .load(&k)
            .unwrap()
            .iter()
            .map(|(id, _)| (k.clone(), *id))
            .collect();
        s.remove(&refs[1..2]).unwrap();
        let left: Vec<String> = s
            .load(&k)
            .unwrap()
            .into_iter()
            .map(|(_, d)| d.name)
            .collect();
        assert_eq!(left, ["a", "c"]);
        s.remove(&refs).unwrap();
        assert_eq!(s.depth(), 0);
        assert!(s.flush_order().is_empty());
        s.remove(&refs).unwrap();

        s.push("N", 1_000, vec![d("old", 1_000)]).unwrap();
        s.push("N", 90_000_000, vec![d("new", 90_000_000)]).unwrap();
        assert_eq!(s.expire(90_000_000).unwrap(), 1);
        assert_eq!(s.depth(), 1);
        assert_eq!(s.drops().age, 1);
    }

    #[test]
    fn starts_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        assert_eq!(record_start(&store).unwrap(), 1);
        assert_eq!(record_start(&store).unwrap(), 2);
    }
}
