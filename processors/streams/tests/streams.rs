//! Acceptance tests of the streams runtime against the real broker (TRIBUTARY_KAFKA_BROKERS).
//! Every test uses its own topics, group and state directory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::Registry;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::dlq;
use tributary_runtime::kafka::{
    client_config, close_consumer, ensure_topic, unique_name, TopicSpec,
};
use tributary_streams::{
    Context, Error, KillPoint, Processor, Record, StreamsApp, TimeKind, Timer,
};

const PARTITIONS: i32 = 3;
const DEADLINE: Duration = Duration::from_secs(45);

fn brokers() -> String {
    KAFKA_BROKERS.get()
}

struct Names {
    app: String,
    input: String,
    output: String,
}

async fn setup(prefix: &str) -> Names {
    // RUST_LOG=tributary_streams=info shows rebalances and restores.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let n = Names {
        app: unique_name(prefix),
        input: unique_name(&format!("{prefix}-in")),
        output: unique_name(&format!("{prefix}-out")),
    };
    let spec = TopicSpec {
        partitions: PARTITIONS,
        compacted: false,
    };
    ensure_topic(&brokers(), &n.input, spec)
        .await
        .expect("input topic");
    ensure_topic(&brokers(), &n.output, spec)
        .await
        .expect("output topic");
    n
}

/// Deletes the test's topics: input, output, the input's DLQ and the app's changelogs.
async fn cleanup(n: &Names) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client_config(&brokers()).create().expect("admin");
    let topics = [
        n.input.clone(),
        n.output.clone(),
        dlq::dlq_topic(&n.input),
        format!("{}-counts-changelog", n.app),
        format!("{}-_timers-changelog", n.app),
        format!("{}-_commits", n.app),
    ];
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // Best effort: a topic a test did not need (no store) is simply not there.
    let _ = admin.delete_topics(&refs, &opts).await;
}

/// Produces `(key, value, timestamp)` records and waits for every acknowledgement.
async fn produce(topic: &str, records: &[(Vec<u8>, Vec<u8>, Option<i64>)]) {
    let p: FutureProducer = client_config(&brokers())
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let futs: Vec<_> = records
        .iter()
        .map(|(k, v, ts)| {
            let mut r = FutureRecord::to(topic)
                .key(k.as_slice())
                .payload(v.as_slice());
            if let Some(ts) = ts {
                r = r.timestamp(*ts);
            }
            p.send_result(r).map_err(|(e, _)| e).expect("enqueue")
        })
        .collect();
    for f in futs {
        f.await.expect("delivery").expect("acknowledged");
    }
}

async fn produce_words(topic: &str, words: &[String]) {
    let recs: Vec<_> = words
        .iter()
        .map(|w| (w.as_bytes().to_vec(), w.as_bytes().to_vec(), None))
        .collect();
    produce(topic, &recs).await;
}

/// `n` words over 20 distinct ones, unevenly, and their counts.
fn words(n: usize, salt: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("w{}", (i * 7 + salt) % 20 + (i % 3)))
        .collect()
}

fn counts(words: &[String]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for w in words {
        *m.entry(w.clone()).or_insert(0) += 1;
    }
    m
}

struct Msg {
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// Reads `topic` from the start until `done` holds for what was read, or the deadline passes.
fn read_until(topic: &str, partitions: i32, done: impl Fn(&[Msg]) -> bool) -> Vec<Msg> {
    let c: BaseConsumer = client_config(&brokers())
        .set("group.id", unique_name("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let deadline = Instant::now() + DEADLINE;
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let mut polled = false;
        while let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            polled = true;
            let headers = m
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            out.push(Msg {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().unwrap_or_default().to_vec(),
                value: m.payload().unwrap_or_default().to_vec(),
                headers,
            });
        }
        if !polled && done(&out) {
            break;
        }
    }
    close_consumer(&c, Duration::from_secs(5));
    out
}

/// The last value per key, as text: what a compacted view of the output would hold.
fn last_values(msgs: &[Msg]) -> BTreeMap<String, String> {
    msgs.iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.key).into_owned(),
                String::from_utf8_lossy(&m.value).into_owned(),
            )
        })
        .collect()
}

fn as_text(expected: &BTreeMap<String, u64>) -> BTreeMap<String, String> {
    expected
        .iter()
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect()
}

