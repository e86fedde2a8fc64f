//! The saga's view of product prices: a table of every product on `events.inventory`, read by a
//! thread of its own from every partition (Kafka Streams calls this a global table).
//!
//! Why not a store of the saga's tasks: products are keyed by product id and orders by order id,
//! so a saga task sees only the products of its own partition, while it needs all of them.
//! Why not ask the inventory for each order: it would put pricing replies on `events.inventory`
//! and add a round trip per order; the catalog changes rarely, so a local table suffices.
//!
//! The table lags the topic a little, and the topic lags the inventory's input. An order naming
//! a product the table does not know is only judged invalid once the inventory app has handled
//! every inventory command that was on its inputs when the order was judged, and the table has
//! read every event that was on `events.inventory` after that ([`Catalog::prices`]). So a
//! product added just before an order (the load generator's pattern) is known to it. Until
//! then the order is retried.
//!
//! [`Catalog::fixed`] is a table of given prices with no topic behind it, for tests and
//! embedding.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tributary_runtime::kafka::{client_config, close_consumer};
use tributary_schemas::domain::InventoryEvent;
use tributary_schemas::types::Envelope;
use tributary_schemas::Codec;

use crate::error::{ProcessorError, Result};
use crate::topics::partition_counts;

/// A product's current price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub unit_price_cents: i64,
    pub currency: String,
}

#[derive(Default)]
struct Table {
    prices: HashMap<String, Price>,
    /// Per partition, the offset after the last record read.
    next: HashMap<i32, i64>,
}

/// The table and the thread that fills it. Stops the thread when dropped.
pub struct Catalog {
    table: Arc<Mutex<Table>>,
    /// `None` for a [fixed](Catalog::fixed) table.
    feed: Option<Feed>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What a table read from the topic needs to tell whether it has caught up.
struct Feed {
    topic: String,
    partitions: i32,
    watermarks: BaseConsumer,
    /// The inventory app's consumer group (through which its committed offsets are read) and
    /// its input topics, in the order records flow through them.
    owner: Option<(BaseConsumer, Vec<String>)>,
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl Catalog {
    /// Starts reading `topic` from the beginning. Call from inside a tokio runtime: the thread
    /// decodes with the codec on that runtime's handle.
    pub fn start(
        brokers: &str,
        topic: &str,
        owner: Option<(&str, Vec<String>)>,
        codec: Arc<Codec>,
    ) -> Result<Catalog> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| ProcessorError::Config(format!("no tokio runtime: {e}")))?;
        let partitions = partition_counts(brokers, &[topic.to_string()])?
            .first()
            .map(|(_, n)| *n)
            .unwrap_or(0);
        if partitions == 0 {
            return Err(ProcessorError::Config(format!(
                "topic `{topic}` does not exist"
            )));
        }
        let reader: BaseConsumer = client_config(brokers)
            // Never commits: the table is rebuilt from the start on every run.
            .set("group.id", format!("{topic}-catalog-reader"))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        reader.assign(&tpl)?;
        let watermarks: BaseConsumer = client_config(brokers).create()?;
        let owner = match owner {
            None => None,
            Some((group, inputs)) => {
                // Only reads the group's committed offsets; never joins it.
                let c: BaseConsumer = client_config(brokers)
                    .set("group.id", group)
                    .set("enable.auto.commit", "false")
                    .create()?;
                Some((c, inputs))
            }
        };
        let table = Arc::new(Mutex::new(Table::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (table, stop) = (table.clone(), stop.clone());
            std::thread::Builder::new()
                .name("catalog-reader".into())
                .spawn(move || read_loop(reader, table, stop, codec, handle))
                .map_err(|e| ProcessorError::Config(format!("catalog thread: {e}")))?
        };
        Ok(Catalog {
            table,
            feed: Some(Feed {
                topic: topic.to_string(),
                partitions,
                watermarks,
                owner,
            }),
            stop,
            thread: Some(thread),
        })
    }

    /// A table of the given prices that never changes and reads nothing: a product not in it is
    /// unknown at once (no waiting). For tests and embedding, e.g. a saga under
    /// `tributary_streams::testing::TestDriver` with no broker.
    pub fn fixed(prices: impl IntoIterator<Item = (String, Price)>) -> Catalog {
        Catalog {
            table: Arc::new(Mutex::new(Table {
                prices: prices.into_iter().collect(),
                next: HashMap::new(),
            })),
            feed: None,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        }
    }

