//! Expected vs. live: drift per view, its report (text and JSON) and its metrics.

use std::collections::BTreeMap;
use std::fmt;

use prometheus::{IntGaugeVec, Registry};
use serde::Serialize;
use tributary_runtime::metrics::{labels, Kind::Reconcile};

use super::{EntityId, Fields};

/// The kinds of drift.
pub const MISSING: &str = "missing";
pub const EXTRA: &str = "extra";
pub const DIFFERING: &str = "differing";

/// Every drifting id of one view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ViewDrift {
    pub view: &'static str,
    pub expected: usize,
    pub live: usize,
    /// In the expected view, not in the store.
    pub missing: Vec<String>,
    /// In the store, not in the expected view.
    pub extra: Vec<String>,
    /// In both, with other fields.
    pub differing: Vec<String>,
}

impl ViewDrift {
    pub fn total(&self) -> usize {
        self.missing.len() + self.extra.len() + self.differing.len()
    }
}

/// Compares normalized expected and live fields, view by view. `views` are reported even when
/// empty; an entity of a view not listed is reported under its own view.
pub fn diff(
    views: &[&'static str],
    expected: &BTreeMap<EntityId, Fields>,
    live: &BTreeMap<EntityId, Fields>,
) -> Vec<ViewDrift> {
    let mut out: BTreeMap<&'static str, ViewDrift> = views
        .iter()
        .map(|v| {
            (
                *v,
                ViewDrift {
                    view: v,
                    ..ViewDrift::default()
                },
            )
        })
        .collect();
    fn slot<'a>(
        out: &'a mut BTreeMap<&'static str, ViewDrift>,
        view: &'static str,
    ) -> &'a mut ViewDrift {
        out.entry(view).or_insert_with(|| ViewDrift {
            view,
            ..ViewDrift::default()
        })
    }
    for ((view, key), fields) in expected {
        let d = slot(&mut out, view);
        d.expected += 1;
        match live.get(&(*view, key.clone())) {
            None => d.missing.push(key.clone()),
            Some(l) if l != fields => d.differing.push(key.clone()),
            Some(_) => {}
        }
    }
    for (view, key) in live.keys() {
        let d = slot(&mut out, view);
        d.live += 1;
        if !expected.contains_key(&(*view, key.clone())) {
            d.extra.push(key.clone());
        }
    }
    // Views in the order the store lists them, then any other.
    let mut ordered: Vec<ViewDrift> = views.iter().filter_map(|v| out.remove(v)).collect();
    ordered.extend(out.into_values());
    ordered
}

/// A count and the first ids (in id order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub count: usize,
    pub samples: Vec<String>,
}

impl Sample {
    fn of(ids: &[String], n: usize) -> Self {
        Self {
            count: ids.len(),
            samples: ids.iter().take(n).cloned().collect(),
        }
    }
}

/// One view's line of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewReport {
    pub view: &'static str,
    pub expected: usize,
    pub live: usize,
    pub missing: Sample,
    pub extra: Sample,
    pub differing: Sample,
}

impl ViewReport {
    pub fn of(d: &ViewDrift, samples: usize) -> Self {
        Self {
            view: d.view,
            expected: d.expected,
            live: d.live,
            missing: Sample::of(&d.missing, samples),
            extra: Sample::of(&d.extra, samples),
            differing: Sample::of(&d.differing, samples),
        }
    }

    pub fn drift(&self) -> usize {
        self.missing.count + self.extra.count + self.differing.count
    }
}

/// What a repair wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    /// Entities written with their expected version (missing and differing ones).
    pub written: usize,
    /// Extra entities deleted.
    pub deleted: usize,
    /// Drift left when the store was read again after the repair.
    pub remaining: Vec<ViewReport>,
}

/// The outcome of one store's reconcile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub store: &'static str,
    /// Records replayed.
    pub records: u64,
    /// Records that change no view because the sink dead-letters them.
    pub skipped: u64,
    pub views: Vec<ViewReport>,
    /// Present when a repair ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairReport>,
}

impl Report {
    /// Entities that drifted, over every view (before any repair).
    pub fn drift(&self) -> usize {
        self.views.iter().map(ViewReport::drift).sum()
    }

