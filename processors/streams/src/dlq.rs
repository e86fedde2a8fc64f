//! Dead letters of the runtime. The header names and the topic's name have one home,
//! `tributary_runtime::dlq`, shared with the sinks and `tributary dlq`; they are re-exported here.
//!
//! A record that cannot be processed for good (a non-retriable error, a panic in the processor)
//! is produced to the DLQ of the record its producer wrote (`<topic>.dlq`; for a record that
//! came through an internal hop, the origin's topic, see `tributary_runtime::dlq::Origin`) with
//! its key, value and the producer's headers unchanged plus the `dlq.*` headers, in the same
//! commit as the other effects of its batch, so its input offset is committed only once the
//! dead letter is acknowledged. A timer whose callback fails for good goes to the dead-letter
//! topic of the app's first input, with `dlq.source.timer` naming it.

pub use tributary_runtime::dlq::{
    dlq_topic, Origin, CONSUMER_GROUP, ERROR_CLASS, ERROR_MESSAGE, HOP_OFFSET, HOP_PARTITION,
    HOP_TOPIC, REJECTION_REASON, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TIMER, SOURCE_TIMESTAMP,
    SOURCE_TOPIC,
};

use tributary_runtime::dlq::is_pipeline_header;

use crate::error::Error;
use crate::processor::Timer;
use crate::record::{Output, Record};

/// The class of a record whose processor panicked.
pub const PANIC_CLASS: &str = "panic";

/// The record its producer wrote: the origin `record` carries from an internal hop, or
/// `record` itself.
pub fn origin_of(record: &Record) -> Origin {
    Origin::carried(&record.headers, record.key.as_deref()).unwrap_or_else(|| Origin {
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
        timestamp_ms: record.timestamp,
        key: record.key.clone(),
    })
}

/// The dead letter of `record`, failed by `group` with `class` and `message`, plus `extra`
/// headers: to the origin's DLQ, keyed as the producer keyed it.
pub(crate) fn dead_letter_of(
    record: &Record,
    group: &str,
    class: &str,
    message: &str,
    extra: Vec<(String, Vec<u8>)>,
) -> Output {
    let origin = origin_of(record);
    // The producer's headers as it wrote them: without the origin header of the hop (it is
    // in `dlq.source.*` now) and without the `dlq.*` ones of an earlier replay.
    let mut headers: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(k, _)| !is_pipeline_header(k))
        .cloned()
        .collect();
    headers.extend(origin.source_headers());
    if origin.topic != record.topic {
        headers.push((HOP_TOPIC.into(), record.topic.clone().into_bytes()));
        headers.push((
            HOP_PARTITION.into(),
            record.partition.to_string().into_bytes(),
        ));
        headers.push((HOP_OFFSET.into(), record.offset.to_string().into_bytes()));
    }
    headers.push((CONSUMER_GROUP.into(), group.as_bytes().to_vec()));
    headers.push((ERROR_CLASS.into(), class.as_bytes().to_vec()));
    headers.push((ERROR_MESSAGE.into(), message.as_bytes().to_vec()));
    headers.extend(extra);
    Output {
        topic: dlq_topic(&origin.topic),
        key: origin.key,
        value: record.value.clone(),
        headers,
    }
}

pub(crate) fn dead_letter(record: &Record, group: &str, error: &Error) -> Output {
    dead_letter_of(record, group, error.class(), &error.to_string(), Vec::new())
}

pub(crate) fn dead_timer(
    dlq: &str,
    group: &str,
    task: i32,
    timer: &Timer,
    error: &Error,
) -> Output {
    Output {
        topic: dlq.to_string(),
        key: Some(timer.name.clone().into_bytes()),
        value: None,
        headers: vec![
            (SOURCE_TIMER.into(), timer.name.clone().into_bytes()),
            (SOURCE_PARTITION.into(), task.to_string().into_bytes()),
            (CONSUMER_GROUP.into(), group.as_bytes().to_vec()),
            (ERROR_CLASS.into(), error.class().as_bytes().to_vec()),
            (ERROR_MESSAGE.into(), error.to_string().into_bytes()),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(headers: Vec<(String, Vec<u8>)>) -> Record {
        Record {
            topic: "internal.saga".into(),
            partition: 5,
            offset: 9,
            timestamp: Some(7),
            key: Some(b"o-1".to_vec()),
            value: Some(b"bytes".to_vec()),
            headers,
        }
    }

    fn header<'a>(out: &'a Output, name: &str) -> Option<&'a str> {
        out.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    #[test]
    fn a_dead_letter_names_the_record_its_producer_wrote() {
        let origin = Origin {
            topic: "commands.orders".into(),
            partition: 1,
            offset: 77,
            timestamp_ms: Some(3),
            key: Some(b"user-key".to_vec()),
        };
        let headers = vec![
            ("trace".to_string(), b"t".to_vec()),
            origin.header(Some(b"o-1")),
        ];
        let out = dead_letter_of(&record(headers), "app", "decode", "bad", Vec::new());
        assert_eq!(out.topic, "commands.orders.dlq");
        assert_eq!(out.key.as_deref(), Some(&b"user-key"[..]));
        assert_eq!(out.value.as_deref(), Some(&b"bytes"[..]));
        assert_eq!(header(&out, SOURCE_TOPIC), Some("commands.orders"));
        assert_eq!(header(&out, SOURCE_PARTITION), Some("1"));
        assert_eq!(header(&out, SOURCE_OFFSET), Some("77"));
        assert_eq!(header(&out, SOURCE_TIMESTAMP), Some("3"));
        assert_eq!(header(&out, HOP_TOPIC), Some("internal.saga"));
        assert_eq!(header(&out, HOP_OFFSET), Some("9"));
        assert_eq!(header(&out, CONSUMER_GROUP), Some("app"));
        assert_eq!(header(&out, "trace"), Some("t"));
        assert!(
            out.headers
                .iter()
                .all(|(k, _)| k != tributary_runtime::dlq::ORIGIN),
            "origin headers are folded into dlq.source.*"
        );

        // A record read straight from its producer's topic is its own origin.
        let out = dead_letter_of(&record(Vec::new()), "app", "decode", "bad", Vec::new());
        assert_eq!(out.topic, "internal.saga.dlq");
        assert_eq!(header(&out, SOURCE_OFFSET), Some("9"));
        assert_eq!(header(&out, HOP_TOPIC), None);
        assert_eq!(out.key.as_deref(), Some(&b"o-1"[..]));
    }
}
