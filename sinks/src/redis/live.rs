//! Redis as reconcile sees it: the hashes under `<prefix>:<view>:`, each field a string.
//!
//! - Entity views (`order`, `product`, `session`): one hash per entity; `_version` is the
//!   writer's, the other fields are compared. Expected values go through the writer's own
//!   JSON → string conversion.
//! - The append view (`ratelimit:orders`): one hash per key, one field per appended member
//!   (`HSETNX member version`), so an entry is identified by `(key, member)`:
//!   `<key>#<member>`.
//! - Expiry: an expected entity whose `_expire_at_ms` is past (or within [`EXPIRY_GRACE`] of
//!   the read) is not expected; a live key with less than that to live is not read. Tombstone
//!   keys (`<key>:tombstone`) are the writer's bookkeeping.

use std::time::Duration;

use ::redis::aio::ConnectionManager;
use serde_json::Value;

use crate::change::Fields;
use crate::reconcile::RELEASED_VERSION;
use crate::reconcile::{Entity, EntityId, LiveStore, ReconcileError, Release, Rules, Snapshot};
use crate::redis::projection::{
    EXPIRE_AT_FIELD, MEMBER_FIELD, VIEW_ORDER, VIEW_ORDER_RATE, VIEW_PRODUCT, VIEW_SESSION,
};
use crate::redis::writer::text;

use super::STORE;
const VERSION_FIELD: &str = "_version";
const TOMBSTONE_SUFFIX: &str = ":tombstone";
/// A live key that is not a hash is shown with this one field.
const TYPE_FIELD: &str = "_type";
/// Keys this close to their expiry are left out on both sides: whether they are still there
/// when read is a race.
pub const EXPIRY_GRACE: Duration = Duration::from_secs(5);

/// The Redis views under one key prefix.
#[derive(Clone)]
pub struct RedisLive {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisLive {
    /// `prefix` as in [`crate::redis::RedisConfig::prefix`].
    pub fn new(conn: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            conn,
            prefix: prefix.into(),
        }
    }

    fn key(&self, view: &str, key: &str) -> String {
        format!("{}:{view}:{key}", self.prefix)
    }

    async fn scan(&self, view: &str) -> Result<Vec<String>, ReconcileError> {
        let pattern = format!("{}:{view}:*", glob_escape(&self.prefix));
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(error(format!("scanning {pattern}")))?;
            out.extend(keys.into_iter().filter(|k| !k.ends_with(TOMBSTONE_SUFFIX)));
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }
}

fn error(action: String) -> impl FnOnce(::redis::RedisError) -> ReconcileError {
    move |e| ReconcileError::Store {
        store: STORE,
        action,
        message: e.to_string(),
    }
}

/// Escapes the glob characters of `s` for `SCAN MATCH`.
pub(crate) fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Append entries are identified by their member (`HSETNX`): `<key>#<member>`.
fn entry_id(key: &str, _version: i64, fields: &Fields) -> String {
    let member = fields.get(MEMBER_FIELD).and_then(text).unwrap_or_default();
    format!("{key}#{member}")
}

pub(crate) const VIEWS: &[&str] = &[VIEW_ORDER, VIEW_PRODUCT, VIEW_SESSION, VIEW_ORDER_RATE];

