//! `/metrics` (Prometheus text exposition) and `/health` for a long-running process.
//!
//! Every component registers its metrics in an explicit [`prometheus::Registry`] (never the
//! global default), so a test can read exactly what one component exported.

use std::net::SocketAddr;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

/// The routes, to mount on a server of one's own (the gateway serves them beside its API).
pub fn routes(registry: Registry) -> Router {
    Router::new()
        .route("/metrics", get(move || render(registry.clone())))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
}

async fn render(registry: Registry) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
        return (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            format!("encoding metrics failed: {e}").into_bytes(),
        );
    }
    (
        axum::http::StatusCode::OK,
        [(header::CONTENT_TYPE, encoder.format_type().to_string())],
        body,
    )
}

/// Serves `/metrics` and `/health` on `addr` until `shutdown` is cancelled. Returns the bound
/// address (port 0 picks one) and the server task.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, routes(registry))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok((bound, task))
}

// ---- The one naming scheme of every process's metrics ----
//
// As vector's component specification does, every series says which component it belongs to
// with two labels, whatever the layer: `component_kind` (a processor app, a sink, the
// gateway, a reconcile run) and `component_id` (the app's name, the store's name, `gateway`).
// A dashboard can then ask "dead letters per component" with one name and no join.
//
// Names are `tributary_<scope>_<name>_<unit>[_total]`. The scope is `component` for what every
// kind has and counts the same way (records received and sent, dead letters, retries), so one
// idea has one name; otherwise it is the kind (`processor`, `sink`, `gateway`, `reconcile`).
// [`naming_problems`] checks all of it; every layer's tests and `stack/tests/prometheus.sh`
// (on the running processes' `/metrics`) apply it.

use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{HistogramOpts, Opts};

/// The label naming the kind of component a series belongs to.
pub const COMPONENT_KIND: &str = "component_kind";
/// The label naming the component itself (an app, a store, `gateway`).
pub const COMPONENT_ID: &str = "component_id";

/// Records a component took in: input records a processor handed to its code, records a sink
/// consumed.
pub const RECEIVED_RECORDS: &str = "tributary_component_received_records_total";
/// Records a component produced to a topic, acknowledged by the broker.
pub const SENT_RECORDS: &str = "tributary_component_sent_records_total";
/// Records a component sent to a dead-letter topic.
pub const DLQ_RECORDS: &str = "tributary_component_dlq_records_total";
/// Retries after a retriable error (a record for a processor, a batch for a sink).
pub const RETRIES: &str = "tributary_component_retries_total";

/// The kinds of component, each the scope of its own metrics' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Processor,
    Sink,
    Gateway,
    Reconcile,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Processor, Kind::Sink, Kind::Gateway, Kind::Reconcile];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Processor => "processor",
            Kind::Sink => "sink",
            Kind::Gateway => "gateway",
            Kind::Reconcile => "reconcile",
        }
    }

    /// `tributary_<kind>_`: the start of the names of this kind's own metrics.
    pub fn prefix(self) -> String {
        format!("tributary_{}_", self.as_str())
    }

    /// Options of a counter or gauge of this kind: `component_kind` is fixed here; the caller's
    /// first variable label is [`COMPONENT_ID`] (see [`labels`]).
    pub fn opts(self, name: &str, help: &str) -> Opts {
        Opts::new(name, help).const_label(COMPONENT_KIND, self.as_str())
    }

    /// [`Kind::opts`] for a histogram.
    pub fn histogram_opts(self, name: &str, help: &str, buckets: Vec<f64>) -> HistogramOpts {
        HistogramOpts::new(name, help)
            .const_label(COMPONENT_KIND, self.as_str())
            .buckets(buckets)
    }

    /// [`Kind::opts`] for a component with one instance per process (the gateway): its id is
    /// fixed too, so the family takes only `rest` as variable labels.
    pub fn fixed_opts(self, id: &str, name: &str, help: &str) -> Opts {
        self.opts(name, help).const_label(COMPONENT_ID, id)
    }
}

/// The variable labels of a family: [`COMPONENT_ID`] first, then `rest`.
pub fn labels<'a>(rest: &[&'a str]) -> Vec<&'a str> {
    std::iter::once(COMPONENT_ID)
        .chain(rest.iter().copied())
        .collect()
}

