//! Key-value state stores: one redb file per task and store, every committed write also in the
//! store's compacted changelog.
//!
//! A store has three layers, read top-down:
//!
//! - `staged`: writes of the record being processed. Dropped if the record fails, so a retried or
//!   dead-lettered record leaves no trace.
//! - `batch`: writes of the records processed since the last commit, one value per key (the
//!   record cache: ten writes to one key in a commit cost one changelog record).
//! - redb: the local copy of the **committed** state only. A batch reaches redb after the commit
//!   point (see `commit.rs`), together with the changelog offset it reached (the checkpoint), in
//!   one redb transaction, so the local copy and its checkpoint never disagree. redb commits are
//!   not fsynced per batch: the changelog is the durable copy, and a local copy that loses its
//!   tail in a power cut rolls back with its checkpoint and reads a longer tail on restore.
//!
//! # Changelog entries
//!
//! A changelog record's value is an [`Entry`]: the writing batch's sequence number, the wall-clock
//! time of the write, the key's value **before** the batch (`prev`), and its new value (or a
//! deletion). The sequence number and `prev` are what make a batch atomic across keys and stores
//! without broker transactions: the commit point of batch `n` of a task is the consumer-group
//! offset commit that carries `n` in its metadata. On restore, an entry whose batch is past the
//! committed one was never committed, so the key gets its `prev` back (see `restore.rs`). A Kafka
//! tombstone (null value) is only ever written for a deletion that is already committed, so
//! compaction may drop it and the key with it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTableMetadata, TableDefinition};

use crate::error::{Error, Result};

/// Local data: key → `written_ms` (8 bytes, big-endian) + value.
const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
/// Retention index: `written_ms` (big-endian, so byte order is time order) + key → ().
const BY_TIME: TableDefinition<&[u8], ()> = TableDefinition::new("by_time");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const CHECKPOINT: &str = "changelog_offset";

/// Version byte of a v1 entry (position-tagged values of earlier releases): read as committed.
const ENTRY_V1: u8 = 1;
const ENTRY_V2: u8 = 2;
const FLAG_PREV: u8 = 1;
const FLAG_DELETED: u8 = 2;

/// One changelog record's value, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The batch that wrote it; 0 for entries of the v1 format (always committed).
    pub seq: u64,
    pub written_ms: i64,
    /// The key's committed value before the batch, `None` when the key was absent.
    pub prev: Option<Vec<u8>>,
    /// The new value, `None` for a deletion.
    pub value: Option<Vec<u8>>,
}

impl Entry {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let prev_len = self.prev.as_ref().map_or(0, |p| p.len() + 4);
        let value_len = self.value.as_ref().map_or(0, Vec::len);
        let mut out = Vec::with_capacity(18 + prev_len + value_len);
        out.push(ENTRY_V2);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.written_ms.to_be_bytes());
        let mut flags = 0;
        if self.prev.is_some() {
            flags |= FLAG_PREV;
        }
        if self.value.is_none() {
            flags |= FLAG_DELETED;
        }
        out.push(flags);
        if let Some(p) = &self.prev {
            // Values are bounded by the broker's message size, far below u32::MAX.
            out.extend_from_slice(&(p.len() as u32).to_be_bytes());
            out.extend_from_slice(p);
        }
        if let Some(v) = &self.value {
            out.extend_from_slice(v);
        }
        out
    }

    /// `None` when the bytes are not an entry this runtime wrote.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Entry> {
        let (&version, rest) = bytes.split_first()?;
        match version {
            ENTRY_V1 => decode_v1(rest),
            ENTRY_V2 => {
                let seq = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
                let written_ms = i64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
                let flags = *rest.get(16)?;
                if flags & !(FLAG_PREV | FLAG_DELETED) != 0 {
                    return None;
                }
                let mut rest = rest.get(17..)?;
                let prev = if flags & FLAG_PREV != 0 {
                    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
                    let p = rest.get(4..4 + len)?.to_vec();
                    rest = rest.get(4 + len..)?;
                    Some(p)
                } else {
                    None
                };
                let value = if flags & FLAG_DELETED != 0 {
                    if !rest.is_empty() {
                        return None;
                    }
                    None
                } else {
                    Some(rest.to_vec())
                };
                Some(Entry {
                    seq,
                    written_ms,
                    prev,
                    value,
                })
            }
            _ => None,
        }
    }
}

