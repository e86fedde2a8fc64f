//! Key-value state stores: one redb file per task and store, every write also in the changelog.
//!
//! A store has three layers, read top-down:
//!
//! - `staged`: writes of the record being processed. Dropped if the record fails, so a retried or
//!   dead-lettered record leaves no trace.
//! - `batch`: writes of the records processed since the last commit. At commit they are produced
//!   to the changelog (only the last value per key: the changelog is compacted anyway) and, once
//!   the broker acknowledged them, written to redb in one transaction together with the changelog
//!   offset they reached (the checkpoint). Keeping the checkpoint inside the same redb
//!   transaction, rather than in a side file, means the local copy and its checkpoint can never
//!   disagree, whatever moment the process dies at.
//! - redb: the durable local copy.
//!
//! Every stored value carries the position (topic, partition, offset) of the input record that
//! wrote it. Under at-least-once a record can be processed again after a crash (its offset was
//! not committed) even though its writes already reached the changelog. A `put` whose key already
//! carries a position at or past the current record's, on the same input partition, is therefore
//! skipped: the value already includes this record's effect. That makes read-modify-write
//! processors (counts, balances) exact across crashes without any work on their side.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::record::Position;

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const CHECKPOINT: &str = "changelog_offset";

/// Encoding of a stored value (local and in the changelog): version byte, then an optional
/// position tag, then the processor's bytes.
const ENTRY_V1: u8 = 1;

