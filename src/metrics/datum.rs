//! A CloudWatch datum as the pipeline spools and sends it, and the local enforcement of the
//! PutMetricData limits (metrics.md §7.1): a datum that fails them is dropped and counted, never
//! sent to earn a 400.
//!
//! Also the request-size estimate the batcher uses. It models the RPCv2 CBOR body the newest
//! aws-sdk-cloudwatch sends (map keys, string headers, tagged timestamps) with a margin per datum,
//! so the estimate is an upper bound of the real body (an integration test checks it against the
//! bytes the SDK actually serialises). This module never performs I/O.

use serde::{Deserialize, Serialize};

use super::catalogue::Unit;

/// Datums per request (MetricData plus EntityMetricData).
pub const MAX_DATUMS_PER_REQUEST: usize = 1_000;
/// Estimated uncompressed body cap: 1 MB minus a margin (metrics.md §7.1).
pub const MAX_REQUEST_BYTES: usize = 900_000;
/// Dimensions per datum.
pub const MAX_DIMENSIONS: usize = 30;
/// Values/Counts entries per datum.
pub const MAX_VALUES: usize = 150;
/// Latest timestamp CloudWatch accepts, ahead of now.
pub const MAX_FUTURE_MS: i64 = 2 * 3600 * 1000;
/// Oldest timestamp CloudWatch accepts.
pub const MAX_PAST_MS: i64 = 14 * 24 * 3600 * 1000;

/// Fixed bytes per datum in the CBOR body: the map header, the keys `MetricName`, `Dimensions`,
/// `Timestamp`, `Value`, `Unit`, `StorageResolution` with their string headers, a tagged double
/// timestamp, a double value, the longest unit name; rounded up for margin.
const DATUM_OVERHEAD: usize = 128;
/// Fixed bytes per dimension: map header, `Name` and `Value` keys, two string headers.
const DIMENSION_OVERHEAD: usize = 24;
/// Bytes per Values/Counts entry pair (two 9-byte doubles) plus margin.
const VALUE_PAIR_BYTES: usize = 20;
/// Request envelope: `Namespace` and `MetricData` keys, headers.
pub const REQUEST_OVERHEAD: usize = 512;

/// A datum's value: one sample, or (when `pack_samples` is on) several as Values/Counts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// One value.
    Single(f64),
    /// Distinct values and how often each was seen.
    Packed {
        /// Values.
        values: Vec<f64>,
        /// Counts, same length.
        counts: Vec<f64>,
    },
}

/// One datum. Field names are short because thousands of these sit in the spool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Datum {
    /// Metric name.
    #[serde(rename = "n")]
    pub name: String,
    /// Unit.
    #[serde(rename = "u")]
    pub unit: Unit,
    /// Value.
    #[serde(rename = "v")]
    pub value: Value,
    /// Sample time (Unix milliseconds), kept from collection to delivery.
    #[serde(rename = "t")]
    pub timestamp_ms: i64,
    /// Dimensions sorted by name.
    #[serde(rename = "d", default, skip_serializing_if = "Vec::is_empty")]
    pub dimensions: Vec<(String, String)>,
    /// StorageResolution 1 (else unset, which means 60).
    #[serde(rename = "h", default, skip_serializing_if = "std::ops::Not::not")]
    pub high_resolution: bool,
}

/// Why a datum or namespace cannot be sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Metric name length.
    #[error("metric name must have 1–255 characters")]
    Name,
    /// Too many dimensions.
    #[error("{0} dimensions (at most 30)")]
    TooManyDimensions(usize),
    /// A dimension name breaks the rules.
    #[error(
        "dimension name {0:?} must be 1–255 ASCII characters, no control characters, no leading colon"
    )]
    DimensionName(String),
    /// A dimension value breaks the rules.
    #[error(
        "dimension {0:?} value must be 1–1024 ASCII characters, no control characters, not only whitespace"
    )]
    DimensionValue(String),
    /// NaN, infinite or beyond ±2^360.
    #[error("value is not finite or beyond ±2^360")]
    Value,
    /// Values/Counts of different lengths, empty, or more than 150.
    #[error("Values/Counts must have 1–150 entries of equal length")]
    Values,
    /// More than 2 h ahead.
    #[error("timestamp more than 2 h in the future")]
    Future,
    /// Older than CloudWatch (14 days) or the spool's age cap accepts.
    #[error("timestamp older than the age cap")]
    TooOld,
    /// The namespace breaks the rules.
    #[error("namespace {0:?} must be 1–255 ASCII characters and not start with AWS/")]
    Namespace(String),
}

