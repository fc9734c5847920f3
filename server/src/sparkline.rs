//! What the status pages draw rates from: a ring of once-a-second samples
//! of cumulative counters ([`Ring`]), and inline SVG sparklines ([`svg`],
//! no external assets). Shared by the store node's `/status` and the
//! balancer's admin page.

use std::collections::VecDeque;
use std::fmt::Write;
use std::time::Instant;

/// Seconds of history a page shows (five minutes).
pub const SECONDS: usize = 300;

/// The last [`SECONDS`] + 1 samples of some counters, oldest first.
#[derive(Debug)]
pub struct Ring<T> {
    samples: VecDeque<(Instant, T)>,
}

impl<T> Default for Ring<T> {
    fn default() -> Self {
        Self {
            samples: VecDeque::with_capacity(SECONDS + 1),
        }
    }
}

impl<T> Ring<T> {
    /// Records `sample`, taken at `at`, dropping the oldest past the window.
    pub fn push(&mut self, at: Instant, sample: T) {
        if self.samples.len() > SECONDS {
            self.samples.pop_front();
        }
        self.samples.push_back((at, sample));
    }

    /// The oldest and the newest sample, if there are two.
    pub fn ends(&self) -> Option<(&T, &T)> {
        match (self.samples.front(), self.samples.back()) {
            (Some((_, first)), Some((_, last))) if self.samples.len() > 1 => Some((first, last)),
            _ => None,
        }
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&T> {
        self.samples.back().map(|(_, sample)| sample)
    }

    /// Per-second increases of the counter `count` reads from each sample,
    /// oldest first (one fewer than the samples).
    pub fn rates(&self, count: impl Fn(&T) -> u64) -> Vec<f64> {
        self.samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .map(|((before, earlier), (after, later))| {
                let seconds = after.duration_since(*before).as_secs_f64().max(1e-3);
                count(later).saturating_sub(count(earlier)) as f64 / seconds
            })
            .collect()
    }

    /// The counter's increase per second over the last `span` samples
    /// (fewer while the ring is younger).
    pub fn recent_rate(&self, span: usize, count: impl Fn(&T) -> u64) -> f64 {
        let len = self.samples.len();
        let first = len.saturating_sub(span + 1);
        match (self.samples.get(first), self.samples.back()) {
            (Some((before, earlier)), Some((after, later))) if len > 1 => {
                let seconds = after.duration_since(*before).as_secs_f64().max(1e-3);
                count(later).saturating_sub(count(earlier)) as f64 / seconds
            }
            _ => 0.0,
        }
    }
}

/// An inline SVG line of `values` (oldest first) scaled to their largest,
/// `width` × `height` pixels, with `title` as its tooltip.
pub fn svg(values: &[f64], width: u32, height: u32, title: &str) -> String {
    let top = values.iter().copied().fold(0.0_f64, f64::max).max(1.0);
    let step = f64::from(width) / (SECONDS.max(2) - 1) as f64;
    // Right-aligned: the newest second is at the right edge.
    let offset = f64::from(width) - step * values.len().saturating_sub(1) as f64;
    let mut points = String::new();
    for (index, value) in values.iter().enumerate() {
        let x = offset + step * index as f64;
        let y = f64::from(height) - value / top * f64::from(height - 2) - 1.0;
        let _ = write!(points, "{x:.1},{y:.1} ");
    }
    format!(
        "<svg class=\"spark\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" \
         role=\"img\"><title>{title}</title>\
         <polyline fill=\"none\" stroke=\"#2a6\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        points.trim_end()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rates_are_per_second_increases_over_a_bounded_window() {
        let start = Instant::now();
        let mut ring = Ring::default();
        for second in 0..(SECONDS as u64 + 10) {
            ring.push(start + Duration::from_secs(second), second * 3);
        }
        let rates = ring.rates(|total| *total);
        assert_eq!(rates.len(), SECONDS);
        assert!(rates.iter().all(|rate| (*rate - 3.0).abs() < 1e-9));
        assert!((ring.recent_rate(10, |total| *total) - 3.0).abs() < 1e-9);
        assert_eq!(ring.latest(), Some(&((SECONDS as u64 + 9) * 3)));
    }

    #[test]
    fn a_sparkline_has_one_point_per_value() {
        let line = svg(&[0.0, 2.0, 4.0], 300, 30, "create");
        assert!(line.starts_with("<svg"));
        assert_eq!(line.matches(',').count(), 3);
        assert!(line.contains("<title>create</title>"));
    }
}
