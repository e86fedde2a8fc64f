//! The runtime's rules through the test driver, with no broker: timers (due order, failing
//! callbacks dead-lettered, never dropped), panics dead-lettered, retention bounding a store.

use std::time::Duration;

use tributary_streams::testing::TestDriver;
use tributary_streams::{dlq, Context, Error, Processor, Record, TimeKind, Timer};

/// Remembers each record's value as a processed id (`seen`, with a retention), schedules a
/// wall-clock timer per value named after it, and emits `fired:<name>` when one fires. Values
/// starting with `panic` panic; timers named `bad*` fail for good, `flaky*` fail retriably.
#[derive(Clone, Default)]
struct Probe;

impl Processor for Probe {
    fn process(&mut self, ctx: &mut Context<'_>, record: Record) -> tributary_streams::Result<()> {
        let v = String::from_utf8(record.value.unwrap_or_default())
            .map_err(|_| Error::rejected("decode", "not UTF-8"))?;
        if v.starts_with("panic") {
            panic!("processor bug on {v}");
        }
        if ctx.get("seen", v.as_bytes())?.is_some() {
            ctx.forward("out", None, Some(format!("dup:{v}").as_bytes()));
            return Ok(());
        }
        ctx.put("seen", v.as_bytes(), b"")?;
        if let Some(delay) = v.strip_prefix("timer:").and_then(|d| d.split(':').nth(1)) {
            let name = v
                .strip_prefix("timer:")
                .and_then(|d| d.split(':').next())
                .unwrap_or("");
            let delay: i64 = delay
                .parse()
                .map_err(|_| Error::rejected("decode", "delay"))?;
            ctx.schedule(name, TimeKind::WallClock, ctx.now_ms() + delay)?;
        }
        ctx.forward("out", None, Some(format!("ok:{v}").as_bytes()));
        Ok(())
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>, timer: &Timer) -> tributary_streams::Result<()> {
        if timer.name.starts_with("bad") {
            return Err(Error::rejected("timer", "callback fails for good"));
        }
        if timer.name.starts_with("flaky") && ctx.get("seen", b"flaky-ok")?.is_none() {
            return Err(Error::transient("dependency down"));
        }
        ctx.forward(
            "out",
            None,
            Some(format!("fired:{}", timer.name).as_bytes()),
        );
        Ok(())
    }
}

fn values(d: &mut TestDriver) -> Vec<String> {
    d.take_outputs()
        .into_iter()
        .filter(|o| o.topic == "out")
        .map(|o| String::from_utf8(o.value.unwrap_or_default()).expect("utf8"))
        .collect()
}

fn pipe(d: &mut TestDriver, v: &str) {
    d.pipe("in", 0, None, Some(v.as_bytes()), 0).expect("pipe");
}

#[test]
fn timers_fire_in_due_order_only_when_due_and_once() {
    let mut d = TestDriver::new(&["seen"], |_| Probe);
    pipe(&mut d, "timer:b:2000");
    pipe(&mut d, "timer:a:1000");
    assert_eq!(values(&mut d), ["ok:timer:b:2000", "ok:timer:a:1000"]);
    assert_eq!(d.timers(0).expect("timers").len(), 2);
    d.advance_wall_clock(999).expect("advance");
    assert!(values(&mut d).is_empty(), "nothing due yet");
    d.advance_wall_clock(5000).expect("advance");
    assert_eq!(values(&mut d), ["fired:a", "fired:b"]);
    assert!(d.timers(0).expect("timers").is_empty());
    d.advance_wall_clock(5000).expect("advance");
    assert!(values(&mut d).is_empty(), "fired once");
}

#[test]
fn a_timer_that_fails_for_good_is_dead_lettered_and_removed_a_retriable_one_stays() {
    let mut d = TestDriver::new(&["seen"], |_| Probe);
    pipe(&mut d, "timer:bad1:10");
    pipe(&mut d, "timer:flaky1:10");
    d.take_outputs();
    // The flaky timer fails retriably: it stays scheduled and fires once its dependency is back.
    let err = d.advance_wall_clock(100);
    assert!(err.is_err_and(|e| e.retriable()));
    let outs = d.take_outputs();
    let dead: Vec<_> = outs.iter().filter(|o| o.topic == "in.dlq").collect();
    assert_eq!(dead.len(), 1, "{outs:?}");
    let header = |name: &str| {
        dead[0]
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header(dlq::SOURCE_TIMER).as_deref(), Some("bad1"));
    assert_eq!(header(dlq::ERROR_CLASS).as_deref(), Some("timer"));
    let names: Vec<String> = d
        .timers(0)
        .expect("timers")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(
        names,
        ["flaky1"],
        "the failed timer is gone, the retriable one stays"
    );
    pipe(&mut d, "flaky-ok");
    d.take_outputs();
    d.advance_wall_clock(1).expect("advance");
    assert_eq!(values(&mut d), ["fired:flaky1"]);
    assert!(d.timers(0).expect("timers").is_empty());
}

#[test]
fn a_panicking_record_is_dead_lettered_with_class_panic_and_later_records_go_on() {
    let mut d = TestDriver::new(&["seen"], |_| Probe);
    pipe(&mut d, "a");
    pipe(&mut d, "panic-now");
    pipe(&mut d, "b");
    let outs = d.take_outputs();
    let dead: Vec<_> = outs.iter().filter(|o| o.topic == "in.dlq").collect();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value.as_deref(), Some(&b"panic-now"[..]));
    let class = dead[0]
        .headers
        .iter()
        .find(|(k, _)| k == dlq::ERROR_CLASS)
        .map(|(_, v)| v.clone());
    assert_eq!(class.as_deref(), Some(dlq::PANIC_CLASS.as_bytes()));
    let ok: Vec<_> = outs
        .iter()
        .filter(|o| o.topic == "out")
        .map(|o| o.value.clone().unwrap_or_default())
        .collect();
    assert_eq!(ok, [b"ok:a".to_vec(), b"ok:b".to_vec()]);
    // The panicking record's writes were dropped.
    assert_eq!(d.get(0, "seen", b"panic-now").expect("get"), None);
}

/// A million distinct ids, a minute's retention, the clock moving 1 ms per id: the store never
/// holds much more than a minute of ids, and a duplicate inside the retention is still caught.
#[test]
fn retention_bounds_a_processed_id_store_and_duplicates_inside_it_are_caught() {
    const N: u64 = 1_000_000;
    const RETENTION_MS: i64 = 60_000;
    let mut d = TestDriver::new(&["seen"], |_| Probe)
        .with_retention("seen", Duration::from_millis(RETENTION_MS as u64));
    let mut max_len = 0;
    for i in 0..N {
        d.pipe_uncommitted("in", 0, None, Some(format!("id-{i}").as_bytes()), 0)
            .expect("pipe");
        d.clock().advance(1);
        if i % 10_000 == 9_999 {
            d.punctuate().expect("sweep and commit");
            d.take_outputs();
            max_len = max_len.max(d.len(0, "seen").expect("len"));
        }
    }
    // A minute of ids plus one sweep's lag (sweeps delete at most 1000 keys per store each).
    assert!(
        max_len <= (RETENTION_MS as u64) + 10_000,
        "store grew to {max_len} entries"
    );
    assert!(
        max_len >= RETENTION_MS as u64 / 2,
        "retention deleted too much: {max_len}"
    );
    // An id from 10 s ago is still known: its redelivery is a duplicate.
    let recent = format!("id-{}", N - 10_000);
    pipe(&mut d, &recent);
    assert_eq!(values(&mut d), [format!("dup:{recent}")]);
}