impl Invalid {
    /// Invalid data never becomes valid by waiting.
    pub fn is_retryable(&self) -> bool {
        false
    }
}

fn plain_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

fn value_ok(v: f64) -> bool {
    // 2^360, CloudWatch's documented range.
    const LIMIT: f64 = 2.348_542_582_773_833_2e108;
    v.is_finite() && v.abs() <= LIMIT
}

/// Checks a namespace.
pub fn validate_namespace(ns: &str) -> Result<(), Invalid> {
    if ns.is_empty() || ns.len() > 255 || !plain_ascii(ns) || ns.starts_with("AWS/") {
        return Err(Invalid::Namespace(ns.to_owned()));
    }
    Ok(())
}

impl Datum {
    /// A single-valued datum.
    pub fn new(
        name: &str,
        unit: Unit,
        value: f64,
        timestamp_ms: i64,
        dimensions: Vec<(String, String)>,
        high_resolution: bool,
    ) -> Datum {
        Datum {
            name: name.to_owned(),
            unit,
            value: Value::Single(value),
            timestamp_ms,
            dimensions,
            high_resolution,
        }
    }

    /// Checks every rule of metrics.md §7.1 at `now_ms`, with `max_age_ms` as the local age cap
    /// (never above CloudWatch's 14 days).
    pub fn validate(&self, now_ms: i64, max_age_ms: i64) -> Result<(), Invalid> {
        if self.name.is_empty() || self.name.chars().count() > 255 {
            return Err(Invalid::Name);
        }
        if self.dimensions.len() > MAX_DIMENSIONS {
            return Err(Invalid::TooManyDimensions(self.dimensions.len()));
        }
        for (name, value) in &self.dimensions {
            if name.is_empty() || name.len() > 255 || !plain_ascii(name) || name.starts_with(':') {
                return Err(Invalid::DimensionName(name.clone()));
            }
            if value.is_empty()
                || value.len() > 1024
                || !plain_ascii(value)
                || value.trim().is_empty()
            {
                return Err(Invalid::DimensionValue(name.clone()));
            }
        }
        match &self.value {
            Value::Single(v) if !value_ok(*v) => return Err(Invalid::Value),
            Value::Single(_) => {}
            Value::Packed { values, counts } => {
                if values.is_empty() || values.len() > MAX_VALUES || values.len() != counts.len() {
                    return Err(Invalid::Values);
                }
                if !values.iter().chain(counts).all(|v| value_ok(*v)) {
                    return Err(Invalid::Value);
                }
            }
        }
        if self.timestamp_ms > now_ms + MAX_FUTURE_MS {
            return Err(Invalid::Future);
        }
        if self.timestamp_ms < now_ms - max_age_ms.min(MAX_PAST_MS) {
            return Err(Invalid::TooOld);
        }
        Ok(())
    }