/// What is wrong with `families`' names and labels under the scheme above (empty when nothing
/// is): each series has `component_kind` (a known kind) and `component_id`; the name is
/// `tributary_component_*` or starts with its kind's prefix; counters end in `_total` and
/// nothing else does; histograms measure `_seconds`, `_records` or `_bytes`; and no family keeps
/// an old per-layer label (`app`, `sink`) for what `component_id` says.
pub fn naming_problems(families: &[MetricFamily]) -> Vec<String> {
    let mut problems = Vec::new();
    for f in families {
        let name = f.name();
        match f.get_field_type() {
            MetricType::COUNTER if !name.ends_with("_total") => {
                problems.push(format!("{name}: a counter's name ends in _total"))
            }
            MetricType::COUNTER => {}
            _ if name.ends_with("_total") => {
                problems.push(format!("{name}: only a counter's name ends in _total"))
            }
            MetricType::HISTOGRAM
                if !["_seconds", "_records", "_bytes"]
                    .iter()
                    .any(|u| name.ends_with(u)) =>
            {
                problems.push(format!("{name}: a histogram's name ends in its unit"))
            }
            _ => {}
        }
        for m in f.get_metric() {
            let label = |n: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == n)
                    .map(|l| l.value().to_string())
            };
            let Some(kind) = label(COMPONENT_KIND) else {
                problems.push(format!("{name}: a series without {COMPONENT_KIND}"));
                continue;
            };
            match Kind::ALL.iter().find(|k| k.as_str() == kind) {
                None => problems.push(format!("{name}: unknown {COMPONENT_KIND} `{kind}`")),
                Some(k)
                    if !name.starts_with("tributary_component_")
                        && !name.starts_with(&k.prefix()) =>
                {
                    problems.push(format!(
                        "{name}: a {kind}'s metric is named tributary_component_* or {}*",
                        k.prefix()
                    ))
                }
                Some(_) => {}
            }
            if label(COMPONENT_ID).is_none_or(|id| id.is_empty()) {
                problems.push(format!("{name}: a series without {COMPONENT_ID}"));
            }
            for old in ["app", "sink"] {
                if label(old).is_some() {
                    problems.push(format!("{name}: `{old}` is what {COMPONENT_ID} says"));
                }
            }
        }
    }
    problems.sort();
    problems.dedup();
    problems
}

#[cfg(test)]
mod naming_tests {
    use super::*;
    use prometheus::{IntCounterVec, IntGaugeVec, Registry};

    #[test]
    fn the_scheme_accepts_its_own_and_names_every_departure() {
        let registry = Registry::new();
        let good = IntCounterVec::new(Kind::Sink.opts(DLQ_RECORDS, "d"), &labels(&[])).unwrap();
        good.with_label_values(&["postgres"]).inc();
        registry.register(Box::new(good)).unwrap();
        assert!(naming_problems(&registry.gather()).is_empty());

        let registry = Registry::new();
        let bad_unit =
            IntGaugeVec::new(Kind::Sink.opts("tributary_sink_x_total", "x"), &labels(&[])).unwrap();
        bad_unit.with_label_values(&["postgres"]).set(1);
        let other_scope = IntCounterVec::new(
            Kind::Processor.opts("tributary_sink_y_total", "y"),
            &labels(&[]),
        )
        .unwrap();
        other_scope.with_label_values(&["orders"]).inc();
        let old_label = IntCounterVec::new(
            Kind::Sink.opts("tributary_sink_z_total", "z"),
            &labels(&["sink"]),
        )
        .unwrap();
        old_label.with_label_values(&["redis", "redis"]).inc();
        let no_kind =
            IntCounterVec::new(Opts::new("tributary_w_total", "w"), &["component_id"]).unwrap();
        no_kind.with_label_values(&["gateway"]).inc();
        for c in [
            Box::new(bad_unit) as Box<dyn prometheus::core::Collector>,
            Box::new(other_scope),
            Box::new(old_label),
            Box::new(no_kind),
        ] {
            registry.register(c).unwrap();
        }
        let problems = naming_problems(&registry.gather());
        assert_eq!(
            problems,
            vec![
                "tributary_sink_x_total: only a counter's name ends in _total".to_string(),
                "tributary_sink_y_total: a processor's metric is named tributary_component_* or tributary_processor_*".to_string(),
                "tributary_sink_z_total: `sink` is what component_id says".to_string(),
                "tributary_w_total: a series without component_kind".to_string(),
            ]
        );
    }
}
