//! Dead letters: the one home of the `dlq.*` header names and of the dead-letter topic's name.
//!
//! A record that cannot be processed for good (a non-retriable error, a panic in the processor)
//! is produced to `<input>.dlq` with its key, value and headers unchanged plus the headers below,
//! in the same commit as the other effects of its batch, so its input offset is committed only
//! once the dead letter is acknowledged. A timer whose callback fails for good goes to the
//! dead-letter topic of the app's first input, with `dlq.source.timer` naming it.

use crate::error::Error;
use crate::processor::Timer;
use crate::record::{Output, Record};

pub const SOURCE_TOPIC: &str = "dlq.source.topic";
pub const SOURCE_PARTITION: &str = "dlq.source.partition";
pub const SOURCE_OFFSET: &str = "dlq.source.offset";
pub const SOURCE_TIMER: &str = "dlq.source.timer";
pub const ERROR_CLASS: &str = "dlq.error.class";
pub const ERROR_MESSAGE: &str = "dlq.error.message";
/// The class of a record whose processor panicked.
pub const PANIC_CLASS: &str = "panic";

/// The dead-letter topic of `input`.
pub fn dlq_topic(input: &str) -> String {
    format!("{input}.dlq")
}

pub(crate) fn dead_letter(record: &Record, error: &Error) -> Output {
    let mut headers = record.headers.clone();
    headers.push((SOURCE_TOPIC.into(), record.topic.clone().into_bytes()));
    headers.push((
        SOURCE_PARTITION.into(),
        record.partition.to_string().into_bytes(),
    ));
    headers.push((SOURCE_OFFSET.into(), record.offset.to_string().into_bytes()));
    headers.push((ERROR_CLASS.into(), error.class().as_bytes().to_vec()));
    headers.push((ERROR_MESSAGE.into(), error.to_string().into_bytes()));
    Output {
        topic: dlq_topic(&record.topic),
        key: record.key.clone(),
        value: record.value.clone(),
        headers,
    }
}

pub(crate) fn dead_timer(dlq: &str, task: i32, timer: &Timer, error: &Error) -> Output {
    Output {
        topic: dlq.to_string(),
        key: Some(timer.name.clone().into_bytes()),
        value: None,
        headers: vec![
            (SOURCE_TIMER.into(), timer.name.clone().into_bytes()),
            (SOURCE_PARTITION.into(), task.to_string().into_bytes()),
            (ERROR_CLASS.into(), error.class().as_bytes().to_vec()),
            (ERROR_MESSAGE.into(), error.to_string().into_bytes()),
        ],
    }
}