/// v1: `[1][has_pos][pos: topic len u16, topic, partition i32, offset i64][value]`.
fn decode_v1(rest: &[u8]) -> Option<Entry> {
    let (&has_pos, rest) = rest.split_first()?;
    let value = match has_pos {
        0 => rest,
        1 => {
            let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
            rest.get(2 + len + 12..)?
        }
        _ => return None,
    };
    Some(Entry {
        seq: 0,
        written_ms: 0,
        prev: None,
        value: Some(value.to_vec()),
    })
}

fn local_value(written_ms: i64, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + value.len());
    v.extend_from_slice(&written_ms.to_be_bytes());
    v.extend_from_slice(value);
    v
}

fn split_local(bytes: &[u8]) -> Option<(i64, &[u8])> {
    let ts = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    Some((ts, &bytes[8..]))
}

fn time_key(written_ms: i64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    // Offset by i64::MIN so that byte order is numeric order for negative times too.
    k.extend_from_slice(&((written_ms as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// A pending write: the new value (or deletion) and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Write {
    pub value: Option<Vec<u8>>,
    pub written_ms: i64,
}

/// What the commit sends to the changelog for one key.
pub(crate) struct ChangelogRecord {
    pub key: Vec<u8>,
    /// `None`: a Kafka tombstone for a deletion already committed.
    pub value: Option<Vec<u8>>,
}

/// One store of one task.
pub(crate) struct KvStore {
    pub(crate) name: String,
    pub(crate) changelog: String,
    /// Entries older than this (by write time) are deleted by [`KvStore::expired`]'s caller.
    pub(crate) retention_ms: Option<i64>,
    path: PathBuf,
    db: Database,
    batch: BTreeMap<Vec<u8>, Write>,
    staged: BTreeMap<Vec<u8>, Write>,
    /// Keys written by batches that never reached their commit point (a failed commit, or the
    /// tail of a crashed run found at restore). The changelog holds values for them that are not
    /// the committed ones, so the next commit writes their committed value again.
    dirty: BTreeSet<Vec<u8>>,
    /// Committed deletions not yet followed by a Kafka tombstone.
    tombstones: BTreeSet<Vec<u8>>,
}

impl KvStore {
    /// Opens (or creates) the store's file under `dir`.
    pub(crate) fn open(
        dir: &Path,
        name: &str,
        changelog: &str,
        retention_ms: Option<i64>,
    ) -> Result<KvStore> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(format!("{name}.redb"));
        let db = Database::create(&path).map_err(|e| Error::store(name, e))?;
        let store = KvStore {
            name: name.to_string(),
            changelog: changelog.to_string(),
            retention_ms,
            path,
            db,
            batch: BTreeMap::new(),
            staged: BTreeMap::new(),
            dirty: BTreeSet::new(),
            tombstones: BTreeSet::new(),
        };
        store.create_tables()?;
        Ok(store)
    }

    fn create_tables(&self) -> Result<()> {
        // Create every table up front so that reads never meet a missing table.
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            tx.open_table(DATA).map_err(|e| self.err(e))?;
            tx.open_table(BY_TIME).map_err(|e| self.err(e))?;
            tx.open_table(META).map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The last changelog offset the local copy includes; `None` for a fresh copy.
    pub(crate) fn checkpoint(&self) -> Result<Option<i64>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(META).map_err(|e| self.err(e))?;
        let v = t.get(CHECKPOINT).map_err(|e| self.err(e))?;
        Ok(v.map(|g| g.value()))
    }

    /// Number of committed keys (local copy).
    pub(crate) fn len(&self) -> Result<u64> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(DATA).map_err(|e| self.err(e))?;
        t.len().map_err(|e| self.err(e))
    }

    /// Empties the local copy (a checkpoint the changelog does not match): the next restore
    /// reads the whole changelog.
    pub(crate) fn wipe(&mut self) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.delete_table(DATA).map_err(|e| self.err(e))?;
        tx.delete_table(BY_TIME).map_err(|e| self.err(e))?;
        tx.delete_table(META).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        self.create_tables()?;
        self.batch.clear();
        self.staged.clear();
        self.dirty.clear();
        self.tombstones.clear();
        Ok(())
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::store(&self.name, e)
    }

    /// The committed value of `key` (local copy only).
    pub(crate) fn committed(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(DATA).map_err(|e| self.err(e))?;
        let v = t.get(key).map_err(|e| self.err(e))?;
        match v {
            None => Ok(None),
            Some(g) => match split_local(g.value()) {
                Some((_, v)) => Ok(Some(v.to_vec())),
                None => Err(self.err(format!("undecodable local value for key {key:?}"))),
            },
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(w) = self.staged.get(key).or_else(|| self.batch.get(key)) {
            return Ok(w.value.clone());
        }
        self.committed(key)
    }

    pub(crate) fn put(&mut self, key: &[u8], value: &[u8], now_ms: i64) {
        self.staged.insert(
            key.to_vec(),
            Write {
                value: Some(value.to_vec()),
                written_ms: now_ms,
            },
        );
    }

    pub(crate) fn delete(&mut self, key: &[u8], now_ms: i64) {
        self.staged.insert(
            key.to_vec(),
            Write {
                value: None,
                written_ms: now_ms,
            },
        );
    }

    /// Live keys and values with `start <= key < end` (`end` `None`: to the last key), in key
    /// order, uncommitted writes included; at most `limit`.
    pub(crate) fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let upper = match end {
            Some(e) => Bound::Excluded(e),
            None => Bound::Unbounded,
        };
        let bounds = (Bound::Included(start), upper);
        // The pending layers shadow the committed one; walk committed keys until enough live
        // ones are found, counting the pending keys that may replace or delete them.
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for layer in [&self.batch, &self.staged] {
            for (k, w) in layer.range::<[u8], _>(bounds) {
                merged.insert(k.clone(), w.value.clone());
            }
        }
        let pending = merged.len();
        {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let t = tx.open_table(DATA).map_err(|e| self.err(e))?;
            let mut taken = 0usize;
            for item in t.range::<&[u8]>(bounds).map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                let k = k.value().to_vec();
                if merged.contains_key(&k) {
                    continue;
                }
                let (_, v) = split_local(v.value())
                    .ok_or_else(|| self.err(format!("undecodable local value for key {k:?}")))?;
                merged.insert(k, Some(v.to_vec()));
                taken += 1;
                if taken >= limit.saturating_add(pending) {
                    break;
                }
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .take(limit)
            .collect())
    }

    /// Every live key and value, in key order, including uncommitted writes.
    pub(crate) fn scan(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.range(&[], None, usize::MAX)
    }

    /// Up to `limit` committed keys whose last write is older than `cutoff_ms` and that no
    /// pending write touches: what a retention sweep deletes.
    pub(crate) fn expired(&self, cutoff_ms: i64, limit: usize) -> Result<Vec<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(BY_TIME).map_err(|e| self.err(e))?;
        let end = time_key(cutoff_ms, &[]);
        let mut out = Vec::new();
        for item in t
            .range::<&[u8]>(..end.as_slice())
            .map_err(|e| self.err(e))?
        {
            if out.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(|e| self.err(e))?;
            let key = k.value()[8..].to_vec();
            if !self.batch.contains_key(&key) && !self.staged.contains_key(&key) {
                out.push(key);
            }
        }
        Ok(out)
    }

    /// The record succeeded: its writes join the batch.
    pub(crate) fn keep_record(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        self.batch.extend(staged);
    }

    /// The record failed: forget its writes.
    pub(crate) fn drop_record(&mut self) {
        self.staged.clear();
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.batch.is_empty() || !self.dirty.is_empty() || !self.tombstones.is_empty()
    }

    /// What batch `seq` sends to the changelog: every written key with its committed value as
    /// `prev`; the committed value again for each dirty key the batch does not write; and a
    /// tombstone for each committed deletion it does not overwrite.
    pub(crate) fn changelog_records(&self, seq: u64, now_ms: i64) -> Result<Vec<ChangelogRecord>> {
        let mut out = Vec::with_capacity(self.batch.len() + self.dirty.len());
        for (k, w) in &self.batch {
            let prev = self.committed(k)?;
            if self.unlogged(k, w, &prev) {
                // Written and deleted within the batch, never committed: nothing to log,
                // except the tombstone an earlier deletion of the key still owes.
                if self.tombstones.contains(k) {
                    out.push(ChangelogRecord {
                        key: k.clone(),
                        value: None,
                    });
                }
                continue;
            }
            let entry = Entry {
                seq,
                written_ms: w.written_ms,
                prev,
                value: w.value.clone(),
            };
            out.push(ChangelogRecord {
                key: k.clone(),
                value: Some(entry.encode()),
            });
        }
        for k in &self.dirty {
            if self.batch.contains_key(k) {
                continue;
            }
            let committed = self.committed(k)?;
            let entry = Entry {
                seq,
                written_ms: now_ms,
                prev: committed.clone(),
                value: committed,
            };
            out.push(ChangelogRecord {
                key: k.clone(),
                value: Some(entry.encode()),
            });
        }
        for k in &self.tombstones {
            if !self.batch.contains_key(k) && !self.dirty.contains(k) {
                out.push(ChangelogRecord {
                    key: k.clone(),
                    value: None,
                });
            }
        }
        Ok(out)
    }

    /// Whether the batch's write `w` of `key` needs no changelog record: a deletion of a key
    /// with no committed value that the changelog cannot hold either (not dirty). A timer set
    /// and cancelled, or an entry made and dropped, within one batch costs the log nothing.
    fn unlogged(&self, key: &[u8], w: &Write, committed: &Option<Vec<u8>>) -> bool {
        w.value.is_none() && committed.is_none() && !self.dirty.contains(key)
    }

    /// The batch reached its commit point: apply it locally with its checkpoint.
    pub(crate) fn commit_batch(&mut self, changelog_offset: Option<i64>) -> Result<()> {
        let batch = std::mem::take(&mut self.batch);
        // Tombstones just sent are done; the batch's own deletions need one next time.
        let sent_tombstones = std::mem::take(&mut self.tombstones);
        for (k, w) in &batch {
            if w.value.is_none() && !self.unlogged(k, w, &self.committed(k)?) {
                self.tombstones.insert(k.clone());
            }
        }
        let _ = sent_tombstones;
        let dirty = std::mem::take(&mut self.dirty);
        // Dirty keys were written back with their committed value: the local copy is unchanged.
        let _ = dirty;
        self.apply(
            batch
                .iter()
                .map(|(k, w)| (k.as_slice(), w.value.as_deref(), w.written_ms)),
            changelog_offset,
            Durability::None,
        )
    }

    /// The batch will never be committed (its commit failed): forget it, and remember that the
    /// changelog may hold its values.
    pub(crate) fn abort_batch(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        self.dirty.extend(batch.into_keys());
        self.staged.clear();
    }

    /// Marks `key` as holding an uncommitted value in the changelog (found at restore).
    pub(crate) fn mark_dirty(&mut self, key: Vec<u8>) {
        self.dirty.insert(key);
    }

    /// Applies changelog records (restore) or a batch in one redb transaction.
    pub(crate) fn apply<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>, i64)>,
        changelog_offset: Option<i64>,
        durability: Durability,
    ) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(durability);
        {
            let mut data = tx.open_table(DATA).map_err(|e| self.err(e))?;
            let mut by_time = tx.open_table(BY_TIME).map_err(|e| self.err(e))?;
            let indexed = self.retention_ms.is_some();
            for (k, v, written_ms) in entries {
                let old = match v {
                    Some(v) => data
                        .insert(k, local_value(written_ms, v).as_slice())
                        .map_err(|e| self.err(e))?
                        .map(|g| g.value().to_vec()),
                    None => data
                        .remove(k)
                        .map_err(|e| self.err(e))?
                        .map(|g| g.value().to_vec()),
                };
                if indexed {
                    if let Some((old_ts, _)) = old.as_deref().and_then(split_local) {
                        by_time
                            .remove(time_key(old_ts, k).as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    if v.is_some() {
                        by_time
                            .insert(time_key(written_ms, k).as_slice(), ())
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
            if let Some(off) = changelog_offset {
                let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
                meta.insert(CHECKPOINT, off).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Makes everything written so far durable on the local disk (on revoke, close, and every
    /// few seconds), which also lets redb reclaim the pages of earlier non-durable commits.
    pub(crate) fn flush(&self) -> Result<()> {
        self.apply(std::iter::empty(), None, Durability::Immediate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_roundtrip_and_garbage() {
        let e = Entry {
            seq: 7,
            written_ms: -5,
            prev: Some(b"old".to_vec()),
            value: Some(b"new".to_vec()),
        };
        assert_eq!(Entry::decode(&e.encode()), Some(e));
        let d = Entry {
            seq: 1,
            written_ms: 1,
            prev: None,
            value: None,
        };
        assert_eq!(Entry::decode(&d.encode()), Some(d));
        let empty = Entry {
            seq: 1,
            written_ms: 1,
            prev: Some(Vec::new()),
            value: Some(Vec::new()),
        };
        assert_eq!(Entry::decode(&empty.encode()), Some(empty));
        assert!(Entry::decode(b"").is_none());
        assert!(Entry::decode(&[9, 0]).is_none());
        assert!(Entry::decode(&[2, 0, 0]).is_none());
        // v1, with a position tag: the value after it, read as committed.
        let mut v1 = vec![1, 1, 0, 2, b'i', b'n'];
        v1.extend_from_slice(&3i32.to_be_bytes());
        v1.extend_from_slice(&9i64.to_be_bytes());
        v1.extend_from_slice(b"v");
        assert_eq!(
            Entry::decode(&v1).and_then(|e| e.value),
            Some(b"v".to_vec())
        );
    }

    #[test]
    fn a_key_made_and_dropped_in_one_batch_costs_the_changelog_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = KvStore::open(dir.path(), "t", "app-t-changelog", None).expect("open");
        s.put(b"timer", b"due", 10);
        s.keep_record();
        s.delete(b"timer", 11);
        s.keep_record();
        s.put(b"kept", b"v", 11);
        s.keep_record();
        let recs = s.changelog_records(1, 11).expect("records");
        assert_eq!(
            recs.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
            vec![b"kept".to_vec()]
        );
        s.commit_batch(Some(1)).expect("commit");
        // No tombstone is owed for it either.
        assert!(!s.has_pending());

        // A committed key deleted, then made and dropped again before its tombstone went out:
        // the tombstone still goes out.
        s.delete(b"kept", 12);
        s.keep_record();
        let recs = s.changelog_records(2, 12).expect("records");
        assert_eq!(recs.len(), 1);
        s.commit_batch(Some(2)).expect("commit");
        s.put(b"kept", b"again", 13);
        s.keep_record();
        s.delete(b"kept", 13);
        s.keep_record();
        let recs = s.changelog_records(3, 13).expect("records");
        assert_eq!(recs.len(), 1);
        assert!(recs[0].value.is_none(), "the owed tombstone");
        s.commit_batch(Some(3)).expect("commit");
        assert!(!s.has_pending());

        // A dirty key (the changelog may hold an abandoned value for it) is always logged.
        s.put(b"d", b"1", 14);
        s.keep_record();
        s.abort_batch();
        s.put(b"d", b"2", 15);
        s.keep_record();
        s.delete(b"d", 15);
        s.keep_record();
        let recs = s.changelog_records(5, 15).expect("records");
        assert_eq!(recs.len(), 1);
        let e = Entry::decode(recs[0].value.as_deref().expect("value")).expect("entry");
        assert_eq!((e.prev, e.value), (None, None));
    }

    #[test]
    fn layers_commit_abort_and_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s =
            KvStore::open(dir.path(), "counts", "app-counts-changelog", None).expect("open");
        assert_eq!(s.checkpoint().expect("checkpoint"), None);

        s.put(b"a", b"1", 10);
        s.keep_record();
        let recs = s.changelog_records(1, 10).expect("records");
        assert_eq!(recs.len(), 1);
        let e = Entry::decode(recs[0].value.as_deref().expect("value")).expect("entry");
        assert_eq!((e.seq, e.prev, e.value), (1, None, Some(b"1".to_vec())));
        s.commit_batch(Some(41)).expect("commit");
        assert_eq!(s.checkpoint().expect("checkpoint"), Some(41));
        assert_eq!(s.get(b"a").expect("get"), Some(b"1".to_vec()));

        // A failed record leaves nothing; an aborted batch leaves its key dirty.
        s.put(b"a", b"2", 11);
        s.drop_record();
        assert_eq!(s.get(b"a").expect("get"), Some(b"1".to_vec()));
        s.put(b"a", b"3", 12);
        s.keep_record();
        s.abort_batch();
        assert_eq!(s.get(b"a").expect("get"), Some(b"1".to_vec()));
        let recs = s.changelog_records(3, 13).expect("records");
        let e = Entry::decode(recs[0].value.as_deref().expect("value")).expect("entry");
        assert_eq!(
            (e.prev, e.value),
            (Some(b"1".to_vec()), Some(b"1".to_vec()))
        );
        s.commit_batch(Some(42)).expect("commit");
        assert!(!s.has_pending());

        // A committed deletion is followed by a tombstone in the next commit.
        s.delete(b"a", 14);
        s.put(b"b", b"x", 14);
        s.keep_record();
        assert_eq!(
            s.scan().expect("scan"),
            vec![(b"b".to_vec(), b"x".to_vec())]
        );
        s.commit_batch(Some(44)).expect("commit");
        let recs = s.changelog_records(5, 15).expect("records");
        assert_eq!(recs.len(), 1);
        assert!(recs[0].value.is_none());
        s.commit_batch(Some(45)).expect("commit");
        assert!(!s.has_pending());
        s.flush().expect("flush");
        drop(s);

        let s = KvStore::open(dir.path(), "counts", "app-counts-changelog", None).expect("reopen");
        assert_eq!(s.checkpoint().expect("checkpoint"), Some(45));
        assert_eq!(s.get(b"a").expect("get"), None);
        assert_eq!(s.get(b"b").expect("get"), Some(b"x".to_vec()));
    }

    #[test]
    fn retention_index_follows_overwrites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = KvStore::open(dir.path(), "seen", "c", Some(100)).expect("open");
        for (k, t) in [(b"a", 1), (b"b", 2), (b"c", 300)] {
            s.put(k, b"", t);
        }
        s.keep_record();
        s.commit_batch(Some(1)).expect("commit");
        assert_eq!(
            s.expired(250, 10).expect("expired"),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        // Rewritten later: no longer expired at that cutoff.
        s.put(b"a", b"", 400);
        s.keep_record();
        s.commit_batch(Some(2)).expect("commit");
        assert_eq!(s.expired(250, 10).expect("expired"), vec![b"b".to_vec()]);
        assert_eq!(s.expired(250, 0).expect("expired").len(), 0);
        assert_eq!(s.len().expect("len"), 3);
        assert_eq!(
            s.range(b"b", None, 1).expect("range"),
            vec![(b"b".to_vec(), b"".to_vec())]
        );
    }
}
