//! A small Prometheus text-format registry: counters and gauges backed by atomics.
//!
//! Cores keep their own counters; shells register them here and `/metrics` renders them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// Counter or gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A handle to one time series.
#[derive(Debug, Clone, Default)]
pub struct Metric(Arc<AtomicI64>);

impl Metric {
    /// Add `n`.
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Add one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Subtract one.
    pub fn dec(&self) {
        self.add(-1);
    }
    /// Set the value (gauges).
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A label value in the text format's escaping.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    help: &'static str,
    kind: MetricKind,
    series: BTreeMap<String, Metric>,
}

/// The registry. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<&'static str, Family>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    /// Get or create the series `name{labels}`.
    pub fn metric(
        &self,
        name: &'static str,
        help: &'static str,
        kind: MetricKind,
        labels: &[(&str, &str)],
    ) -> Metric {
        let mut label_text = String::new();
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                label_text.push(',');
            }
            let _ = write!(label_text, "{k}=\"{}\"", escape(v));
        }
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        family.series.entry(label_text).or_default().clone()
    }

    /// A counter.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
    ) -> Metric {
        self.metric(name, help, MetricKind::Counter, labels)
    }

    /// A gauge.
    pub fn gauge(&self, name: &'static str, help: &'static str, labels: &[(&str, &str)]) -> Metric {
        self.metric(name, help, MetricKind::Gauge, labels)
    }

    /// Remove every series, of every family, labelled `label="value"`: what a stream, room,
    /// participant or allocation leaves behind when it ends (a handle kept elsewhere still
    /// works but is no longer rendered). Returns how many series went.
    pub fn remove_labelled(&self, label: &str, value: &str) -> usize {
        self.remove_where(None, label, value)
    }

    /// [`Registry::remove_labelled`] within one family only (a role's own series of something
    /// another role of the process keeps reporting).
    pub fn remove_labelled_in(&self, name: &str, label: &str, value: &str) -> usize {
        self.remove_where(Some(name), label, value)
    }

    fn remove_where(&self, name: Option<&str>, label: &str, value: &str) -> usize {
        let needle = format!("{label}=\"{}\"", escape(value));
        let mut families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut removed = 0;
        for (_, family) in families
            .iter_mut()
            .filter(|(n, _)| name.is_none_or(|name| **n == name))
        {
            let before = family.series.len();
            family
                .series
                .retain(|labels, _| !labels.split(',').any(|kv| kv == needle));
            removed += before - family.series.len();
        }
        families.retain(|_, f| !f.series.is_empty());
        removed
    }

    /// Render everything in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for (name, family) in families.iter() {
            let kind = match family.kind {
                MetricKind::Counter => "counter",
                MetricKind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, metric) in &family.series {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {}", metric.get());
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {}", metric.get());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_text_format() {
        let r = Registry::default();
        r.counter("tidecast_x_total", "X things.", &[("stream", "a\"b")])
            .add(3);
        r.gauge("tidecast_y", "Y.", &[]).set(-2);
        let text = r.render();
        assert!(text.contains("# TYPE tidecast_x_total counter\n"));
        assert!(text.contains("tidecast_x_total{stream=\"a\\\"b\"} 3\n"));
        assert!(text.contains("tidecast_y -2\n"));
    }

    #[test]
    fn series_of_an_ended_room_are_removed() {
        let r = Registry::default();
        r.gauge("tidecast_p", "P.", &[("room", "a"), ("kind", "x")])
            .set(1);
        r.gauge("tidecast_p", "P.", &[("room", "ab")]).set(2);
        r.counter("tidecast_q_total", "Q.", &[("room", "a")]).inc();
        assert_eq!(r.remove_labelled("room", "a"), 2);
        r.counter("x", "", &[("room", "b")]).inc();
        assert_eq!(r.remove_labelled_in("y", "room", "b"), 0);
        assert_eq!(r.remove_labelled_in("x", "room", "b"), 1);
        let text = r.render();
        assert!(!text.contains("room=\"a\""), "{text}");
        assert!(text.contains("tidecast_p{room=\"ab\"} 2"), "{text}");
        assert!(
            !text.contains("tidecast_q_total"),
            "empty family gone: {text}"
        );
    }
}
