//! The runner against the real broker and registry with an in-memory store whose failures the
//! test controls: retries without loss, dead-lettering the one rejected record, bounded shutdown.

mod runner_common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runner_common::*;
use tributary_runtime::dlq::{dlq_topic, ERROR_CLASS, SOURCE_OFFSET};
use tributary_schemas::types::TopicPayload;
use tributary_sinks::change::{Change, Op, ViewWriter, WriteError, WriteOutcome};
use tributary_sinks::runner::{Event, EventStream, ProjectError, Projection, Tombstone};

const WAIT: Duration = Duration::from_secs(60);

/// Each order event sets the order's status to the event's type.
struct Statuses;

impl Projection for Statuses {
    fn streams(&self) -> &[EventStream] {
        &[EventStream::Orders]
    }

    fn project(&self, event: &Event) -> Result<Vec<Change>, ProjectError> {
        let Event::Order(e) = event else {
            return Ok(Vec::new());
        };
        let mut fields = serde_json::Map::new();
        fields.insert("status".into(), e.payload.branch_name().into());
        Ok(vec![Change {
            view: "orders",
            key: e.aggregate_id.clone(),
            version: e.sequence,
            event_time_ms: e.timestamp,
            op: Op::Upsert(fields),
        }])
    }

    fn tombstone(&self, _: &Tombstone) -> Vec<Change> {
        Vec::new()
    }
}

/// Each order event patches the order's status; an `OrderCancelled` also sets `poison`, which
/// the store refuses: a bad change of an entity whose other changes are fine.
struct Patches;

impl Projection for Patches {
    fn streams(&self) -> &[EventStream] {
        &[EventStream::Orders]
    }

    fn project(&self, event: &Event) -> Result<Vec<Change>, ProjectError> {
        let Event::Order(e) = event else {
            return Ok(Vec::new());
        };
        let mut fields = serde_json::Map::new();
        fields.insert("status".into(), e.payload.branch_name().into());
        if e.payload.branch_name() == "OrderCancelled" {
            fields.insert("poison".into(), true.into());
        }
        Ok(vec![Change {
            view: "orders",
            key: e.aggregate_id.clone(),
            version: e.sequence,
            event_time_ms: e.timestamp,
            op: Op::Patch(fields),
        }])
    }
}

/// An in-memory store: versioned like the real ones; can be down, and rejects key `bad`
/// (unless `lenient`) and any change with a `poison` field.
#[derive(Default)]
struct Memory {
    rows: Mutex<BTreeMap<String, (i64, String)>>,
    down: AtomicBool,
    lenient: AtomicBool,
    calls: AtomicUsize,
}

#[async_trait::async_trait]
impl ViewWriter for Memory {
    fn store(&self) -> &'static str {
        "memory"
    }

    async fn write(&self, batch: &[Change]) -> Result<WriteOutcome, WriteError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(WriteError::Unavailable {
                store: "memory",
                message: "down for the test".into(),
            });
        }
        let poisoned = |c: &Change| match &c.op {
            Op::Upsert(f) | Op::Patch(f) => f.contains_key("poison"),
            _ => false,
        };
        let lenient = self.lenient.load(Ordering::SeqCst);
        if let Some(c) = batch
            .iter()
            .find(|c| (c.key == "bad" && !lenient) || poisoned(c))
        {
            return Err(WriteError::Rejected {
                store: "memory",
                view: c.view,
                key: c.key.clone(),
                message: "bad is not allowed".into(),
            });
        }
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let mut outcome = WriteOutcome::default();
        for c in batch {
            let status = match &c.op {
                Op::Upsert(f) | Op::Patch(f) => f
                    .get("status")
                    .and_then(|s| s.as_str())
                    .unwrap_or("")
                    .to_string(),
                _ => continue,
            };
            match rows.get(&c.key) {
                Some((v, _)) if *v >= c.version => outcome.stale += 1,
                _ => {
                    rows.insert(c.key.clone(), (c.version, status));
                    outcome.applied += 1;
                }
            }
        }
        Ok(outcome)
    }
}

