//! Prometheus text exposition as the tests read it: every sample with its
//! labels (escapes undone), and the sums and look-ups the tests assert on.
//!
//! One parser of its own rather than the `prometheus-parse` crate: that one
//! skips every sample with a `}` inside a label value, and the HTTP metrics
//! carry route templates such as `route="/v1/sessions/{id}"`.

use std::fmt;

use crate::http::{call, http_client};

/// One sample line: metric name, labels in their order, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric name (with its `_bucket`, `_sum`... suffix).
    pub name: String,
    /// The labels, as (name, value) pairs.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if the sample has it.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_str())
    }

    fn has_all(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(key, value)| self.label(key) == Some(*value))
    }
}

/// A scrape: its text and its samples.
#[derive(Debug, Clone)]
pub struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses Prometheus text; panics on a sample line it cannot read.
    pub fn parse(text: impl Into<String>) -> Self {
        let text = text.into();
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("bad sample line {line:?}")))
            .collect();
        Self { text, samples }
    }

    /// The text as scraped.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every sample, in the order of the text.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The number of series (sample lines).
    pub fn series(&self) -> usize {
        self.samples.len()
    }

    /// The sum of the samples of `name` that carry all of `labels` (and
    /// maybe more); `None` when no sample matches.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .filter(|sample| sample.name == name && sample.has_all(labels))
            .map(|sample| sample.value)
            .reduce(|sum, value| sum + value)
    }

    /// The value of the sample of `name` whose labels are exactly `labels`
    /// (in any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|sample| {
                sample.name == name && sample.labels.len() == labels.len() && sample.has_all(labels)
            })
            .map(|sample| sample.value)
    }

    /// The values of label `key` over all samples of `name`.
    pub fn label_values(&self, name: &str, key: &str) -> Vec<&str> {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter_map(|sample| sample.label(key))
            .collect()
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `GET <base_url>/metrics`, asserting a 200.
pub async fn scrape(base_url: &str) -> Metrics {
    let client = http_client(crate::http::EXCHANGE_TIMEOUT);
    let answer = call(client.get(format!("{base_url}/metrics"))).await;
    assert_eq!(answer.status, 200, "/metrics: {}", answer.text);
    Metrics::parse(answer.text)
}

/// `name{key="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let (value, after) = quoted(after)?;
            labels.push((key.trim().to_owned(), value));
            rest = after;
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// A label value up to its closing quote, unescaped, and what follows it.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            other => value.push(other),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE sessiond_http_requests_total counter
sessiond_http_requests_total{route=\"/v1/sessions/{id}\",method=\"GET\",status=\"200\"} 3
sessiond_http_requests_total{route=\"/v1/sessions/{id}\",method=\"GET\",status=\"404\"} 1
sessiond_http_requests_total{route=\"/v1/sessions\",method=\"POST\",status=\"201\"} 2

sessiond_http_request_duration_seconds_bucket{route=\"/v1/sessions\",le=\"+Inf\"} 2
odd{path=\"a \\\"quoted\\\" \\\\ name\"} 1.5 1700000000000
sessiond_sessions 2
";

    #[test]
    fn samples_keep_labels_with_braces_escapes_and_infinity() {
        let metrics = Metrics::parse(TEXT);
        assert_eq!(metrics.series(), 6);
        let get = [("route", "/v1/sessions/{id}"), ("method", "GET")];
        assert_eq!(metrics.sum("sessiond_http_requests_total", &get), Some(4.0));
        assert_eq!(
            metrics.value("sessiond_http_requests_total", &get),
            None,
            "value() wants every label"
        );
        let buckets = "sessiond_http_request_duration_seconds_bucket";
        assert_eq!(metrics.sum(buckets, &[("le", "+Inf")]), Some(2.0));
        assert_eq!(
            metrics.value("odd", &[("path", "a \"quoted\" \\ name")]),
            Some(1.5)
        );
        assert_eq!(metrics.value("sessiond_sessions", &[]), Some(2.0));
        assert_eq!(
            metrics.label_values("sessiond_http_requests_total", "status"),
            ["200", "404", "201"]
        );
        assert_eq!(metrics.sum("absent", &[]), None);
    }
}
