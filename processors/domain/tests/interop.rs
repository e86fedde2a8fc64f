//! A command produced by the reference client (python confluent-kafka's AvroSerializer,
//! `place_order.py`) is processed like our own: the saga prices, reserves, authorizes and
//! confirms it. The python producer partitions by CRC32, not murmur2; the saga's re-keying onto
//! its internal topic is what makes that work.

mod common;

use std::process::Command as Process;
use std::time::Duration;

use common::*;
use tributary_processors::invariants::Outcome;
use tributary_processors::DomainApp;
use tributary_runtime::config::{KAFKA_BROKERS, SCHEMA_REGISTRY_URL};
use tributary_schemas::domain::*;

fn python() -> String {
    std::env::var("TRIBUTARY_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/tributary/venv/bin/python")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_from_the_python_avro_serializer_is_confirmed() {
    let mut p = Pipeline::new("saga-interop", Duration::from_secs(30)).await;
    for app in [DomainApp::Inventory, DomainApp::Payments, DomainApp::Orders] {
        p.start(app);
    }
    p.add_product("p-py", 700, 10).await;
    let mut inventory = p.reader::<InventoryEvent>(p.cfg.topics.events_inventory());
    inventory.until("the product", |e| !e.is_empty()).await;

    let dir = env!("CARGO_MANIFEST_DIR");
    let topic = p.cfg.topics.commands_orders();
    let mut orders = p.reader::<OrderEvent>(p.cfg.topics.events_orders());
    // Several orders, so that CRC32 and murmur2 disagree on the partition of some of them.
    let ids: Vec<String> = (0..6).map(|i| format!("o-py-{i}")).collect();
    for id in &ids {
        let out = Process::new(python())
            .arg(format!("{dir}/tests/place_order.py"))
            .args(["--registry", &SCHEMA_REGISTRY_URL.get()])
            .args(["--brokers", &KAFKA_BROKERS.get()])
            .args(["--topic", &topic])
            .args([
                "--schema",
                &format!("{dir}/../../schemas/avro/commands.orders.avsc"),
            ])
            .args([
                "--order",
                id,
                "--user",
                "u-py",
                "--product",
                "p-py",
                "--quantity",
                "1",
            ])
            .output()
            .expect("the project's python runs (make up installs it)");
        assert!(
            out.status.success(),
            "place_order.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let events = orders
        .until("every python order's outcome", |e| has_outcomes(e, &refs))
        .await
        .to_vec();
    for id in &refs {
        assert_eq!(
            outcome_of(&events, id),
            Some(vec![Outcome::Confirmed]),
            "{id}"
        );
    }
    let placed = events
        .iter()
        .find_map(|e| match &e.payload {
            OrderEvent::OrderPlaced(o) if o.order_id == "o-py-0" => Some(o.clone()),
            _ => None,
        })
        .expect("o-py-0 placed");
    assert_eq!(placed.total_cents, 700, "priced from the catalog");
    assert_eq!(placed.user_id, "u-py");
    p.stop_all().await;
}