impl Memory {
    fn rows(&self) -> BTreeMap<String, (i64, String)> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn orders_log(n: usize) -> Vec<Rec> {
    let codec = codec();
    let mut log = Vec::new();
    for i in 0..n {
        let o = format!("o{i}");
        log.push(
            encode(
                &codec,
                EventStream::Orders,
                &o,
                &order_placed(&o, "u1", 1, 100),
            )
            .await,
        );
        log.push(
            encode(
                &codec,
                EventStream::Orders,
                &o,
                &order_confirmed(&o, "u1", 2, 100),
            )
            .await,
        );
    }
    log
}

fn expected(n: usize) -> BTreeMap<String, (i64, String)> {
    (0..n)
        .map(|i| (format!("o{i}"), (2, "OrderConfirmed".to_string())))
        .collect()
}

#[tokio::test]
async fn transient_errors_are_retried_without_loss_or_dead_letters() {
    let sources = topics("runner-retry", &[EventStream::Orders], 2).await;
    let store = Arc::new(Memory::default());
    store.down.store(true, Ordering::SeqCst);
    let config = sink_config("runner-retry", &sources);
    let group = config.group_id.clone();
    let sink = Running::start(config, Arc::new(Statuses), store.clone());
    produce(&sources, &orders_log(30).await).await;
    eventually("retries while the store is down", WAIT, || async {
        (sink.metrics.retries() >= 3).then_some(())
    })
    .await;
    assert!(store.rows().is_empty());
    store.down.store(false, Ordering::SeqCst);
    wait_caught_up(&group, &sources, WAIT).await;
    assert_eq!(store.rows(), expected(30));
    assert_eq!(sink.metrics.dlq(), 0);
    sink.stop().await;
}

#[tokio::test]
async fn a_rejected_record_is_dead_lettered_and_the_rest_of_its_batch_applied() {
    let sources = topics("runner-reject", &[EventStream::Orders], 1).await;
    let store = Arc::new(Memory::default());
    let mut config = sink_config("runner-reject", &sources);
    // One batch for all records, so the rejection has neighbours.
    config.batch_linger = Duration::from_millis(500);
    let group = config.group_id.clone();
    let codec = codec();
    let mut log = orders_log(2).await;
    log.insert(
        1,
        encode(
            &codec,
            EventStream::Orders,
            "bad",
            &order_placed("bad", "u1", 1, 100),
        )
        .await,
    );
    produce(&sources, &log).await;
    let sink = Running::start(config, Arc::new(Statuses), store.clone());
    wait_caught_up(&group, &sources, WAIT).await;
    assert_eq!(store.rows(), expected(2));
    assert_eq!(sink.metrics.dlq(), 1);
    let letters = read_topic(&dlq_topic(&sources[0].topic), 1, WAIT);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].key.as_deref(), Some(&b"bad"[..]));
    assert_eq!(
        letters[0].headers.get(ERROR_CLASS).map(String::as_str),
        Some("rejected")
    );
    assert_eq!(
        letters[0].headers.get(SOURCE_OFFSET).map(String::as_str),
        Some("1")
    );
    sink.stop().await;
}

