//! # The list of stores
//!
//! [`STORES`] is the one list of the stores a sink can keep. `tributary sink`, `reconcile`,
//! `rebuild`, `summary` and `dlq replay` take their stores from it (through [`all`]), as do the
//! machinery functions that run over several stores ([`crate::reconcile::reconcile_stores`],
//! [`crate::rebuild::rebuild_stores`], [`crate::growth::view_sizes`]), which accept any list so
//! that a test can append a store of its own.
//!
//! Adding a store: one folder in `src/` implementing the traits of [`crate::store`], and one
//! line below.

use crate::runner::{Projection, SourceTopic};
use crate::store::{Store, StoreOption};

/// Every store, in the order `--store all` runs them.
pub static STORES: &[&dyn Store] = &[
    &crate::postgres::store::Postgres,
    &crate::mongodb::store::Mongodb,
    &crate::redis::store::Redis,
    &crate::elasticsearch::store::Elasticsearch,
];

/// The list of stores.
pub fn all() -> &'static [&'static dyn Store] {
    STORES
}

/// The names of `stores`, in order.
pub fn names(stores: &[&'static dyn Store]) -> Vec<&'static str> {
    stores.iter().map(|s| s.name()).collect()
}

/// The store of `stores` called `name`.
pub fn find(stores: &[&'static dyn Store], name: &str) -> Option<&'static dyn Store> {
    stores.iter().copied().find(|s| s.name() == name)
}

/// What `--store <choice>` stands for: the store of that name, or every store for `all`.
pub fn select(stores: &[&'static dyn Store], choice: &str) -> Option<Vec<&'static dyn Store>> {
    if choice == ALL {
        return Some(stores.to_vec());
    }
    find(stores, choice).map(|s| vec![s])
}

/// The `--store` value that stands for every store.
pub const ALL: &str = "all";

/// Every option of `stores`, each name once (the first store to declare it wins).
pub fn options(stores: &[&'static dyn Store]) -> Vec<StoreOption> {
    let mut out: Vec<StoreOption> = Vec::new();
    for option in stores.iter().flat_map(|s| s.options()) {
        if !out.iter().any(|o| o.name == option.name) {
            out.push(*option);
        }
    }
    out
}

/// The consumer group of `store`'s sink in a pipeline started with `topic_prefix`.
pub fn sink_group(topic_prefix: &str, store: &str) -> String {
    tributary_runtime::topics::prefixed(topic_prefix, &format!("tributary-sink-{store}"))
}

/// The store of `stores` whose sink is the consumer group `group`, if `group` is a sink's.
pub fn of_sink_group(
    stores: &[&'static dyn Store],
    topic_prefix: &str,
    group: &str,
) -> Option<&'static dyn Store> {
    let name = group
        .strip_prefix(topic_prefix)?
        .strip_prefix("tributary-sink-")?;
    find(stores, name)
}

/// The topics `projection` reads in a pipeline started with `topic_prefix` (`""`: each
/// stream's production topic).
pub fn sources(projection: &dyn Projection, topic_prefix: &str) -> Vec<SourceTopic> {
    projection
        .streams()
        .iter()
        .map(|&stream| SourceTopic {
            topic: tributary_runtime::topics::prefixed(topic_prefix, stream.topic()),
            stream,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_each_store_once() {
        let names = names(all());
        assert_eq!(names, ["postgres", "mongodb", "redis", "elasticsearch"]);
        assert!(!names.contains(&ALL), "`all` is the choice of every store");
        assert_eq!(select(all(), ALL).map(|s| s.len()), Some(all().len()));
        assert_eq!(
            select(all(), "redis").map(|s| super::names(&s)),
            Some(vec!["redis"])
        );
        assert!(select(all(), "nope").is_none());
    }

    #[test]
    fn sink_groups_name_their_store_and_other_groups_are_processors() {
        let name = |prefix, group| of_sink_group(all(), prefix, group).map(|s| s.name());
        assert_eq!(name("", "tributary-sink-postgres"), Some("postgres"));
        assert_eq!(
            name("t1.", "t1.tributary-sink-elasticsearch"),
            Some("elasticsearch")
        );
        assert_eq!(name("", "tributary-orders"), None);
        assert_eq!(name("t1.", "tributary-sink-redis"), None);
        assert_eq!(name("", "tributary-sink-all"), None);
        assert_eq!(sink_group("t1.", "redis"), "t1.tributary-sink-redis");
    }

    #[test]
    fn option_names_are_unique_and_every_store_has_an_address() {
        let options = options(all());
        for store in all() {
            assert!(
                store.options().iter().any(|o| o.address),
                "{} has no address option",
                store.name()
            );
        }
        let mut names: Vec<_> = options.iter().map(|o| o.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), options.len());
    }
}