pub(crate) fn encode_entry(pos: Option<&Position>, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 32);
    out.push(ENTRY_V1);
    match pos {
        Some(p) => {
            out.push(1);
            let t = p.topic.as_bytes();
            // Topic names are at most 249 bytes, so u16 always fits.
            out.extend_from_slice(&(t.len() as u16).to_be_bytes());
            out.extend_from_slice(t);
            out.extend_from_slice(&p.partition.to_be_bytes());
            out.extend_from_slice(&p.offset.to_be_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(value);
    out
}

/// Splits an entry into its position tag and value; `None` when the bytes are not an entry.
pub(crate) fn decode_entry(bytes: &[u8]) -> Option<(Option<Position>, &[u8])> {
    let (&version, rest) = bytes.split_first()?;
    if version != ENTRY_V1 {
        return None;
    }
    let (&has_pos, rest) = rest.split_first()?;
    match has_pos {
        0 => Some((None, rest)),
        1 => {
            let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            let rest = rest.get(2..)?;
            let topic = std::str::from_utf8(rest.get(..len)?).ok()?.to_string();
            let rest = rest.get(len..)?;
            let partition = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
            let offset = i64::from_be_bytes(rest.get(4..12)?.try_into().ok()?);
            Some((
                Some(Position {
                    topic,
                    partition,
                    offset,
                }),
                rest.get(12..)?,
            ))
        }
        _ => None,
    }
}

/// One store of one task.
pub(crate) struct KvStore {
    pub(crate) name: String,
    pub(crate) changelog: String,
    path: PathBuf,
    db: Database,
    batch: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    staged: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl KvStore {
    /// Opens (or creates) the store's file under `dir`.
    pub(crate) fn open(dir: &Path, name: &str, changelog: &str) -> Result<KvStore> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join(format!("{name}.redb"));
        let db = Database::create(&path).map_err(|e| Error::store(name, e))?;
        // Create both tables up front so that reads never meet a missing table.
        let tx = db.begin_write().map_err(|e| Error::store(name, e))?;
        {
            tx.open_table(DATA).map_err(|e| Error::store(name, e))?;
            tx.open_table(META).map_err(|e| Error::store(name, e))?;
        }
        tx.commit().map_err(|e| Error::store(name, e))?;
        Ok(KvStore {
            name: name.to_string(),
            changelog: changelog.to_string(),
            path,
            db,
            batch: BTreeMap::new(),
            staged: BTreeMap::new(),
        })
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

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::store(&self.name, e)
    }

    fn entry_below_staged(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.batch.get(key) {
            return Ok(v.clone());
        }
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(DATA).map_err(|e| self.err(e))?;
        let v = t.get(key).map_err(|e| self.err(e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn entry(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.staged.get(key) {
            return Ok(v.clone());
        }
        self.entry_below_staged(key)
    }

    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.entry(key)? {
            None => Ok(None),
            Some(bytes) => match decode_entry(&bytes) {
                Some((_, v)) => Ok(Some(v.to_vec())),
                None => Err(self.err(format!("undecodable entry for key {key:?}"))),
            },
        }
    }

    /// Writes `value` under `key` unless the key already holds the effect of the record at
    /// `pos` (see the module doc). Returns whether the write happened.
    pub(crate) fn put(&mut self, key: &[u8], value: &[u8], pos: Option<&Position>) -> Result<bool> {
        if let Some(p) = pos {
            if self.applied(key, p)? {
                tracing::debug!(store = %self.name, record = ?p, "write skipped: already applied");
                return Ok(false);
            }
        }
        self.staged
            .insert(key.to_vec(), Some(encode_entry(pos, value)));
        Ok(true)
    }

    /// Whether `key` already holds the effect of the record at `pos`: its value was written by
    /// that record or a later one of the same input partition.
    pub(crate) fn applied(&self, key: &[u8], pos: &Position) -> Result<bool> {
        // Compare with what was there before this record: its own earlier writes (staged)
        // carry the same position and must not count.
        if let Some(prev) = self.entry_below_staged(key)? {
            if let Some((Some(tag), _)) = decode_entry(&prev) {
                return Ok(tag.topic == pos.topic
                    && tag.partition == pos.partition
                    && tag.offset >= pos.offset);
            }
        }
        Ok(false)
    }

    /// Deletes are idempotent, so they need no position tag.
    pub(crate) fn delete(&mut self, key: &[u8]) {
        self.staged.insert(key.to_vec(), None);
    }

    /// Every live key and value, in key order, including uncommitted writes.
    pub(crate) fn scan(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        {
            let tx = self.db.begin_read().map_err(|e| self.err(e))?;
            let t = tx.open_table(DATA).map_err(|e| self.err(e))?;
            for item in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                merged.insert(k.value().to_vec(), Some(v.value().to_vec()));
            }
        }
        for layer in [&self.batch, &self.staged] {
            for (k, v) in layer {
                merged.insert(k.clone(), v.clone());
            }
        }
        let mut out = Vec::with_capacity(merged.len());
        for (k, v) in merged {
            if let Some(bytes) = v {
                match decode_entry(&bytes) {
                    Some((_, value)) => out.push((k, value.to_vec())),
                    None => return Err(self.err(format!("undecodable entry for key {k:?}"))),
                }
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

    /// The batch's writes, to produce to the changelog.
    pub(crate) fn batch(&self) -> &BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        &self.batch
    }

    /// Forgets the batch (its changelog writes failed; the inputs will be read again).
    pub(crate) fn drop_batch(&mut self) {
        self.batch.clear();
        self.staged.clear();
    }

    /// Writes the batch locally once the changelog holds it up to `changelog_offset`.
    /// `Eventual` durability is enough: losing the tail of the local copy in a power cut only
    /// makes the next restore read a longer changelog tail, since the checkpoint rolls back with it.
    pub(crate) fn write_batch(&mut self, changelog_offset: Option<i64>) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let entries = batch.iter().map(|(k, v)| (k.as_slice(), v.as_deref()));
        self.apply(entries, changelog_offset, Durability::Eventual)
    }

    /// Applies changelog records (restore) or a batch in one redb transaction.
    pub(crate) fn apply<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
        changelog_offset: Option<i64>,
        durability: Durability,
    ) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(durability);
        {
            let mut data = tx.open_table(DATA).map_err(|e| self.err(e))?;
            for (k, v) in entries {
                match v {
                    Some(v) => {
                        data.insert(k, v).map_err(|e| self.err(e))?;
                    }
                    None => {
                        data.remove(k).map_err(|e| self.err(e))?;
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

    /// Makes everything written so far durable (on revoke and close).
    pub(crate) fn flush(&self) -> Result<()> {
        self.apply(std::iter::empty(), None, Durability::Immediate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(offset: i64) -> Position {
        Position {
            topic: "in".into(),
            partition: 2,
            offset,
        }
    }

    #[test]
    fn entry_roundtrip_and_garbage() {
        let e = encode_entry(Some(&pos(7)), b"v");
        let (p, v) = decode_entry(&e).expect("decodes");
        assert_eq!(p, Some(pos(7)));
        assert_eq!(v, b"v");
        assert_eq!(
            decode_entry(&encode_entry(None, b"")),
            Some((None, &b""[..]))
        );
        assert!(decode_entry(b"").is_none());
        assert!(decode_entry(&[9, 0]).is_none());
        assert!(decode_entry(&[1, 1, 0, 50, b'x']).is_none());
    }

    #[test]
    fn layers_replay_guard_and_checkpoint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = KvStore::open(dir.path(), "counts", "app-counts-changelog").expect("open");
        assert_eq!(s.checkpoint().expect("checkpoint"), None);

        assert!(s.put(b"a", b"1", Some(&pos(10))).expect("put"));
        // A second write to the same key by the same record is not a replay.
        assert!(s.put(b"a", b"2", Some(&pos(10))).expect("put"));
        s.keep_record();
        s.write_batch(Some(41)).expect("write");
        assert_eq!(s.checkpoint().expect("checkpoint"), Some(41));
        assert_eq!(s.get(b"a").expect("get"), Some(b"2".to_vec()));

        // Replays of offsets up to 10 on the same partition are skipped; later ones apply.
        assert!(!s.put(b"a", b"3", Some(&pos(9))).expect("put"));
        assert!(!s.put(b"a", b"3", Some(&pos(10))).expect("put"));
        assert!(s.put(b"a", b"3", Some(&pos(11))).expect("put"));
        s.drop_record();
        assert_eq!(s.get(b"a").expect("get"), Some(b"2".to_vec()));

        s.delete(b"a");
        s.put(b"b", b"x", None).expect("put");
        s.keep_record();
        assert_eq!(
            s.scan().expect("scan"),
            vec![(b"b".to_vec(), b"x".to_vec())]
        );
        s.write_batch(Some(43)).expect("write");
        s.flush().expect("flush");
        drop(s);

        let s = KvStore::open(dir.path(), "counts", "app-counts-changelog").expect("reopen");
        assert_eq!(s.checkpoint().expect("checkpoint"), Some(43));
        assert_eq!(s.get(b"a").expect("get"), None);
        assert_eq!(s.get(b"b").expect("get"), Some(b"x".to_vec()));
    }
}