/// Counts words into the `counts` store and emits `(word, count)` on every change. A value that
/// is not UTF-8 is rejected (DLQ); `flaky` fails twice with a retriable error first.
#[derive(Default, Clone)]
struct WordCount {
    output: String,
    delay: Option<Duration>,
    flaky: Arc<AtomicU32>,
    tasks: Option<Arc<Mutex<BTreeSet<i32>>>>,
    task: i32,
    /// Counts `init` calls: one per task per assignment.
    inits: Arc<AtomicU32>,
    /// Every record fails retriably until this instant.
    failing_until: Option<Arc<Mutex<Instant>>>,
    /// A word starting with `stall` blocks the engine for `stall_for`, once.
    stall: Option<Arc<std::sync::atomic::AtomicBool>>,
    stall_for: Duration,
    /// Backpressure: the input is admitted only while this is true.
    gate: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Processor for WordCount {
    fn init(&mut self, ctx: &mut Context<'_>) -> tributary_streams::Result<()> {
        self.task = ctx.task();
        self.inits.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = &self.tasks {
            t.lock().expect("lock").insert(ctx.task());
        }
        Ok(())
    }

    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> tributary_streams::Result<()> {
        if let Some(d) = self.delay {
            std::thread::sleep(d);
        }
        let value = record.value.unwrap_or_default();
        let word = std::str::from_utf8(&value)
            .map_err(|e| Error::rejected("decode", format!("word is not UTF-8: {e}")))?;
        if word == "flaky" && self.flaky.fetch_add(1, Ordering::SeqCst) < 2 {
            return Err(Error::transient("flaky dependency"));
        }
        let current = ctx
            .get("counts", word.as_bytes())?
            .map(|v| u64::from_be_bytes(v.try_into().unwrap_or([0; 8])))
            .unwrap_or(0);
        if word == "boom" {
            panic!("boom: a processor bug");
        }
        if let Some(stall) = &self.stall {
            if word.starts_with("stall") && !stall.swap(true, Ordering::SeqCst) {
                // Stuck inside the processor, longer than max.poll.interval.ms: the group
                // evicts this member.
                std::thread::sleep(self.stall_for);
            }
        }
        if let Some(until) = &self.failing_until {
            if Instant::now() < *until.lock().expect("lock") {
                return Err(Error::transient("dependency down"));
            }
        }
        // The state a record sees never holds its own effect (an uncommitted batch is rolled
        // back on restore), so a plain read-modify-write is exact across crashes.
        let next = current + 1;
        ctx.put("counts", word.as_bytes(), &next.to_be_bytes())?;
        ctx.forward(
            &self.output,
            Some(word.as_bytes()),
            Some(next.to_string().as_bytes()),
        );
        Ok(())
    }

    fn close(&mut self) {
        if let Some(t) = &self.tasks {
            t.lock().expect("lock").remove(&self.task);
        }
    }

    fn admits(&self, _topic: &str, _load: &tributary_streams::Load) -> bool {
        self.gate.as_ref().is_none_or(|g| g.load(Ordering::SeqCst))
    }
}

struct Running {
    shutdown: CancellationToken,
    kill: CancellationToken,
    handle: JoinHandle<tributary_streams::Result<()>>,
    registry: Registry,
    // A failed assertion drops the instance: stop it, or the runtime waits for it forever.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

fn start(
    names: &Names,
    state_dir: &std::path::Path,
    proc_: WordCount,
    tune: impl FnOnce(tributary_streams::StreamsBuilder) -> tributary_streams::StreamsBuilder,
) -> Running {
    start_killable(names, state_dir, proc_, tune, KillPoint::AfterChangelogAck)
}

fn start_killable(
    names: &Names,
    state_dir: &std::path::Path,
    proc_: WordCount,
    tune: impl FnOnce(tributary_streams::StreamsBuilder) -> tributary_streams::StreamsBuilder,
    point: KillPoint,
) -> Running {
    let registry = Registry::new();
    let builder = StreamsApp::builder(&names.app)
        .brokers(&brokers())
        .input(&names.input)
        .store("counts")
        .state_dir(state_dir)
        .session_timeout(Duration::from_secs(6))
        .metrics_registry(&registry)
        .processor(move |_| proc_.clone());
    let app = tune(builder).build().expect("app");
    let shutdown = CancellationToken::new();
    let kill = CancellationToken::new();
    let handle = tokio::spawn(app.run_with_kill_switch(shutdown.clone(), kill.clone(), point));
    Running {
        _stop_on_drop: shutdown.clone().drop_guard(),
        shutdown,
        kill,
        handle,
        registry,
    }
}

impl Running {
    /// Graceful shutdown; returns how long it took.
    async fn stop(self) -> Duration {
        let started = Instant::now();
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("shutdown within 30 s")
            .expect("engine task");
        r.expect("clean run");
        started.elapsed()
    }

    async fn kill(self) {
        self.kill.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("kill within 30 s");
    }

    fn metric(&self, name: &str) -> u64 {
        Running::read_metric(&self.registry, name)
    }

