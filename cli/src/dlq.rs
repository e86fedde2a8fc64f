//! `tributary dlq list|show|replay`: what the dead-letter topics hold, and re-driving it once
//! the cause is fixed.
//!
//! Every dead letter names the record its producer wrote (`dlq.source.*`) and the consumer
//! group that failed it (`dlq.consumer.group`, the header names' home is
//! `tributary_runtime::dlq`). `replay` re-drives each through the write path of the group that
//! failed it:
//!
//! - a processor's dead letter is produced again to its source topic, key, value and the
//!   producer's headers unchanged plus `dlq.replayed.from`. Every consumer of that topic sees it
//!   again; each already dedupes a second arrival (processors by envelope id, sinks by version),
//!   which is what a producer retry relies on too. A command refused for a business reason
//!   (class `rejected`) is not re-driven: it was answered (`CommandRejected`), and the producer
//!   sends a new command if it wants another answer. A failed timer has no record to re-drive.
//! - a sink's dead letter (group `<prefix>tributary-sink-<store>`) is re-driven by repairing
//!   the store from the log: the log is replayed through the store's projection and every
//!   entity that differs (those the dead letters should have changed, and any other drift) is
//!   written through the sink's own writer, after a release of its stored version. Producing
//!   the event again would not do: the sink's version check would drop it as stale once a
//!   later change of the entity was applied, and a patch needs the entity's earlier changes.
//!
//! What was replayed is remembered as the offsets of the group `<prefix>tributary-dlq-replay`
//! on the DLQ topic, committed once every re-drive of the run succeeded: `list` shows what is
//! pending, and a second `replay` does not re-drive the same letters again.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Subcommand};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tributary_runtime::dlq;
use tributary_runtime::kafka::{client_config, close_consumer};
use tributary_schemas::Codec;

use tributary_sinks::store::Store;
use tributary_sinks::stores;

use crate::store_args::StoreArgs;

#[derive(Subcommand)]
pub enum Command {
    /// Every dead-letter topic: its letters, those not replayed yet, by group and class.
    List(ListArgs),
    /// The dead letters of one topic: where each came from, who failed it, why, and its value.
    Show(ShowArgs),
    /// Re-drive the pending dead letters of one topic through the write path that failed them.
    Replay(ReplayArgs),
}

#[derive(ClapArgs)]
pub struct ListArgs {
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = tributary_runtime::config::KAFKA_BROKERS.default)]
    brokers: String,
    /// Only the DLQ topics of a pipeline started with this `--topic-prefix`.
    #[arg(long, default_value = "")]
    topic_prefix: String,
    #[arg(long)]
    json: bool,
}

#[derive(ClapArgs)]
pub struct ShowArgs {
    /// The DLQ topic, or the source topic whose DLQ to show (`commands.orders` or
    /// `commands.orders.dlq`).
    #[arg(long)]
    topic: String,
    /// Only letters failed by this consumer group.
    #[arg(long)]
    group: Option<String>,
    /// Only letters not replayed yet.
    #[arg(long)]
    pending: bool,
    /// At most this many letters, oldest first.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    #[arg(long)]
    json: bool,
    #[arg(long, env = "TRIBUTARY_KAFKA_BROKERS", default_value = tributary_runtime::config::KAFKA_BROKERS.default)]
    brokers: String,
    #[command(flatten)]
    registry: crate::registry_args::RegistryArgs,
    #[arg(long, default_value = "")]
    topic_prefix: String,
}

#[derive(ClapArgs)]
pub struct ReplayArgs {
    /// The DLQ topic, or the source topic whose DLQ to replay.
    #[arg(long)]
    topic: String,
    /// Only letters failed by this consumer group (the others stay pending).
    #[arg(long)]
    group: Option<String>,
    /// Say what would be re-driven, change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    stores: StoreArgs,
}

/// The group whose committed offsets on a DLQ topic mark what was replayed.
fn replay_group(prefix: &str) -> String {
    tributary_runtime::topics::prefixed(prefix, "tributary-dlq-replay")
}

fn dlq_name(topic: &str) -> String {
    if dlq::is_dlq_topic(topic) {
        topic.to_string()
    } else {
        dlq::dlq_topic(topic)
    }
}

/// One dead letter as read from its DLQ topic.
#[derive(Debug, Clone)]
struct Letter {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Letter {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn group(&self) -> String {
        self.header(dlq::CONSUMER_GROUP).unwrap_or_default()
    }

