//! Parsers for the value syntaxes the official agent accepts in `ecs.config` and the environment:
//! Go booleans, Go durations, JSON lists and maps, port ranges. Pure functions, no I/O.
//!
//! Every parser returns `Err(String)` describing what was expected, so the caller can attach the
//! file, line and key. None of them panics on any input (see the property tests).

use std::collections::BTreeMap;
use std::time::Duration;

/// Go's `strconv.ParseBool`: `1 t T TRUE true True 0 f F FALSE false False`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        other => Err(format!(
            "expected a boolean (true/false/1/0/t/f), got {other:?}"
        )),
    }
}

/// Go's `time.ParseDuration`: a sequence of decimal numbers with units `ns us µs ms s m h`,
/// e.g. `30s`, `1h30m`, `1.5h`, `500ms`; `0` alone is zero. Negative durations are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let err = || format!("expected a duration such as 30s, 10m, 3h or 1h30m, got {s:?}");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return Err(err());
    }
    let s_body = s.strip_prefix('+').unwrap_or(s);
    let mut total_nanos: f64 = 0.0;
    let mut rest = s_body;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(err());
        }
        let number: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(err()),
        };
        total_nanos += number * scale;
    }
    // Cap at roughly 290 years, Go's own maximum, so absurd inputs fail instead of overflowing.
    if !total_nanos.is_finite() || total_nanos > 9.2e18 {
        return Err(err());
    }
    Ok(Duration::from_nanos(total_nanos as u64))
}

/// A JSON array of port numbers, e.g. `[22, 2375]`.
pub fn parse_port_list(s: &str) -> Result<Vec<u16>, String> {
    serde_json::from_str::<Vec<u16>>(s.trim())
        .map_err(|_| format!("expected a JSON list of port numbers such as [22,80], got {s:?}"))
}

/// A JSON array of strings, e.g. `["json-file","awslogs"]`.
pub fn parse_string_list(s: &str) -> Result<Vec<String>, String> {
    serde_json::from_str::<Vec<String>>(s.trim()).map_err(|_| {
        format!("expected a JSON list of strings such as [\"json-file\",\"none\"], got {s:?}")
    })
}

/// A JSON object of string values, e.g. `{"stack":"prod"}`.
pub fn parse_string_map(s: &str) -> Result<BTreeMap<String, String>, String> {
    serde_json::from_str::<BTreeMap<String, String>>(s.trim()).map_err(|_| {
        format!("expected a JSON object of strings such as {{\"stack\":\"prod\"}}, got {s:?}")
    })
}

/// A comma-separated list; empty items are dropped.
pub fn parse_comma_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `low-high` with `0 < low <= high`.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let err = || format!("expected a port range low-high such as 32768-60999, got {s:?}");
    let (lo, hi) = s.trim().split_once('-').ok_or_else(err)?;
    let lo: u16 = lo.trim().parse().map_err(|_| err())?;
    let hi: u16 = hi.trim().parse().map_err(|_| err())?;
    if lo == 0 || lo > hi {
        return Err(err());
    }
    Ok((lo, hi))
}

/// A non-negative integer.
pub fn parse_u64(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("expected a non-negative whole number, got {s:?}"))
}

/// A percentage between 0 and 100 inclusive.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("expected a percentage between 0 and 100, got {s:?}"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!(
            "expected a percentage between 0 and 100, got {s:?}"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn go_booleans() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["yes", "on", "", "tRuE", "2"] {
            assert!(parse_bool(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "30", "-5s", "5x", "s", "1h-5m", "..s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_and_maps() {
        assert_eq!(parse_port_list("[22, 80]"), Ok(vec![22, 80]));
        assert!(parse_port_list("[70000]").is_err());
        assert!(parse_port_list("22,80").is_err());
        assert_eq!(
            parse_string_map(r#"{"a":"b"}"#)
                .unwrap()
                .get("a")
                .map(String::as_str),
            Some("b")
        );
        assert!(parse_string_map(r#"{"a":1}"#).is_err());
        assert_eq!(parse_comma_list("a:1, ,b:2"), vec!["a:1", "b:2"]);
        assert_eq!(parse_port_range("32768-60999"), Ok((32768, 60999)));
        assert!(parse_port_range("9-3").is_err());
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*") {
            let _ = parse_bool(&s);
            let _ = parse_duration(&s);
            let _ = parse_port_list(&s);
            let _ = parse_string_list(&s);
            let _ = parse_string_map(&s);
            let _ = parse_port_range(&s);
            let _ = parse_u64(&s);
            let _ = parse_percent(&s);
            let _ = parse_comma_list(&s);
        }

        #[test]
        fn durations_round_trip(secs in 0u64..1_000_000) {
            prop_assert_eq!(parse_duration(&format!("{secs}s")), Ok(Duration::from_secs(secs)));
        }
    }
}
