//! Codec throughput: our decode (header check, cached writer schema, union resolution by name,
//! typed conversion) against schema_registry_converter's `AvroDecoder::decode` (writer schema
//! only, no reader resolution) on the same records, and encode against the converter's encoder.
//!
//! Run with `make bench` (needs the local stack's broker for the in-process registry).

use std::time::{Duration, Instant};

use schema_registry_converter::async_impl::avro::AvroDecoder;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use tributary_registry::{Compatibility, RegistryConfig};
use tributary_runtime::config::KAFKA_BROKERS;
use tributary_runtime::kafka::unique_name;
use tributary_schemas::domain::{OrderEvent, OrderLine, OrderPlaced};
use tributary_schemas::types::Envelope;
use tributary_schemas::Codec;

const N: usize = 50_000;

fn order(i: usize) -> Envelope<OrderEvent> {
    Envelope::new(
        format!("order-{i}"),
        format!("corr-{i}"),
        OrderEvent::OrderPlaced(OrderPlaced {
            order_id: format!("order-{i}"),
            user_id: format!("user-{}", i % 500),
            lines: (0..3)
                .map(|l| OrderLine {
                    product_id: format!("product-{}", (i + l) % 100),
                    quantity: 1 + (l as i32),
                    unit_price_cents: 1999,
                })
                .collect(),
            total_cents: 3 * 1999 * 2,
            currency: "EUR".into(),
        }),
    )
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let reg = tributary_registry::start(RegistryConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        brokers: KAFKA_BROKERS.get(),
        topic: unique_name("_schemas-bench"),
        max_body_bytes: 1 << 20,
        default_compatibility: Compatibility::Backward,
    })
    .await
    .expect("registry starts (is the stack up? make up)");
    let url = format!("http://{}", reg.addr);
    let codec = Codec::new(&url);
    let records: Vec<_> = (0..N).map(order).collect();

    let t = Instant::now();
    let mut encoded = Vec::with_capacity(N);
    for r in &records {
        encoded.push(codec.encode(r).await.unwrap());
    }
    let encode = t.elapsed();

    let t = Instant::now();
    for (bytes, r) in encoded.iter().zip(&records) {
        let back: Envelope<OrderEvent> = codec.decode(bytes).await.unwrap();
        debug_assert_eq!(&back, r);
    }
    let ours = t.elapsed();

    let t = Instant::now();
    for bytes in &encoded {
        codec.decode_value(bytes, None).await.unwrap();
    }
    let untyped = t.elapsed();

    let converter = AvroDecoder::new(SrSettings::new(url.clone()));
    let t = Instant::now();
    for bytes in &encoded {
        converter.decode(Some(bytes)).await.unwrap();
    }
    let theirs = t.elapsed();

    let bytes: usize = encoded.iter().map(Vec::len).sum();
    println!(
        "codec bench: {N} OrderPlaced records, {} bytes each on average",
        bytes / N
    );
    println!(
        "  encode (ours, converter's AvroEncoder inside) {:>10.0} records/s",
        rate(N, encode)
    );
    println!(
        "  decode ours, typed + resolution by name      {:>10.0} records/s",
        rate(N, ours)
    );
    println!(
        "  decode ours, untyped Value (writer shape)    {:>10.0} records/s",
        rate(N, untyped)
    );
    println!(
        "  decode converter AvroDecoder, untyped Value  {:>10.0} records/s",
        rate(N, theirs)
    );
    println!(
        "  ratio ours/converter decode: typed {:.2}, untyped {:.2}",
        rate(N, ours) / rate(N, theirs),
        rate(N, untyped) / rate(N, theirs)
    );
    reg.shutdown().await;
}