    fn read_metric(registry: &Registry, name: &str) -> u64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .map(|m| (m.counter.value() + m.gauge.value()) as u64)
            .sum()
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the output's last value per key equals `expected`.
async fn expect_counts(output: &str, expected: &BTreeMap<String, u64>) {
    let output = output.to_string();
    let want = as_text(expected);
    let want2 = want.clone();
    let got = tokio::task::spawn_blocking(move || {
        last_values(&read_until(&output, PARTITIONS, |m| {
            last_values(m) == want2
        }))
    })
    .await
    .expect("reader");
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_clean_run_is_exact() {
    let n = setup("wc-clean").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = words(3000, 1);
    produce_words(&n.input, &input).await;
    let app = start(
        &n,
        dir.path(),
        WordCount {
            output: n.output.clone(),
            ..Default::default()
        },
        |b| b,
    );
    expect_counts(&n.output, &counts(&input)).await;
    wait_for("records_in", || {
        app.metric("tributary_component_received_records_total") == input.len() as u64
    })
    .await;
    assert!(app.metric("tributary_processor_commits_total") > 0);
    let families: Vec<String> = app
        .registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    for name in [
        "tributary_processor_consumer_lag",
        "tributary_processor_process_duration_seconds",
        "tributary_component_sent_records_total",
    ] {
        assert!(families.iter().any(|f| f == name), "{name} missing");
    }
    assert_eq!(
        app.metric("tributary_component_sent_records_total"),
        input.len() as u64,
        "one output per word"
    );
    let took = app.stop().await;
    // Commit, flush and leave the group, bounded by the close timeout (10 s), in practice fast.
    assert!(took < Duration::from_secs(12), "shutdown took {took:?}");
    eprintln!("graceful shutdown took {took:?}");
    cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_a_task_does_not_admit_stays_unread_until_it_is_admitted() {
    let n = setup("wc-gate").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let input = words(300, 4);
    let app = start(
        &n,
        dir.path(),
        WordCount {
            output: n.output.clone(),
            gate: Some(gate.clone()),
            ..Default::default()
        },
        |b| b,
    );
    produce_words(&n.input, &input).await;
    // Every task holds its input back from the moment it is ready: nothing is read.
    wait_for("three inputs held", || {
        app.metric("tributary_processor_inputs_held") == PARTITIONS as u64
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.metric("tributary_component_received_records_total"), 0);
    assert_eq!(
        app.metric("tributary_processor_backpressure_pauses_total"),
        PARTITIONS as u64
    );

    // Admitted again: everything is read, exactly once per word.
    gate.store(true, Ordering::SeqCst);
    expect_counts(&n.output, &counts(&input)).await;
    wait_for("records_in", || {
        app.metric("tributary_component_received_records_total") == input.len() as u64
    })
    .await;
    assert_eq!(app.metric("tributary_processor_inputs_held"), 0);
    app.stop().await;
    cleanup(&n).await;
}

/// Kills an instance at `point` of a commit part way through the input, restarts it on the same
/// state directory, and checks that every word's last emitted count is exact: the killed
/// batch's state is rolled back (or, past the commit marker, kept and its input skipped), and
/// every output exists at least once.
async fn kill_and_restart_at(point: KillPoint, salt: usize) {
    let n = setup(&format!("wc-kill{salt}")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = words(1500, salt);
    produce_words(&n.input, &input).await;
    let slow = WordCount {
        output: n.output.clone(),
        delay: Some(Duration::from_millis(2)),
        ..Default::default()
    };
    let first = start_killable(&n, dir.path(), slow, |b| b.max_batch(50), point);
    wait_for("part of the input", || {
        first.metric("tributary_component_received_records_total") >= 300
    })
    .await;
    let registry = first.registry.clone();
    first.kill().await;
    let committed_before_kill =
        Running::read_metric(&registry, "tributary_component_received_records_total");
    assert!(
        committed_before_kill < input.len() as u64,
        "killed part way"
    );

    let wc = WordCount {
        output: n.output.clone(),
        ..Default::default()
    };
    let second = start(&n, dir.path(), wc, |b| b);
    expect_counts(&n.output, &counts(&input)).await;
    wait_for("the rest of the input to be committed", || {
        committed_before_kill
            + second.metric("tributary_component_received_records_total")
            + second.metric("tributary_processor_skipped_records_total")
            >= input.len() as u64
    })
    .await;
    // Every word of the input has at least one output (none lost), and each word's outputs
    // count up to its exact total.
    let out = n.output.clone();
    let total = input.len();
    let msgs =
        tokio::task::spawn_blocking(move || read_until(&out, PARTITIONS, |m| m.len() >= total))
            .await
            .expect("reader");
    assert!(
        msgs.len() >= input.len(),
        "{} outputs for {} inputs",
        msgs.len(),
        input.len()
    );
    if point != KillPoint::BeforeAcks {
        // The restart read the killed batch's changelog tail past the local checkpoint.
        assert!(second.metric("tributary_processor_restore_records_total") > 0);
    }
    if point == KillPoint::AfterMarker {
        // The killed batch was committed by its marker, not by the group's offsets: its
        // records were fetched again and skipped.
        assert!(second.metric("tributary_processor_skipped_records_total") > 0);
    }
    second.stop().await;
    cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_is_exact_after_a_kill_between_send_and_ack() {
    kill_and_restart_at(KillPoint::BeforeAcks, 21).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_is_exact_after_a_kill_between_changelog_ack_and_commit_point() {
    kill_and_restart_at(KillPoint::AfterChangelogAck, 22).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn word_count_is_exact_after_a_kill_between_commit_point_and_offset_commit() {
    kill_and_restart_at(KillPoint::AfterMarker, 23).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_reads_only_the_changelog_tail_or_all_of_it_when_local_state_is_gone() {
    let n = setup("wc-restore").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let wc = WordCount {
        output: n.output.clone(),
        ..Default::default()
    };
    let mut all = words(600, 3);
    produce_words(&n.input, &all).await;
    let app = start(&n, dir.path(), wc.clone(), |b| b);
    expect_counts(&n.output, &counts(&all)).await;
    assert_eq!(app.metric("tributary_processor_restore_records_total"), 0);
    app.stop().await;

    // Local copy intact: nothing is read from the changelog, and counting goes on from it.
    let more = words(90, 4);
    produce_words(&n.input, &more).await;
    all.extend(more);
    let app = start(&n, dir.path(), wc.clone(), |b| b);
    expect_counts(&n.output, &counts(&all)).await;
    assert_eq!(app.metric("tributary_processor_restore_records_total"), 0);
    app.stop().await;

    // Local copy gone: the whole changelog is read and the counts go on exactly.
    std::fs::remove_dir_all(dir.path().join(&n.app)).expect("remove state");
    let more = words(90, 5);
    produce_words(&n.input, &more).await;
    all.extend(more);
    let app = start(&n, dir.path(), wc, |b| b);
    expect_counts(&n.output, &counts(&all)).await;
    let restored = app.metric("tributary_processor_restore_records_total");
    // At least one record per distinct word (fewer than one per write: the engine only logs the
    // last value of a key per commit).
    assert!(restored >= counts(&all).len() as u64, "restored {restored}");
    app.stop().await;
    cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_tasks_and_failover_keeps_state() {
    let n = setup("wc-group").await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let tasks_a = Arc::new(Mutex::new(BTreeSet::new()));
    let tasks_b = Arc::new(Mutex::new(BTreeSet::new()));
    let proc_for = |tasks: &Arc<Mutex<BTreeSet<i32>>>| WordCount {
        output: n.output.clone(),
        tasks: Some(tasks.clone()),
        ..Default::default()
    };
    let mut all = words(300, 6);
    produce_words(&n.input, &all).await;
    let a = start(&n, dir_a.path(), proc_for(&tasks_a), |b| b);
    expect_counts(&n.output, &counts(&all)).await;
    assert_eq!(tasks_a.lock().expect("lock").len(), PARTITIONS as usize);

    let b = start(&n, dir_b.path(), proc_for(&tasks_b), |b| b);
    wait_for("both instances to own tasks", || {
        let (ta, tb) = (tasks_a.lock().expect("a"), tasks_b.lock().expect("b"));
        !ta.is_empty() && !tb.is_empty() && ta.len() + tb.len() == PARTITIONS as usize
    })
    .await;
    let more = words(300, 7);
    produce_words(&n.input, &more).await;
    all.extend(more);
    expect_counts(&n.output, &counts(&all)).await;
    assert!(b.metric("tributary_component_received_records_total") > 0);

    b.stop().await;
    wait_for("instance A to own every task again", || {
        tasks_a.lock().expect("a").len() == PARTITIONS as usize
    })
    .await;
    let more = words(300, 8);
    produce_words(&n.input, &more).await;
    all.extend(more);
    expect_counts(&n.output, &counts(&all)).await;
    a.stop().await;
    cleanup(&n).await;
}

/// Schedules, on its first record, a wall-clock timer a few seconds ahead and a stream-time timer
/// 1 s of data ahead; emits `fired:<name>` when one fires.
#[derive(Clone)]
struct TimerProc {
    output: String,
}

impl Processor for TimerProc {
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> tributary_streams::Result<()> {
        if record.value.as_deref() == Some(b"start") {
            let now = tributary_runtime::clock::now_ms();
            ctx.schedule("wall", TimeKind::WallClock, now + 5000)?;
            let ts = record.timestamp.unwrap_or(0);
            ctx.schedule("stream", TimeKind::StreamTime, ts + 1000)?;
            ctx.forward(&self.output, Some(b"scheduled"), Some(b"scheduled"));
        }
        Ok(())
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>, timer: &Timer) -> tributary_streams::Result<()> {
        let msg = format!("fired:{}", timer.name);
        ctx.forward(&self.output, Some(msg.as_bytes()), Some(msg.as_bytes()));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_scheduled_before_a_restart_fire_after_it() {
    let n = setup("timers").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let start_app = || {
        let registry = Registry::new();
        let p = TimerProc {
            output: n.output.clone(),
        };
        let app = StreamsApp::builder(&n.app)
            .brokers(&brokers())
            .input(&n.input)
            .state_dir(dir.path())
            .session_timeout(Duration::from_secs(6))
            .metrics_registry(&registry)
            .processor(move |_| p.clone())
            .build()
            .expect("app");
        let token = CancellationToken::new();
        (token.clone(), tokio::spawn(app.run(token)))
    };
    let t0 = 1_700_000_000_000i64;
    produce(&n.input, &[(b"k".to_vec(), b"start".to_vec(), Some(t0))]).await;
    let (token, handle) = start_app();
    let _stop_on_drop = token.clone().drop_guard();
    let out = n.output.clone();
    let seen = tokio::task::spawn_blocking(move || {
        read_until(&out, PARTITIONS, |m| {
            m.iter().any(|m| m.value == b"scheduled")
        })
    })
    .await
    .expect("reader");
    token.cancel();
    handle.await.expect("join").expect("clean run");
    assert!(
        seen.iter().all(|m| !m.value.starts_with(b"fired")),
        "no timer fires before the restart"
    );

    let (token, handle) = start_app();
    let _stop_on_drop = token.clone().drop_guard();
    // Stream time moves past the stream timer only with this record.
    produce(
        &n.input,
        &[(b"k".to_vec(), b"tick".to_vec(), Some(t0 + 2000))],
    )
    .await;
    let out = n.output.clone();
    let msgs = tokio::task::spawn_blocking(move || {
        read_until(&out, PARTITIONS, |m| {
            m.iter().any(|m| m.value == b"fired:wall")
                && m.iter().any(|m| m.value == b"fired:stream")
        })
    })
    .await
    .expect("reader");
    token.cancel();
    handle.await.expect("join").expect("clean run");
    for name in ["fired:wall", "fired:stream"] {
        let fired = msgs.iter().filter(|m| m.value == name.as_bytes()).count();
        assert_eq!(fired, 1, "{name} fired {fired} times");
    }
    cleanup(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_go_to_the_dlq_and_processing_goes_on() {
    let n = setup("dlq").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut recs: Vec<(Vec<u8>, Vec<u8>, Option<i64>)> = Vec::new();
    let good = words(200, 9);
    for (i, w) in good.iter().enumerate() {
        recs.push((w.as_bytes().to_vec(), w.as_bytes().to_vec(), None));
        if i % 50 == 0 {
            recs.push((b"bad".to_vec(), vec![0xff, 0xfe, 0x00], None));
        }
    }
    recs.push((b"flaky".to_vec(), b"flaky".to_vec(), None));
    // A processor bug: the record is dead-lettered with class `panic`, the app goes on.
    recs.push((b"boom".to_vec(), b"boom".to_vec(), None));
    produce(&n.input, &recs).await;
    let mut expected = counts(&good);
    expected.insert("flaky".into(), 1);

    let wc = WordCount {
        output: n.output.clone(),
        ..Default::default()
    };
    let app = start(&n, dir.path(), wc, |b| {
        b.max_retry_backoff(Duration::from_millis(100))
    });
    expect_counts(&n.output, &expected).await;
    let dlq_topic = dlq::dlq_topic(&n.input);
    let mut dlq = tokio::task::spawn_blocking(move || read_until(&dlq_topic, 1, |m| m.len() >= 5))
        .await
        .expect("reader");
    assert_eq!(
        dlq.len(),
        5,
        "one dead letter per corrupt record and one for the panic"
    );
    let input = read_until(&n.input, PARTITIONS, |m| m.len() >= recs.len());
    let panicked: Vec<_> = dlq.iter().filter(|d| d.key == b"boom").collect();
    assert_eq!(panicked.len(), 1);
    let class = panicked[0]
        .headers
        .iter()
        .find(|(k, _)| k == dlq::ERROR_CLASS)
        .map(|(_, v)| v.clone());
    assert_eq!(class.as_deref(), Some(&b"panic"[..]));
    dlq.retain(|d| d.key != b"boom");
    for d in &dlq {
        let h = |name: &str| {
            d.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_else(|| panic!("header {name} missing"))
        };
        assert_eq!(h(dlq::SOURCE_TOPIC), n.input);
        assert_eq!(h(dlq::ERROR_CLASS), "decode");
        assert!(h(dlq::ERROR_MESSAGE).contains("not UTF-8"));
        let (p, o): (i32, i64) = (
            h(dlq::SOURCE_PARTITION).parse().expect("partition"),
            h(dlq::SOURCE_OFFSET).parse().expect("offset"),
        );
        let src = input
            .iter()
            .find(|m| m.partition == p && m.offset == o)
            .expect("source record exists");
        assert_eq!(
            src.value, d.value,
            "the dead letter carries the original bytes"
        );
    }
    wait_for("dlq metric", || {
        app.metric("tributary_component_dlq_records_total") == 5
    })
    .await;
    app.stop().await;
    cleanup(&n).await;
}

/// Exactly-once on librdkafka's mock cluster (the local broker has no transactions), with
/// transactions failing part way and being aborted and retried.
///
/// The mock cluster does not filter aborted records for `read_committed` readers (its Fetch
/// responses list no aborted transactions and put the stable offset at the end of the log), so
/// the output cannot be checked for "no duplicates" here, and its TxnOffsetCommit does not store
/// offsets. What is checked: aborts happened and were recovered from, the final counts are
/// exact, and every input record was counted in exactly one committed transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_the_mock_cluster_survives_aborted_transactions() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use tributary_streams::Guarantee;

    let words = words(600, 10);
    let (mock, app_id, input, output) = mock_setup(&words).await;
    let bootstrap = mock.bootstrap_servers();

    // The first transactions fail with errors that require an abort: a produce refused, then
    // the input offsets refused.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    mock.request_errors(
        RDKafkaApiKey::AddOffsetsToTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
    );
    let registry = Registry::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let wc = WordCount {
        output: output.clone(),
        ..Default::default()
    };
    let app = StreamsApp::builder(&app_id)
        .brokers(&bootstrap)
        .input(&input)
        .store("counts")
        .state_dir(dir.path())
        .guarantee(Guarantee::ExactlyOnce)
        .create_topics(false)
        .max_batch(100)
        .session_timeout(Duration::from_secs(6))
        .metrics_registry(&registry)
        .processor(move |_| wc.clone())
        .build()
        .expect("app");
    let token = CancellationToken::new();
    let _stop_on_drop = token.clone().drop_guard();
    let handle = tokio::spawn(app.run(token.clone()));

    let expected = counts(&words);
    let (bs, out, n) = (bootstrap.clone(), output.clone(), words.len());
    let msgs = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = client_config(&bs)
            .set("group.id", unique_name("eos-reader"))
            .set("isolation.level", "read_committed")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&out, p, Offset::Beginning)
                .expect("tpl");
        }
        c.assign(&tpl).expect("assign");
        let deadline = Instant::now() + DEADLINE;
        let mut got: Vec<(String, String)> = Vec::new();
        // Read past the expected count for a while: a duplicate would show up as extra records.
        let mut quiet_since: Option<Instant> = None;
        while Instant::now() < deadline {
            match c.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    quiet_since = None;
                    got.push((
                        String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                        String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                    ));
                }
                _ => {
                    if got.len() >= n {
                        let q = *quiet_since.get_or_insert_with(Instant::now);
                        if q.elapsed() > Duration::from_secs(2) {
                            break;
                        }
                    }
                }
            }
        }
        close_consumer(&c, Duration::from_secs(5));
        got
    })
    .await
    .expect("reader");
    let records_in =
        || Running::read_metric(&registry, "tributary_component_received_records_total");
    wait_for("every input to be committed", || records_in() >= n as u64).await;
    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("shutdown within 30 s")
        .expect("join")
        .expect("clean run");
    // Records of aborted transactions are read again and counted only when they commit.
    assert_eq!(
        records_in(),
        n as u64,
        "each input in exactly one committed transaction"
    );

    assert!(msgs.len() >= words.len(), "every input has an output");
    let last: BTreeMap<String, String> = msgs.into_iter().collect();
    assert_eq!(last, as_text(&expected));
    let aborted = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "tributary_processor_commits_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_label().iter().any(|l| l.value() == "aborted"))
        .map(|m| m.counter.value())
        .sum::<f64>();
    assert!(
        aborted >= 1.0,
        "the injected errors aborted at least one transaction"
    );
}

/// A mock cluster with the input (holding `words`), output, changelog and DLQ topics of a fresh
/// app id: the mock has no CreateTopics, so the app cannot create them itself.
async fn mock_setup(
    words: &[String],
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
    String,
    String,
) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mock = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
    let bootstrap = mock.bootstrap_servers();
    let app_id = unique_name("eos");
    let (input, output) = (unique_name("eos-in"), unique_name("eos-out"));
    for t in [&input, &output] {
        mock.create_topic(t, PARTITIONS, 1).expect("topic");
    }
    for store in ["counts", "_timers"] {
        mock.create_topic(&format!("{app_id}-{store}-changelog"), PARTITIONS, 1)
            .expect("changelog");
    }
    mock.create_topic(&dlq::dlq_topic(&input), 1, 1)
        .expect("dlq");
    mock.create_topic(&format!("{app_id}-_commits"), PARTITIONS, 1)
        .expect("commit markers");
    let p: FutureProducer = client_config(&bootstrap).create().expect("producer");
    for w in words {
        p.send_result(FutureRecord::to(&input).key(w.as_str()).payload(w.as_str()))
            .map_err(|(e, _)| e)
            .expect("enqueue")
            .await
            .expect("delivery")
            .expect("acknowledged");
    }
    (mock, app_id, input, output)
}

/// A fenced producer (another instance took over the transactional id or the group moved on)
/// cannot go on: the app stops by itself, within bounds, with the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_stops_cleanly_when_the_producer_is_fenced() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use tributary_streams::Guarantee;

    let words = words(50, 11);
    let (mock, app_id, input, output) = mock_setup(&words).await;
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_PRODUCER_FENCED; 4],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let wc = WordCount {
        output,
        ..Default::default()
    };
    let app = StreamsApp::builder(&app_id)
        .brokers(&mock.bootstrap_servers())
        .input(&input)
        .store("counts")
        .state_dir(dir.path())
        .guarantee(Guarantee::ExactlyOnce)
        .create_topics(false)
        .session_timeout(Duration::from_secs(6))
        .processor(move |_| wc.clone())
        .build()
        .expect("app");
    let token = CancellationToken::new();
    let _stop_on_drop = token.clone().drop_guard();
    let result = tokio::time::timeout(Duration::from_secs(40), app.run(token.clone()))
        .await
        .expect("the app stops by itself");
    let err = result.expect_err("a fenced producer is fatal");
    assert!(!err.retriable(), "{err}");
}

/// Every record fails retriably for 3× `max.poll.interval.ms`: the member keeps polling (its
/// partitions paused), is never evicted, and once the dependency is back the counts are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retriable_failure_neither_evicts_the_member_nor_changes_the_outcome() {
    let n = setup("wc-retry").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = words(300, 31);
    produce_words(&n.input, &input).await;
    let max_poll = Duration::from_secs(6);
    let until = Arc::new(Mutex::new(Instant::now() + max_poll * 3));
    let wc = WordCount {
        output: n.output.clone(),
        failing_until: Some(until.clone()),
        ..Default::default()
    };
    let inits = wc.inits.clone();
    let app = start(&n, dir.path(), wc, |b| {
        b.max_poll_interval(max_poll)
            .max_retry_backoff(Duration::from_millis(500))
    });
    tokio::time::sleep(max_poll * 2).await;
    assert!(
        app.metric("tributary_processor_task_retrying_seconds") > 0,
        "the retrying gauge shows the stuck tasks"
    );
    expect_counts(&n.output, &counts(&input)).await;
    assert!(app.metric("tributary_component_retries_total") > 0);
    assert_eq!(
        inits.load(Ordering::SeqCst),
        PARTITIONS as u32,
        "one assignment only: no eviction, no rebalance"
    );
    wait_for("the gauge back at 0", || {
        app.metric("tributary_processor_task_retrying_seconds") == 0
    })
    .await;
    app.stop().await;
    cleanup(&n).await;
}

/// Instance A is stuck inside its processor past `max.poll.interval.ms`: the group moves its
/// tasks to B, which counts more words; A comes back, B leaves, and A's tasks (restored against
/// the changelog, which B wrote to) count on from B's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_evicted_while_stuck_reads_the_interim_owners_writes_when_tasks_return() {
    let n = setup("wc-stall").await;
    let (dir_a, dir_b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let max_poll = Duration::from_secs(6);
    let mut all = words(300, 41);
    produce_words(&n.input, &all).await;
    let stall = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let a = start(
        &n,
        dir_a.path(),
        WordCount {
            output: n.output.clone(),
            stall: Some(stall.clone()),
            stall_for: max_poll * 2,
            ..Default::default()
        },
        |b| b.max_poll_interval(max_poll),
    );
    expect_counts(&n.output, &counts(&all)).await;
    let b = start(
        &n,
        dir_b.path(),
        WordCount {
            output: n.output.clone(),
            ..Default::default()
        },
        |b| b.max_poll_interval(max_poll),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    // `stall-*` on every partition: whichever partitions A owns, it gets stuck on one.
    let stall_words: Vec<String> = (0..30).map(|i| format!("stall-{i}")).collect();
    produce_words(&n.input, &stall_words).await;
    all.extend(stall_words);
    wait_for("A to get stuck", || stall.load(Ordering::SeqCst)).await;
    // While A is stuck (and evicted), B owns everything and counts more words.
    let more = words(300, 42);
    produce_words(&n.input, &more).await;
    all.extend(more);
    expect_counts(&n.output, &counts(&all)).await;
    b.stop().await;
    // A alone again: its tasks come back with B's writes, so the counts go on exactly.
    let more = words(300, 43);
    produce_words(&n.input, &more).await;
    all.extend(more);
    expect_counts(&n.output, &counts(&all)).await;
    a.stop().await;
    cleanup(&n).await;
}

/// The changelog topic is deleted and recreated under an intact local store: the store is
/// found stale (its checkpoint is past the new topic's end), wiped, and rebuilt from the new
/// (empty) changelog, so counting starts over instead of going on from state that no longer
/// exists in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_changelog_makes_the_stale_local_store_rebuild() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let n = setup("wc-recreate").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let wc = WordCount {
        output: n.output.clone(),
        ..Default::default()
    };
    let first = words(200, 51);
    produce_words(&n.input, &first).await;
    let app = start(&n, dir.path(), wc.clone(), |b| b);
    expect_counts(&n.output, &counts(&first)).await;
    app.stop().await;

    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client_config(&brokers()).create().expect("admin");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for t in [
        format!("{}-counts-changelog", n.app),
        format!("{}-_commits", n.app),
    ] {
        let _ = admin.delete_topics(&[t.as_str()], &opts).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        ensure_topic(
            &brokers(),
            &t,
            TopicSpec {
                partitions: PARTITIONS,
                compacted: true,
            },
        )
        .await
        .expect("recreate");
    }
    // New words only: their counts start at 1 again; a stale store would also be harmless for
    // them, so one word of the first run is sent again too and must count as its first.
    let again = vec![first[0].clone()];
    produce_words(&n.input, &again).await;
    let app = start(&n, dir.path(), wc, |b| b);
    wait_for("the stale store to be detected", || {
        app.metric("tributary_processor_stale_stores_total") > 0
    })
    .await;
    let word = first[0].clone();
    let out = n.output.clone();
    let msgs = tokio::task::spawn_blocking(move || {
        read_until(&out, PARTITIONS, |m| {
            last_values(m).get(&word).is_some_and(|v| v == "1")
        })
    })
    .await
    .expect("reader");
    assert_eq!(
        last_values(&msgs).get(&first[0]).map(String::as_str),
        Some("1")
    );
    app.stop().await;
    cleanup(&n).await;
}

/// At-least-once on the mock cluster with output deliveries failing (produce requests refused):
/// the batch is forgotten, its keys rolled back, its records read again after a back-off, and
/// in the end every input has its output and every count is exact (at least once, never zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_survives_failed_output_deliveries_on_the_mock_cluster() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let words = words(600, 12);
    let (mock, app_id, input, output) = mock_setup(&words).await;
    let bootstrap = mock.bootstrap_servers();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 3],
    );
    let registry = Registry::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let wc = WordCount {
        output: output.clone(),
        ..Default::default()
    };
    let app = StreamsApp::builder(&app_id)
        .brokers(&bootstrap)
        .input(&input)
        .store("counts")
        .state_dir(dir.path())
        .create_topics(false)
        .max_batch(100)
        .max_retry_backoff(Duration::from_millis(500))
        .session_timeout(Duration::from_secs(6))
        .metrics_registry(&registry)
        .processor(move |_| wc.clone())
        .build()
        .expect("app");
    let token = CancellationToken::new();
    let _stop_on_drop = token.clone().drop_guard();
    let handle = tokio::spawn(app.run(token.clone()));
    let records_in =
        || Running::read_metric(&registry, "tributary_component_received_records_total");
    wait_for("every input to be committed", || {
        records_in() >= words.len() as u64
    })
    .await;