    fn class(&self) -> String {
        self.header(dlq::ERROR_CLASS).unwrap_or_default()
    }
}

/// Per partition: low watermark, high watermark, and the replay group's committed offset.
type Marks = BTreeMap<i32, (i64, i64, Option<i64>)>;

fn consumer(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    client_config(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .context("creating the DLQ reader")
}

fn marks(c: &BaseConsumer, topic: &str) -> anyhow::Result<Marks> {
    let timeout = Duration::from_secs(10);
    let md = c
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("reading the metadata of {topic}"))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        bail!("topic {topic} does not exist");
    };
    if t.partitions().is_empty() {
        bail!("topic {topic} does not exist (no partitions)");
    }
    let mut tpl = TopicPartitionList::new();
    for p in t.partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = c
        .committed_offsets(tpl, timeout)
        .with_context(|| format!("reading the replay group's offsets on {topic}"))?;
    let mut out = Marks::new();
    for p in t.partitions() {
        let (low, high) = c
            .fetch_watermarks(topic, p.id(), timeout)
            .with_context(|| format!("reading the watermarks of {topic}/{}", p.id()))?;
        let done = committed
            .find_partition(topic, p.id())
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        out.insert(p.id(), (low, high, done));
    }
    Ok(out)
}

/// The letters of `topic` from each partition's start (`pending`: the replay group's offset)
/// to its high watermark as read in `marks`.
fn read(
    c: &BaseConsumer,
    topic: &str,
    marks: &Marks,
    pending: bool,
) -> anyhow::Result<Vec<Letter>> {
    let mut tpl = TopicPartitionList::new();
    let mut want: BTreeMap<i32, i64> = BTreeMap::new();
    for (&p, &(low, high, done)) in marks {
        let from = if pending {
            done.unwrap_or(low).max(low)
        } else {
            low
        };
        if from < high {
            tpl.add_partition_offset(topic, p, Offset::Offset(from))
                .context("assigning")?;
            want.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if want.is_empty() {
        return Ok(out);
    }
    c.assign(&tpl)
        .with_context(|| format!("assigning {topic}"))?;
    let mut idle = std::time::Instant::now();
    while !want.is_empty() {
        match c.poll(Duration::from_millis(200)) {
            None => {
                if idle.elapsed() > Duration::from_secs(30) {
                    bail!("reading {topic}: no record for 30 s while {} partition(s) were not read to their end", want.len());
                }
            }
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {topic}")),
            Some(Ok(m)) => {
                idle = std::time::Instant::now();
                let p = m.partition();
                let Some(&high) = want.get(&p) else { continue };
                if m.offset() < high {
                    let headers = m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Letter {
                        partition: p,
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
                if m.offset() + 1 >= high {
                    want.remove(&p);
                }
            }
        }
    }
    Ok(out)
}

/// Reads the marks and letters of `topic` on a blocking thread.
async fn load(
    brokers: &str,
    prefix: &str,
    topic: &str,
    pending: bool,
) -> anyhow::Result<(Marks, Vec<Letter>)> {
    let (brokers, group, topic) = (brokers.to_string(), replay_group(prefix), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let c = consumer(&brokers, &group)?;
        let r = marks(&c, &topic).and_then(|m| {
            let letters = read(&c, &topic, &m, pending)?;
            Ok((m, letters))
        });
        close_consumer(&c, Duration::from_secs(5));
        r
    })
    .await
    .context("the DLQ reader panicked")?
}

pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::List(a) => list(a).await,
        Command::Show(a) => show(a).await,
        Command::Replay(a) => replay(a).await,
    }
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let brokers = args.brokers.clone();
    let topics: Vec<String> = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let c = consumer(&brokers, "tributary-dlq-list")?;
        let md = c
            .fetch_metadata(None, Duration::from_secs(10))
            .context("listing the topics")?;
        Ok(md
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|t| dlq::is_dlq_topic(t))
            .collect())
    })
    .await
    .context("the lister panicked")??;
    let mut rows = Vec::new();
    for topic in topics.iter().filter(|t| t.starts_with(&args.topic_prefix)) {
        let (marks, letters) = load(&args.brokers, &args.topic_prefix, topic, false).await?;
        let total: i64 = marks.values().map(|(l, h, _)| h - l).sum();
        let pending: i64 = marks
            .values()
            .map(|(l, h, d)| h - d.unwrap_or(*l).max(*l))
            .sum();
        let mut by: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
        for l in &letters {
            let done = marks
                .get(&l.partition)
                .and_then(|m| m.2)
                .is_some_and(|d| l.offset < d);
            let e = by.entry((l.group(), l.class())).or_default();
            e.0 += 1;
            if !done {
                e.1 += 1;
            }
        }
        rows.push((topic.clone(), total, pending, by));
    }
    if args.json {
        let out: Vec<_> = rows
            .iter()
            .map(|(t, total, pending, by)| {
                serde_json::json!({
                    "topic": t, "letters": total, "pending": pending,
                    "by": by.iter().map(|((g, c), (n, p))| serde_json::json!({
                        "group": g, "class": c, "letters": n, "pending": p,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no dead-letter topics");
    }
    for (topic, total, pending, by) in &rows {
        println!("{topic}: {total} letters, {pending} pending");
        for ((group, class), (n, p)) in by {
            println!("  {group:40} {class:20} {n:>6} ({p} pending)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A value for people: the record decoded as JSON when it is a registered schema's, else its
/// bytes as text (or hex when they are not text).
async fn describe(codec: &Codec, value: Option<&[u8]>) -> serde_json::Value {
    let Some(bytes) = value else {
        return serde_json::Value::Null;
    };
    if let Ok(decoded) = codec.decode_value(bytes, None).await {
        if let Ok(json) = serde_json::Value::try_from(decoded.value) {
            return json;
        }
    }
    let shown = &bytes[..bytes.len().min(256)];
    match std::str::from_utf8(shown) {
        Ok(text) if !text.chars().any(char::is_control) => serde_json::Value::String(text.into()),
        _ => {
            serde_json::Value::String(shown.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    }
}

async fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let topic = dlq_name(&args.topic);
    let (_, letters) = load(&args.brokers, &args.topic_prefix, &topic, args.pending).await?;
    // Showing is not processing: an id the registry does not know is shown as bytes at once.
    let codec = Codec::new(&args.registry.url()).with_unknown_schema_grace(Duration::ZERO);
    let mut out = Vec::new();
    for l in letters
        .iter()
        .filter(|l| args.group.as_ref().is_none_or(|g| &l.group() == g))
        .take(args.limit)
    {
        let headers: BTreeMap<String, String> = l
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_deref()
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default(),
                )
            })
            .collect();
        out.push(serde_json::json!({
            "partition": l.partition,
            "offset": l.offset,
            "key": l.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            "source": {
                "topic": l.header(dlq::SOURCE_TOPIC),
                "partition": l.header(dlq::SOURCE_PARTITION),
                "offset": l.header(dlq::SOURCE_OFFSET),
            },
            "group": l.group(),
            "class": l.class(),
            "message": l.header(dlq::ERROR_MESSAGE),
            "headers": headers,
            "value": describe(&codec, l.value.as_deref()).await,
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if out.is_empty() {
            println!(
                "{topic}: no dead letters{}",
                if args.pending { " pending" } else { "" }
            );
        }
        for l in &out {
            let s = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                v => v.to_string(),
            };
            println!(
                "{topic} {}@{}  from {}/{}@{}  key {}  group {}  class {}",
                l["partition"],
                l["offset"],
                s(&l["source"]["topic"]),
                s(&l["source"]["partition"]),
                s(&l["source"]["offset"]),
                s(&l["key"]),
                s(&l["group"]),
                s(&l["class"]),
            );
            println!("  reason: {}", s(&l["message"]));
            println!("  value:  {}", l["value"]);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The store whose sink is `group`, if `group` is a sink's.
fn sink_store(prefix: &str, group: &str) -> Option<&'static dyn Store> {
    stores::of_sink_group(stores::all(), prefix, group)
}

/// Why a letter is not re-driven, if it is not.
fn not_replayable(l: &Letter) -> Option<&'static str> {
    if l.class() == dlq::REJECTED_CLASS {
        return Some("refused commands (answered with CommandRejected; send a new command)");
    }
    if l.header(dlq::SOURCE_TOPIC).is_none() || l.header(dlq::SOURCE_TIMER).is_some() {
        return Some("failed timers (no record to re-drive)");
    }
    None
}

async fn replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let prefix = args.stores.topic_prefix.clone();
    let topic = dlq_name(&args.topic);
    let (marks, letters) = load(&args.stores.brokers, &prefix, &topic, true).await?;
    let chosen: Vec<&Letter> = letters
        .iter()
        .filter(|l| args.group.as_ref().is_none_or(|g| &l.group() == g))
        .collect();
    let mut skipped: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut produce: Vec<&Letter> = Vec::new();
    let mut repairs: BTreeMap<&'static str, (&'static dyn Store, usize)> = BTreeMap::new();
    for l in &chosen {
        // A sink's class `rejected` is a store refusing the data (fixable, e.g. a constraint);
        // a processor's is a business answer. So the sink's letters are sorted out first.
        if let Some(store) = sink_store(&prefix, &l.group()) {
            repairs.entry(store.name()).or_insert((store, 0)).1 += 1;
        } else if let Some(why) = not_replayable(l) {
            *skipped.entry(why).or_default() += 1;
        } else {
            produce.push(l);
        }
    }
    println!(
        "{topic}: {} pending letter(s){}",
        chosen.len(),
        args.group
            .as_ref()
            .map(|g| format!(" of group {g}"))
            .unwrap_or_default()
    );
    for (why, n) in &skipped {
        println!("  skipped {n}: {why}");
    }
    if args.dry_run {
        for l in &produce {
            println!(
                "  would produce {}@{} to {}",
                l.partition,
                l.offset,
                l.header(dlq::SOURCE_TOPIC).unwrap_or_default()
            );
        }
        for (name, (_, n)) in &repairs {
            println!("  would repair {name} from the log ({n} letter(s) of its sink)");
        }
        return Ok(ExitCode::SUCCESS);
    }

    if !produce.is_empty() {
        let producer: FutureProducer = client_config(&args.stores.brokers)
            // Re-driven records keep their order per partition and are never duplicated by
            // the producer's own retries.
            .set("enable.idempotence", "true")
            .create()
            .context("creating the replay producer")?;
        for l in &produce {
            let source = l.header(dlq::SOURCE_TOPIC).unwrap_or_default();
            let from = format!("{topic}/{}@{}", l.partition, l.offset);
            let mut headers = OwnedHeaders::new();
            for (k, v) in l
                .headers
                .iter()
                .filter(|(k, _)| !dlq::is_pipeline_header(k))
            {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            headers = headers.insert(Header {
                key: dlq::REPLAYED_FROM,
                value: Some(from.as_bytes()),
            });
            let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&source).headers(headers);
            if let Some(k) = &l.key {
                r = r.key(k.as_slice());
            }
            if let Some(v) = &l.value {
                r = r.payload(v.as_slice());
            }
            producer
                .send(r, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)
                .with_context(|| format!("re-driving {from} to {source}"))?;
        }
        println!(
            "  produced {} letter(s) again to their source topic",
            produce.len()
        );
    }

    let mut drift_left = 0;
    if !repairs.is_empty() {
        // As `reconcile` replays: what the sink dead-lettered for an unknown id is skipped.
        let codec =
            Codec::new(&args.stores.registry.url()).with_unknown_schema_grace(Duration::ZERO);
        let lock = tributary_sinks::job::lock_connection(args.stores.settings()).await?;
        for (name, (store, n)) in &repairs {
            let report = crate::reconcile::repair_store(&args.stores, *store, &codec, lock.clone())
                .await
                .with_context(|| format!("repairing {name} for {n} dead letter(s) of its sink"))?;
            let repaired = report.repair.as_ref().map_or(0, |r| r.written + r.deleted);
            let left = report.remaining().unwrap_or(report.drift());
            drift_left += left;
            println!(
                "  {name}: {n} letter(s) of its sink re-driven by a repair from the log: {repaired} entit{} written or deleted, {left} still drifting",
                if repaired == 1 { "y" } else { "ies" }
            );
        }
    }

    // Everything pending up to the high watermarks read above is done (skipped ones too: they
    // are not replayable). With `--group`, other groups' letters stay pending, so the offsets
    // only move when every pending letter of the topic was chosen.
    if chosen.len() == letters.len() && drift_left == 0 {
        let (brokers, group, t) = (
            args.stores.brokers.clone(),
            replay_group(&prefix),
            topic.clone(),
        );
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let c = consumer(&brokers, &group)?;
            let mut tpl = TopicPartitionList::new();
            for (&p, &(_, high, _)) in &marks {
                tpl.add_partition_offset(&t, p, Offset::Offset(high))
                    .context("offsets")?;
            }
            let r = c
                .commit(&tpl, CommitMode::Sync)
                .with_context(|| format!("recording the replay of {t}"));
            close_consumer(&c, Duration::from_secs(5));
            r
        })
        .await
        .context("the offset writer panicked")??;
    } else if drift_left == 0 {
        println!("  other groups' letters stay pending (replay without --group to clear them)");
    }
    Ok(if drift_left > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_groups_name_their_store_and_other_groups_are_processors() {
        let sink_store = |prefix, group| sink_store(prefix, group).map(|s| s.name());
        assert_eq!(sink_store("", "tributary-sink-postgres"), Some("postgres"));
        assert_eq!(
            sink_store("t1.", "t1.tributary-sink-elasticsearch"),
            Some("elasticsearch")
        );
        assert_eq!(sink_store("", "tributary-orders"), None);
        assert_eq!(sink_store("t1.", "tributary-sink-redis"), None);
        assert_eq!(sink_store("", "tributary-sink-all"), None);
        assert_eq!(dlq_name("commands.orders"), "commands.orders.dlq");
        assert_eq!(dlq_name("commands.orders.dlq"), "commands.orders.dlq");
    }
}