#[async_trait::async_trait]
impl LiveStore for RedisLive {
    fn views(&self) -> Vec<&'static str> {
        VIEWS.to_vec()
    }

    fn rules(&self) -> Rules {
        Rules {
            remember_deletes: true,
            entry_id,
            ..Rules::default()
        }
    }

    fn expected_fields(&self, _id: &EntityId, entity: &Entity, now_ms: i64) -> Option<Fields> {
        if let Some(at) = entity.fields.get(EXPIRE_AT_FIELD).and_then(Value::as_i64) {
            let grace = i64::try_from(EXPIRY_GRACE.as_millis()).unwrap_or(0);
            if at > 0 && at <= now_ms.saturating_add(grace) {
                return None;
            }
        }
        if entity.append_key.is_some() {
            let member = entity.fields.get(MEMBER_FIELD).and_then(text)?;
            return Some(Fields::from_iter([(
                MEMBER_FIELD.to_string(),
                Value::String(member),
            )]));
        }
        Some(
            entity
                .fields
                .iter()
                .filter(|(k, _)| k.as_str() != EXPIRE_AT_FIELD)
                .filter_map(|(k, v)| Some((k.clone(), Value::String(text(v)?))))
                .collect(),
        )
    }

    async fn read(&self) -> Result<Snapshot, ReconcileError> {
        let mut out = Snapshot::new();
        let grace = i64::try_from(EXPIRY_GRACE.as_millis()).unwrap_or(0);
        let mut conn = self.conn.clone();
        for view in VIEWS {
            let keys = self.scan(view).await?;
            let head = format!("{}:{view}:", self.prefix);
            for chunk in keys.chunks(500) {
                let mut types = ::redis::pipe();
                let mut ttls = ::redis::pipe();
                for k in chunk {
                    types.cmd("TYPE").arg(k);
                    ttls.cmd("PTTL").arg(k);
                }
                let kinds: Vec<String> = types
                    .query_async(&mut conn)
                    .await
                    .map_err(error(format!("reading the types of {head}*")))?;
                let lives: Vec<i64> = ttls
                    .query_async(&mut conn)
                    .await
                    .map_err(error(format!("reading the expiry of {head}*")))?;
                let meta: Vec<(String, i64)> = kinds.into_iter().zip(lives).collect();
                let hashes: Vec<&String> = chunk
                    .iter()
                    .zip(&meta)
                    .filter(|(_, (kind, ttl))| kind == "hash" && !(0..grace).contains(ttl))
                    .map(|(k, _)| k)
                    .collect();
                let mut pipe = ::redis::pipe();
                for k in &hashes {
                    pipe.cmd("HGETALL").arg(*k);
                }
                let contents: Vec<Vec<(String, String)>> = if hashes.is_empty() {
                    Vec::new()
                } else {
                    pipe.query_async(&mut conn)
                        .await
                        .map_err(error(format!("reading {head}*")))?
                };
                for (k, pairs) in hashes.iter().zip(contents) {
                    let key = k[head.len()..].to_string();
                    if *view == VIEW_ORDER_RATE {
                        for (member, version) in pairs {
                            out.insert(
                                (view, format!("{key}#{member}")),
                                Entity {
                                    version: version.parse().unwrap_or(0),
                                    fields: Fields::from_iter([(
                                        MEMBER_FIELD.to_string(),
                                        Value::String(member),
                                    )]),
                                    append_key: Some(key.clone()),
                                    event_time_ms: 0,
                                },
                            );
                        }
                        continue;
                    }
                    let mut version = 0;
                    let mut fields = Fields::new();
                    for (name, value) in pairs {
                        if name == VERSION_FIELD {
                            version = value.parse().unwrap_or(0);
                        } else {
                            fields.insert(name, Value::String(value));
                        }
                    }
                    out.insert(
                        (view, key),
                        Entity {
                            version,
                            fields,
                            append_key: None,
                            event_time_ms: 0,
                        },
                    );
                }
                // A key of another type under a view's prefix is an entity nobody wrote.
                for (k, (kind, _)) in chunk.iter().zip(&meta) {
                    if kind != "hash" && kind != "none" {
                        out.insert(
                            (view, k[head.len()..].to_string()),
                            Entity {
                                version: 0,
                                fields: Fields::from_iter([(
                                    TYPE_FIELD.to_string(),
                                    Value::String(kind.clone()),
                                )]),
                                append_key: None,
                                event_time_ms: 0,
                            },
                        );
                    }
                }
            }
        }
        Ok(out)
    }

    /// A hash's `_version` drops to [`RELEASED_VERSION`] (a key of another type is deleted);
    /// an entity to rewrite loses its tombstone key; an append entry loses its member.
    async fn release(&self, items: &[Release<'_>]) -> Result<(), ReconcileError> {
        let mut pipe = ::redis::pipe();
        let mut commands = 0usize;
        for item in items {
            let (view, id) = (item.id.0, item.id.1.as_str());
            if view == VIEW_ORDER_RATE {
                let Some(live) = item.live else { continue };
                let (Some(key), Some(member)) = (
                    &live.append_key,
                    live.fields.get(MEMBER_FIELD).and_then(Value::as_str),
                ) else {
                    continue;
                };
                pipe.cmd("HDEL")
                    .arg(self.key(view, key))
                    .arg(member)
                    .ignore();
                commands += 1;
                continue;
            }
            let key = self.key(view, id);
            match item.live {
                Some(live) if live.fields.contains_key(TYPE_FIELD) => {
                    pipe.cmd("DEL").arg(&key).ignore();
                    commands += 1;
                }
                Some(_) => {
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(VERSION_FIELD)
                        .arg(RELEASED_VERSION)
                        .ignore();
                    commands += 1;
                }
                None => {}
            }
            if item.rewrite {
                pipe.cmd("DEL")
                    .arg(format!("{key}{TOMBSTONE_SUFFIX}"))
                    .ignore();
                commands += 1;
            }
        }
        if commands == 0 {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(error("releasing entities".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