    let (bs, out, n) = (bootstrap.clone(), output.clone(), words.len());
    let msgs = tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = client_config(&bs)
            .set("group.id", unique_name("alos-reader"))
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(&out, p, Offset::Beginning)
                .expect("tpl");
        }
        c.assign(&tpl).expect("assign");
        let deadline = Instant::now() + DEADLINE;
        let mut got: Vec<(String, String)> = Vec::new();
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        let expected = as_text(&counts(&words_again(n)));
        while Instant::now() < deadline && (got.len() < n || last != expected) {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let kv = (
                    String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                );
                last.insert(kv.0.clone(), kv.1.clone());
                got.push(kv);
            }
        }
        close_consumer(&c, Duration::from_secs(5));
        got
    })
    .await
    .expect("reader");
    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), handle)
        .await
        .expect("shutdown within 30 s")
        .expect("join")
        .expect("clean run");
    assert!(msgs.len() >= words.len(), "every input has an output");
    let last: BTreeMap<String, String> = msgs.into_iter().collect();
    assert_eq!(last, as_text(&counts(&words)));
    let aborted = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "tributary_processor_commits_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_label().iter().any(|l| l.value() == "aborted"))
        .map(|m| m.counter.value())
        .sum::<f64>();
    assert!(aborted >= 1.0, "the refused deliveries aborted a commit");
}

fn words_again(n: usize) -> Vec<String> {
    words(n, 12)
}
