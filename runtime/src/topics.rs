//! Names under a prefix. One `--topic-prefix` isolates a whole pipeline (a test, a tenant, a
//! second deployment on the same cluster): its command and event topics, its internal topics,
//! its processors' application ids and its sinks' consumer groups all start with it, so two
//! pipelines on one broker never read each other's records or commit each other's offsets.
//!
//! The public topics' own names have one home too: each payload type's `TopicPayload::TOPIC` in
//! `tributary-schemas`; this module only puts the prefix in front.

/// `name` under `prefix`: `<prefix><name>`. An empty prefix gives the name itself (the
/// production names). The prefix is used as given, separator included (`t1.` gives
/// `t1.events.orders`), so that an existing deployment's names do not change.
pub fn prefixed(prefix: &str, name: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + name.len());
    out.push_str(prefix);
    out.push_str(name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_goes_in_front_as_given() {
        assert_eq!(prefixed("", "events.orders"), "events.orders");
        assert_eq!(prefixed("t1.", "events.orders"), "t1.events.orders");
        assert_eq!(
            prefixed("t1-", "tributary-sink-redis"),
            "t1-tributary-sink-redis"
        );
    }
}