#[tokio::test]
async fn shutdown_is_bounded_while_the_store_is_down_and_acknowledges_nothing() {
    let sources = topics("runner-stop", &[EventStream::Orders], 1).await;
    let store = Arc::new(Memory::default());
    store.down.store(true, Ordering::SeqCst);
    let config = sink_config("runner-stop", &sources);
    let sink = Running::start(config.clone(), Arc::new(Statuses), store.clone());
    produce(&sources, &orders_log(5).await).await;
    eventually("retries while the store is down", WAIT, || async {
        (store.calls.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    let asked = Instant::now();
    sink.stop().await;
    assert!(asked.elapsed() < Duration::from_secs(30));

    // The same group again with the store back: every record is still there to apply.
    store.down.store(false, Ordering::SeqCst);
    let group = config.group_id.clone();
    let again = Running::start(config, Arc::new(Statuses), store.clone());
    wait_caught_up(&group, &sources, WAIT).await;
    assert_eq!(store.rows(), expected(5));
    again.stop().await;
}

#[tokio::test]
async fn an_unreachable_schema_registry_is_waited_for_not_dead_lettered() {
    let registry = tributary_runtime::config::SCHEMA_REGISTRY_URL.get();
    let target = registry
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let proxy = Proxy::start(&target).await;
    proxy.down();
    // A fresh codec has no schema cached: decoding needs the registry.
    let codec = Arc::new(tributary_schemas::Codec::new(&format!(
        "http://{}",
        proxy.addr
    )));
    let sources = topics("runner-registry", &[EventStream::Orders], 1).await;
    let store = Arc::new(Memory::default());
    let config = sink_config("runner-registry", &sources);
    let group = config.group_id.clone();
    produce(&sources, &orders_log(3).await).await;
    let sink = Running::start_with_codec(config, codec, Arc::new(Statuses), store.clone());
    eventually(
        "decode retries while the registry is away",
        WAIT,
        || async { (sink.metrics.retries() >= 2).then_some(()) },
    )
    .await;
    assert!(store.rows().is_empty());
    proxy.up();
    wait_caught_up(&group, &sources, WAIT).await;
    assert_eq!(store.rows(), expected(3));
    assert_eq!(sink.metrics.dlq(), 0);
    sink.stop().await;
}

#[tokio::test]
async fn only_the_bad_change_of_an_entity_is_dead_lettered_with_its_origin() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    use tributary_runtime::dlq::{CONSUMER_GROUP, SOURCE_TIMESTAMP};
    let sources = topics("runner-mixed", &[EventStream::Orders], 1).await;
    let store = Arc::new(Memory::default());
    let mut config = sink_config("runner-mixed", &sources);
    // One batch for all records, so that the three changes of `m` are coalesced together.
    config.batch_linger = Duration::from_millis(1000);
    let group = config.group_id.clone();
    let codec = codec();
    let values = [
        codec
            .encode(&order_placed("m", "u1", 1, 100))
            .await
            .expect("encodes"),
        codec
            .encode(&order_cancelled("m", "u1", 2))
            .await
            .expect("encodes"),
        codec
            .encode(&order_confirmed("m", "u1", 3, 100))
            .await
            .expect("encodes"),
        codec
            .encode(&order_placed("n", "u1", 1, 100))
            .await
            .expect("encodes"),
    ];
    let p = producer();
    const SENT_AT: i64 = 1_700_000_000_123;
    for (i, v) in values.iter().enumerate() {
        let key = if i < 3 { "m" } else { "n" };
        let trace = format!("trace-{i}");
        let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&sources[0].topic)
            .key(key)
            .payload(v.as_slice())
            .timestamp(SENT_AT + i as i64)
            .headers(OwnedHeaders::new().insert(Header {
                key: "traceparent",
                value: Some(trace.as_bytes()),
            }));
        p.send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .expect("produced");
    }
    let sink = Running::start(config, Arc::new(Patches), store.clone());
    wait_caught_up(&group, &sources, WAIT).await;
    // m's good changes (1 and 3) are applied; only the cancellation is dead-lettered.
    let rows = store.rows();
    assert_eq!(rows.get("m"), Some(&(3, "OrderConfirmed".to_string())));
    assert_eq!(rows.get("n"), Some(&(1, "OrderPlaced".to_string())));
    assert_eq!(sink.metrics.dlq(), 1);
    let letters = read_all(&dlq_topic(&sources[0].topic), Duration::from_secs(3), WAIT);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let h = &letters[0].headers;
    assert_eq!(h.get(SOURCE_OFFSET).map(String::as_str), Some("1"));
    assert_eq!(h.get(ERROR_CLASS).map(String::as_str), Some("rejected"));
    // Where it came from: the original headers and timestamp, and whose failure it is.
    assert_eq!(h.get("traceparent").map(String::as_str), Some("trace-1"));
    assert_eq!(
        h.get(SOURCE_TIMESTAMP).map(String::as_str),
        Some((SENT_AT + 1).to_string().as_str())
    );
    assert_eq!(h.get(CONSUMER_GROUP), Some(&group));
    sink.stop().await;
}

#[tokio::test]
async fn a_dead_letter_spike_pauses_the_sink_instead_of_emptying_it_into_the_dlq() {
    let sources = topics("runner-spike", &[EventStream::Orders], 1).await;
    let store = Arc::new(Memory::default());
    let mut config = sink_config("runner-spike", &sources);
    // Low, so that whichever batch the first bad record lands in trips it: after the four good
    // records, k bad ones are at least a fifth of the window.
    config.dlq_pause_ratio = 0.1;
    config.dlq_pause_min = 1;
    config.dlq_pause_window = 100;
    let group = config.group_id.clone();
    let codec = codec();
    let mut log = orders_log(2).await;
    for seq in 1..=20 {
        log.push(
            encode(
                &codec,
                EventStream::Orders,
                "bad",
                &order_placed("bad", "u1", seq, 100),
            )
            .await,
        );
    }
    produce(&sources, &log[..4]).await;
    let sink = Running::start(config, Arc::new(Statuses), store.clone());
    wait_caught_up(&group, &sources, WAIT).await;
    produce(&sources, &log[4..]).await;
    eventually(
        "the sink to pause on the dead-letter rate",
        WAIT,
        || async { sink.metrics.is_dlq_paused().then_some(()) },
    )
    .await;
    let calls = store.calls.load(Ordering::SeqCst);
    eventually("the held batch to be tried again", WAIT, || async {
        (store.calls.load(Ordering::SeqCst) > calls + 2).then_some(())
    })
    .await;
    assert_eq!(sink.metrics.dlq(), 0);
    assert_eq!(committed_total(&group, &sources), 4, "nothing acknowledged");
    assert!(read_all(
        &dlq_topic(&sources[0].topic),
        Duration::from_secs(2),
        Duration::from_secs(10)
    )
    .is_empty());
    assert_eq!(
        sink.sample(
            "tributary_sink_dlq_paused{component_id=\"runner-spike\",component_kind=\"sink\"}"
        ),
        Some(1.0)
    );

    // The cause is fixed (here: the store takes them): the held records are applied.
    store.lenient.store(true, Ordering::SeqCst);
    wait_caught_up(&group, &sources, WAIT).await;
    assert_eq!(store.rows().get("bad").map(|r| r.0), Some(20));
    assert_eq!(sink.metrics.dlq(), 0);
    assert!(!sink.metrics.is_dlq_paused());
    sink.stop().await;
}
