//! The load generator sends every command of its workload, acknowledged, to the real broker.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tributary_producers::loadgen::{self, Workload};
use tributary_producers::CommandSender;
use tributary_registry::{Compatibility, RegistryConfig};
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::{client_config, ensure_topic, unique_name, TopicSpec};
use tributary_schemas::Codec;

#[tokio::test(flavor = "multi_thread")]
async fn loadgen_sends_every_command_of_the_workload() {
    let brokers = KAFKA_BROKERS.get();
    let reg = tributary_registry::start(RegistryConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        brokers: brokers.clone(),
        topic: unique_name("_schemas-loadgen-test"),
        max_body_bytes: 1 << 20,
        default_compatibility: Compatibility::Backward,
    })
    .await
    .unwrap();
    let prefix = format!("{}.", unique_name("lg"));
    let spec = TopicSpec {
        partitions: 3,
        compacted: false,
    };
    for t in ["commands.users", "commands.inventory", "commands.orders"] {
        ensure_topic(&brokers, &format!("{prefix}{t}"), spec)
            .await
            .unwrap();
    }
    let codec = Arc::new(Codec::new(&format!("http://{}", reg.addr)));
    let sender = Arc::new(CommandSender::new(&brokers, codec, &prefix).unwrap());
    let workload = Workload {
        users: 12,
        products: 7,
        orders: 150,
        restock_share: 0.0,
        cancel_share: 0.0,
        ..Workload::default()
    };
    let report = loadgen::run(sender, &workload, None, 32).await.unwrap();
    assert_eq!(report.sent, 169);
    assert_eq!(report.by_command.get("PlaceOrder"), Some(&150));

    // What the broker holds, per topic, summed over partitions.
    let consumer: BaseConsumer = client_config(&brokers).create().unwrap();
    let held = |topic: &str| -> i64 {
        (0..3)
            .map(|p| {
                let (lo, hi) = consumer
                    .fetch_watermarks(&format!("{prefix}{topic}"), p, Duration::from_secs(10))
                    .unwrap();
                hi - lo
            })
            .sum()
    };
    assert_eq!(held("commands.users"), 12);
    assert_eq!(held("commands.inventory"), 7);
    assert_eq!(held("commands.orders"), 150);
    reg.shutdown().await;
}
