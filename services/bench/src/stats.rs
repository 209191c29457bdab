//! Latency samples and their percentiles, and the plain-text tables the
//! scenarios print.

use std::time::Duration;

use serde_json::{Value, json};

/// Latency samples of one measured path.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    micros: Vec<u64>,
}

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, d: Duration) {
        self.micros
            .push(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn extend(&mut self, other: Samples) {
        self.micros.extend(other.micros);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// The q-quantile (0 < q <= 1) in milliseconds, nearest-rank; 0 when empty.
    pub fn quantile_ms(&mut self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        self.micros.sort_unstable();
        let n = self.micros.len();
        // Nearest rank: the smallest sample with at least q of all at or below it.
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.micros[rank - 1] as f64 / 1000.0
    }

    /// p50, p99 and p99.9 as a JSON object in milliseconds.
    pub fn summary(&mut self) -> Value {
        json!({
            "samples": self.len(),
            "p50": round3(self.quantile_ms(0.50)),
            "p99": round3(self.quantile_ms(0.99)),
            "p999": round3(self.quantile_ms(0.999)),
        })
    }
}

/// Rounds to three decimals, for figures meant to be read.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn ratio(ours: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        round3(ours / baseline)
    } else {
        0.0
    }
}

/// A left-aligned text table: a header row, then the rows.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|s| (*s).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.len());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, w) in widths.iter().enumerate() {
                let cell = cells.get(i).map(String::as_str).unwrap_or("");
                s.push_str(&format!(" {cell:<w$} |"));
            }
            s
        };
        let mut out = line(&self.header);
        out.push('\n');
        out.push('|');
        for w in &widths {
            out.push_str(&"-".repeat(w + 2));
            out.push('|');
        }
        for row in &self.rows {
            out.push('\n');
            out.push_str(&line(row));
        }
        out
    }
}

/// A number with thousands separators, for event counts and rates.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut s = Samples::new();
        for ms in 1..=1000u64 {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.quantile_ms(0.5), 500.0);
        assert_eq!(s.quantile_ms(0.99), 990.0);
        assert_eq!(s.quantile_ms(0.999), 999.0);
        assert_eq!(s.quantile_ms(1.0), 1000.0);
        let mut one = Samples::new();
        one.push(Duration::from_micros(1500));
        assert_eq!(one.quantile_ms(0.999), 1.5);
        assert_eq!(Samples::new().quantile_ms(0.5), 0.0);
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(15600.4), "15,600");
        assert_eq!(thousands(-1234567.0), "-1,234,567");
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["path", "ev/s"]);
        t.row(vec!["PublishBatch".into(), "1".into()]);
        assert_eq!(
            t.render(),
            "| path         | ev/s |\n|--------------|------|\n| PublishBatch | 1    |"
        );
    }
}
