//! The metrics recorder of a node or a balancer: the Prometheus exporter's,
//! except that histograms are counted into their buckets as values are
//! recorded.
//!
//! The exporter queues every recorded value (in 1 KiB blocks of 64) until
//! a scrape sorts the queue into buckets: at 100,000 requests a second that
//! is 1,500 blocks allocated and freed a second, and the freed chunks are
//! split by longer-lived allocations (session records) into holes nothing
//! else fits (10 bytes a session after a million creates: `BENCHMARKS.md`,
//! "Memory per session"). Here a value costs two atomic adds and allocates
//! nothing. Every histogram of sessiond is a latency in seconds, so every
//! one has [`LATENCY_BUCKETS`].

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SetRecorderError,
    SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::RwLock;

/// The upper bounds (seconds) of every histogram's buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

/// Installs the recorder for this process.
pub fn install() -> Result<MetricsHandle, SetRecorderError<BucketingRecorder>> {
    let recorder = BucketingRecorder::new(PrometheusBuilder::new().build_recorder());
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    Ok(handle)
}

/// Renders every metric recorded, in Prometheus' text format.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    exporter: PrometheusHandle,
    histograms: Arc<Histograms>,
}

impl MetricsHandle {
    /// Every metric: the exporter's counters and gauges, then the histograms.
    pub fn render(&self) -> String {
        let mut text = self.exporter.render();
        self.histograms.render(&mut text);
        text
    }
}

/// The exporter's recorder for counters and gauges; histograms counted
/// into [`LATENCY_BUCKETS`] as they are recorded.
#[derive(Debug)]
pub struct BucketingRecorder {
    exporter: PrometheusRecorder,
    histograms: Arc<Histograms>,
}

impl BucketingRecorder {
    /// Wraps `exporter`.
    pub fn new(exporter: PrometheusRecorder) -> Self {
        Self {
            exporter,
            histograms: Arc::default(),
        }
    }

    /// A handle that renders what this recorder records.
    pub fn handle(&self) -> MetricsHandle {
        MetricsHandle {
            exporter: self.exporter.handle(),
            histograms: self.histograms.clone(),
        }
    }
}

impl Recorder for BucketingRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.exporter.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.exporter.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.exporter.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.exporter.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.histograms.series(key))
    }
}

/// Every histogram series, by name and labels.
#[derive(Debug, Default)]
struct Histograms {
    series: RwLock<HashMap<Key, Arc<Buckets>>>,
}

impl Histograms {
    /// The series of `key`, made on first use (a `histogram!` call per
    /// request finds it under a shared lock, without copying the key).
    fn series(&self, key: &Key) -> Arc<Buckets> {
        if let Some(buckets) = self.series.read().get(key) {
            return buckets.clone();
        }
        self.series
            .write()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Buckets::default()))
            .clone()
    }

    /// Appends every series to `text`, grouped by name, in order.
    fn render(&self, text: &mut String) {
        let mut series: Vec<(String, String, Arc<Buckets>)> = self
            .series
            .read()
            .iter()
            .map(|(key, buckets)| (key.name().to_owned(), labels(key), buckets.clone()))
            .collect();
        series.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut previous_name = None;
        for (name, labels, buckets) in &series {
            if previous_name != Some(name) {
                let _ = writeln!(text, "# TYPE {name} histogram");
                previous_name = Some(name);
            }
            buckets.render(name, labels, text);
        }
    }
}

/// A key's labels as `name="value",` pairs (each followed by a comma).
fn labels(key: &Key) -> String {
    key.labels().fold(String::new(), |mut text, label| {
        let _ = write!(text, "{}=\"{}\",", label.key(), escape(label.value()));
        text
    })
}

/// A label value escaped for the text format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One series: a count per bucket (the last one past every bound) and the
/// sum of the values in nanoseconds.
#[derive(Debug)]
struct Buckets {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl HistogramFn for Buckets {
    fn record(&self, seconds: f64) {
        let bucket = LATENCY_BUCKETS.partition_point(|bound| *bound < seconds);
        if let Some(count) = self.counts.get(bucket) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        // A negative or NaN value adds nothing (the cast saturates at 0).
        let nanos = (seconds * 1e9).round() as u64;
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl Buckets {
    /// Appends the series' lines (`labels`: see [`labels`]).
    fn render(&self, name: &str, labels: &str, text: &mut String) {
        let mut cumulative = 0;
        for (index, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            match LATENCY_BUCKETS.get(index) {
                Some(bound) => {
                    let _ = writeln!(text, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(text, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let labels = labels.trim_end_matches(',');
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(text, "{name}_sum{braced} {sum}");
        let _ = writeln!(text, "{name}_count{braced} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use metrics::{Key, Label, Level, Metadata, Recorder};
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::BucketingRecorder;

    fn metadata() -> Metadata<'static> {
        Metadata::new("test", Level::INFO, None)
    }

    #[test]
    fn histograms_render_cumulative_buckets_a_sum_and_a_count() {
        let recorder = BucketingRecorder::new(PrometheusBuilder::new().build_recorder());
        let key = Key::from_parts(
            "t_duration_seconds",
            vec![Label::new("op", "get"), Label::new("path", "a\"b\\c")],
        );
        let histogram = recorder.register_histogram(&key, &metadata());
        for seconds in [0.000_01, 0.000_05, 0.000_2, 0.003, 7.0] {
            histogram.record(seconds);
        }
        // The same series again (as a `histogram!` call per request does).
        recorder.register_histogram(&key, &metadata()).record(0.3);
        recorder
            .register_histogram(&Key::from_name("t_duration_seconds"), &metadata())
            .record(0.0);
        recorder
            .register_counter(&Key::from_name("t_total"), &metadata())
            .increment(4);

        let text = recorder.handle().render();
        let lines: Vec<&str> = text.lines().collect();
        let labels = r#"op="get",path="a\"b\\c","#;
        for (le, count) in [
            ("0.00005", 2),
            ("0.0001", 2),
            ("0.00025", 3),
            ("0.0025", 3),
            ("0.005", 4),
            ("0.25", 4),
            ("0.5", 5),
            ("2.5", 5),
            ("+Inf", 6),
        ] {
            let line = format!("t_duration_seconds_bucket{{{labels}le=\"{le}\"}} {count}");
            assert!(lines.contains(&line.as_str()), "{line} in\n{text}");
        }
        let labels = labels.trim_end_matches(',');
        let sum = format!("t_duration_seconds_sum{{{labels}}} 7.30326");
        let count = format!("t_duration_seconds_count{{{labels}}} 6");
        assert!(lines.contains(&sum.as_str()), "{sum} in\n{text}");
        assert!(lines.contains(&count.as_str()), "{count} in\n{text}");
        assert!(lines.contains(&r#"t_duration_seconds_bucket{le="0.00005"} 1"#));
        assert!(lines.contains(&"t_duration_seconds_count 1"));
        assert_eq!(
            lines
                .iter()
                .filter(|line| **line == "# TYPE t_duration_seconds histogram")
                .count(),
            1
        );
        assert!(
            lines.contains(&"t_total 4"),
            "counters still go to the exporter"
        );
    }
}