    /// Upper bound of this datum's bytes in the request body.
    pub fn estimated_size(&self) -> usize {
        let dims: usize = self
            .dimensions
            .iter()
            .map(|(n, v)| DIMENSION_OVERHEAD + n.len() + v.len())
            .sum();
        let values = match &self.value {
            Value::Single(_) => 0,
            Value::Packed { values, .. } => 16 + values.len() * VALUE_PAIR_BYTES,
        };
        DATUM_OVERHEAD + self.name.len() + dims + values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const DAY: i64 = 86_400_000;

    fn ok() -> Datum {
        Datum::new(
            "mem_used_percent",
            Unit::Percent,
            42.5,
            NOW,
            vec![("InstanceId".into(), "i-0123".into())],
            false,
        )
    }

    #[test]
    fn every_limit_of_7_1_is_enforced() {
        assert_eq!(ok().validate(NOW, DAY), Ok(()));
        let with = |f: &dyn Fn(&mut Datum)| {
            let mut d = ok();
            f(&mut d);
            d.validate(NOW, DAY)
        };
        assert_eq!(with(&|d| d.name.clear()), Err(Invalid::Name));
        assert_eq!(with(&|d| d.name = "x".repeat(256)), Err(Invalid::Name));
        assert_eq!(
            with(&|d| d.dimensions = (0..31).map(|i| (format!("d{i}"), "v".into())).collect()),
            Err(Invalid::TooManyDimensions(31))
        );
        assert!(
            with(&|d| d.dimensions = (0..30).map(|i| (format!("d{i}"), "v".into())).collect())
                .is_ok()
        );
        assert!(matches!(
            with(&|d| d.dimensions[0].0 = ":x".into()),
            Err(Invalid::DimensionName(_))
        ));
        assert!(matches!(
            with(&|d| d.dimensions[0].1 = "caf\u{e9}".into()),
            Err(Invalid::DimensionValue(_))
        ));
        assert!(matches!(
            with(&|d| d.dimensions[0].1 = "   ".into()),
            Err(Invalid::DimensionValue(_))
        ));
        assert!(matches!(
            with(&|d| d.dimensions[0].1 = "a\tb".into()),
            Err(Invalid::DimensionValue(_))
        ));
        assert!(matches!(
            with(&|d| d.dimensions[0].1 = "v".repeat(1025)),
            Err(Invalid::DimensionValue(_))
        ));
        assert_eq!(
            with(&|d| d.value = Value::Single(f64::NAN)),
            Err(Invalid::Value)
        );
        assert_eq!(
            with(&|d| d.value = Value::Single(f64::INFINITY)),
            Err(Invalid::Value)
        );
        assert_eq!(
            with(&|d| d.value = Value::Single(1e109)),
            Err(Invalid::Value)
        );
        assert_eq!(
            with(&|d| d.value = Value::Packed {
                values: vec![1.0; 151],
                counts: vec![1.0; 151]
            }),
            Err(Invalid::Values)
        );
        assert_eq!(
            with(&|d| d.value = Value::Packed {
                values: vec![1.0, 2.0],
                counts: vec![1.0]
            }),
            Err(Invalid::Values)
        );
        assert_eq!(
            with(&|d| d.timestamp_ms = NOW + 3 * 3600 * 1000),
            Err(Invalid::Future)
        );
        assert_eq!(
            with(&|d| d.timestamp_ms = NOW - 2 * DAY),
            Err(Invalid::TooOld)
        );
        // The local cap never exceeds CloudWatch's 14 days.
        let mut d = ok();
        d.timestamp_ms = NOW - 15 * DAY;
        assert_eq!(d.validate(NOW, 30 * DAY), Err(Invalid::TooOld));
        assert!(validate_namespace("AWS/EC2").is_err());
        assert!(validate_namespace("CWAgent").is_ok());
        assert!(!Invalid::Value.is_retryable());
    }

    #[test]
    fn spool_form_is_compact_and_round_trips() {
        let d = ok();
        let json = serde_json::to_string(&d).unwrap();
        assert!(!json.contains("\"h\""), "{json}");
        assert_eq!(serde_json::from_str::<Datum>(&json).unwrap(), d);
        let p = Datum {
            value: Value::Packed {
                values: vec![1.0, 2.0],
                counts: vec![3.0, 1.0],
            },
            high_resolution: true,
            ..ok()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Datum>(&json).unwrap(), p);
        assert!(p.estimated_size() > d.estimated_size());
    }
}