    /// Drift left after the repair, if one ran.
    pub fn remaining(&self) -> Option<usize> {
        self.repair
            .as_ref()
            .map(|r| r.remaining.iter().map(ViewReport::drift).sum())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} records replayed ({} skipped), {} entities drifted",
            self.store,
            self.records,
            self.skipped,
            self.drift()
        )?;
        write_views(f, &self.views)?;
        if let Some(r) = &self.repair {
            writeln!(
                f,
                "  repair: {} written, {} deleted; {} entities drifted after it",
                r.written,
                r.deleted,
                r.remaining.iter().map(ViewReport::drift).sum::<usize>()
            )?;
            write_views(f, &r.remaining)?;
        }
        Ok(())
    }
}

fn write_views(f: &mut fmt::Formatter<'_>, views: &[ViewReport]) -> fmt::Result {
    for v in views {
        writeln!(
            f,
            "  {:<20} expected {:>7}  live {:>7}  missing {:>5}  extra {:>5}  differing {:>5}",
            v.view, v.expected, v.live, v.missing.count, v.extra.count, v.differing.count
        )?;
        for (kind, s) in [
            (MISSING, &v.missing),
            (EXTRA, &v.extra),
            (DIFFERING, &v.differing),
        ] {
            if s.count > 0 {
                let more = s.count.saturating_sub(s.samples.len());
                let tail = if more > 0 {
                    format!(" (+{more} more)")
                } else {
                    String::new()
                };
                writeln!(f, "    {kind}: {}{tail}", s.samples.join(", "))?;
            }
        }
    }
    Ok(())
}

/// The reconcile's gauges, in an explicit registry.
#[derive(Clone)]
pub struct ReconcileMetrics {
    drift: IntGaugeVec,
    expected: IntGaugeVec,
    live: IntGaugeVec,
}

impl ReconcileMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let drift = IntGaugeVec::new(
            Reconcile.opts(
                "tributary_reconcile_drift_entities",
                "Entities of a view that differ from the replayed log, by kind (missing, extra, differing), as of the last reconcile.",
            ),
            &labels(&["view", "kind"]),
        )?;
        let expected = IntGaugeVec::new(
            Reconcile.opts(
                "tributary_reconcile_expected_entities",
                "Entities of a view according to the replayed log.",
            ),
            &labels(&["view"]),
        )?;
        let live = IntGaugeVec::new(
            Reconcile.opts(
                "tributary_reconcile_live_entities",
                "Entities of a view found in the store.",
            ),
            &labels(&["view"]),
        )?;
        registry.register(Box::new(drift.clone()))?;
        registry.register(Box::new(expected.clone()))?;
        registry.register(Box::new(live.clone()))?;
        Ok(Self {
            drift,
            expected,
            live,
        })
    }

    /// Sets the gauges from `report`: the drift found (before any repair).
    pub fn observe(&self, report: &Report) {
        for v in &report.views {
            let g = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
            for (kind, s) in [
                (MISSING, &v.missing),
                (EXTRA, &v.extra),
                (DIFFERING, &v.differing),
            ] {
                self.drift
                    .with_label_values(&[report.store, v.view, kind])
                    .set(g(s.count));
            }
            self.expected
                .with_label_values(&[report.store, v.view])
                .set(g(v.expected));
            self.live
                .with_label_values(&[report.store, v.view])
                .set(g(v.live));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(v: serde_json::Value) -> Fields {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn finds_missing_extra_and_differing() {
        let expected: BTreeMap<EntityId, Fields> = [
            (("users", "a".to_string()), f(json!({"x": 1}))),
            (("users", "b".to_string()), f(json!({"x": 1}))),
            (("users", "c".to_string()), f(json!({"x": 1}))),
        ]
        .into();
        let live: BTreeMap<EntityId, Fields> = [
            (("users", "a".to_string()), f(json!({"x": 1}))),
            (("users", "c".to_string()), f(json!({"x": 2}))),
            (("users", "d".to_string()), f(json!({"x": 1}))),
        ]
        .into();
        let d = diff(&["users", "orders"], &expected, &live);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].missing, ["b"]);
        assert_eq!(d[0].extra, ["d"]);
        assert_eq!(d[0].differing, ["c"]);
        assert_eq!((d[0].expected, d[0].live), (3, 3));
        assert_eq!(d[1].total(), 0);
        let r = ViewReport::of(&d[0], 0);
        assert_eq!(r.drift(), 3);
        assert!(r.missing.samples.is_empty());
    }
}
