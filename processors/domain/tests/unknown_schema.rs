//! A command whose schema id the registry does not know (yet), through the streams runtime's
//! test driver and a real (in-process, in-memory) registry: retried, with nothing written or
//! dead-lettered, while the grace lasts, so a schema registered meanwhile (a registry that
//! failed over and caught up) loses nothing; dead-lettered once no grace is left.

use std::sync::Arc;
use std::time::Duration;

use tributary_processors::{InventoryProcessor, Topics};
use tributary_registry::{start_in_memory, Compatibility};
use tributary_schemas::codec::{frame, split_header};
use tributary_schemas::domain::{AddProduct, InventoryCommand, InventoryEvent};
use tributary_schemas::types::Envelope;
use tributary_schemas::Codec;
use tributary_streams::testing::TestDriver;

const LEDGER: &str = "internal.inventory-ledger";

fn add_product(id: &str) -> Envelope<InventoryCommand> {
    Envelope::new(
        id,
        "flow-unknown-id",
        AddProduct {
            product_id: id.into(),
            sku: format!("SKU-{id}"),
            name: id.into(),
            description: None,
            unit_price_cents: 250,
            currency: "EUR".into(),
            initial_stock: 3,
        },
    )
}

fn driver(codec: Arc<Codec>) -> TestDriver {
    TestDriver::new(&InventoryProcessor::stores(), move |_| {
        InventoryProcessor::with_codec(codec.clone(), Topics::default())
    })
}

#[test]
fn an_unknown_schema_id_is_retried_within_the_grace_then_dead_lettered() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // The processors block on the codec through the current tokio handle.
    let _guard = rt.enter();
    let start = || {
        rt.block_on(start_in_memory(
            "127.0.0.1:0".parse().expect("an address"),
            Compatibility::Backward,
        ))
        .expect("an in-memory registry")
    };
    // The processor's registry knows no schema yet; another one gives the bytes a producer
    // would have written, with the id a fresh registry hands out first.
    let (ours, theirs) = (start(), start());
    let url = format!("http://{}", ours.addr);
    let cmd = add_product("p-1");
    let written = rt
        .block_on(Codec::new(&format!("http://{}", theirs.addr)).encode(&cmd))
        .expect("encoded");
    let (id, body) = split_header(&written).expect("header");
    let bytes = frame(id, body);

    let codec = Arc::new(Codec::new(&url).with_unknown_schema_grace(Duration::from_secs(60)));
    let mut d = driver(codec);
    for _ in 0..3 {
        let e = d
            .pipe(LEDGER, 0, Some(b"p-1"), Some(&bytes), 0)
            .expect_err("retried while the id is unknown");
        assert!(e.retriable(), "{e}");
        assert!(
            d.take_outputs().is_empty(),
            "nothing written or dead-lettered"
        );
    }

    // The registry learns the schema under the same id: the retry goes through.
    let registered = rt
        .block_on(Codec::new(&url).encode(&cmd))
        .expect("registered");
    assert_eq!(split_header(&registered).expect("header").0, id);
    d.pipe(LEDGER, 0, Some(b"p-1"), Some(&bytes), 0)
        .expect("processed once the schema is known");
    let outs = d.take_outputs();
    let added: Vec<Envelope<InventoryEvent>> = outs
        .iter()
        .filter(|o| o.topic == "events.inventory")
        .map(|o| {
            rt.block_on(Codec::new(&url).decode(o.value.as_deref().expect("a value")))
                .expect("an event")
        })
        .collect();
    assert!(
        added
            .iter()
            .any(|e| matches!(e.payload, InventoryEvent::ProductAdded(_))),
        "a ProductAdded among {:?}",
        outs.iter().map(|o| o.topic.as_str()).collect::<Vec<_>>()
    );

    // An id no registry will know, with no grace left: a dead letter, and the task goes on.
    let impatient = Arc::new(Codec::new(&url).with_unknown_schema_grace(Duration::ZERO));
    let mut d = driver(impatient);
    let unknown = frame(4_000_000, body);
    d.pipe(LEDGER, 0, Some(b"p-2"), Some(&unknown), 0)
        .expect("a dead letter is not a retry");
    let outs = d.take_outputs();
    let topics: Vec<&str> = outs.iter().map(|o| o.topic.as_str()).collect();
    assert_eq!(topics, [format!("{LEDGER}.dlq")]);
}