    fn lookup(&self, ids: &[&str]) -> HashMap<String, Option<Price>> {
        let t = lock(&self.table);
        ids.iter()
            .map(|id| (id.to_string(), t.prices.get(*id).cloned()))
            .collect()
    }

    /// The prices of `ids`; `None` for a product the catalog does not have. When some are
    /// unknown, waits up to `wait` for the table to reach the topic's current end before
    /// answering, and fails with a retriable error if it does not. A fixed table answers at once.
    pub fn prices(&self, ids: &[&str], wait: Duration) -> Result<HashMap<String, Option<Price>>> {
        let found = self.lookup(ids);
        if found.values().all(Option::is_some) {
            return Ok(found);
        }
        let Some(feed) = &self.feed else {
            return Ok(found);
        };
        let deadline = Instant::now() + wait;
        let lagging = || ProcessorError::CatalogLagging {
            topic: feed.topic.clone(),
            waited: wait,
        };
        if let Some((group, inputs)) = &feed.owner {
            for input in inputs {
                if !feed.wait_committed(group, input, deadline)? {
                    return Err(lagging());
                }
            }
        }
        let mut ends = Vec::new();
        for p in 0..feed.partitions {
            let (low, high) =
                feed.watermarks
                    .fetch_watermarks(&feed.topic, p, Duration::from_secs(5))?;
            ends.push((p, low, high));
        }
        loop {
            let caught_up = {
                let t = lock(&self.table);
                ends.iter()
                    .all(|(p, low, high)| t.next.get(p).copied().unwrap_or(*low).max(*low) >= *high)
            };
            if caught_up {
                return Ok(self.lookup(ids));
            }
            if Instant::now() >= deadline {
                return Err(lagging());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Feed {
    /// Waits until `group` has committed, on every partition of `topic`, at least the end the
    /// partition has now. False at the deadline.
    fn wait_committed(&self, group: &BaseConsumer, topic: &str, deadline: Instant) -> Result<bool> {
        let partitions = tributary_runtime::kafka::partition_count(
            &self.watermarks,
            topic,
            Duration::from_secs(5),
        )?;
        let mut ends = TopicPartitionList::new();
        let mut high = Vec::new();
        for p in 0..partitions {
            let (low, h) = self
                .watermarks
                .fetch_watermarks(topic, p, Duration::from_secs(5))?;
            if h > low {
                ends.add_partition(topic, p);
                high.push((p, h));
            }
        }
        loop {
            let committed = group.committed_offsets(ends.clone(), Duration::from_secs(5))?;
            let done = high.iter().all(|(p, h)| {
                matches!(
                    committed.find_partition(topic, *p).map(|e| e.offset()),
                    Some(Offset::Offset(c)) if c >= *h
                )
            });
            if done {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Catalog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_loop(
    reader: BaseConsumer,
    table: Arc<Mutex<Table>>,
    stop: Arc<AtomicBool>,
    codec: Arc<Codec>,
    handle: tokio::runtime::Handle,
) {
    while !stop.load(Ordering::SeqCst) {
        let Some(m) = reader.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "catalog reader");
                continue;
            }
        };
        let price = m.payload().and_then(|bytes| {
            match handle.block_on(codec.decode::<Envelope<InventoryEvent>>(bytes)) {
                Ok(env) => match env.payload {
                    InventoryEvent::ProductAdded(e) => Some((
                        e.product_id,
                        Price {
                            unit_price_cents: e.unit_price_cents,
                            currency: e.currency,
                        },
                    )),
                    InventoryEvent::ProductUpdated(e) => Some((
                        e.product_id,
                        Price {
                            unit_price_cents: e.unit_price_cents,
                            currency: e.currency,
                        },
                    )),
                    _ => None,
                },
                Err(e) => {
                    // The inventory's own DLQ rules apply to its input, not here: a record the
                    // catalog cannot read is skipped, and orders naming it come out invalid.
                    tracing::warn!(offset = m.offset(), error = %e, "catalog record skipped");
                    None
                }
            }
        });
        let mut t = lock(&table);
        if let Some((id, price)) = price {
            t.prices.insert(id, price);
        }
        t.next.insert(m.partition(), m.offset() + 1);
    }
    close_consumer(&reader, Duration::from_secs(5));
}
