//! The official `/etc/ecs/ecs.config` format: one `KEY=VALUE` per line, split at the first `=`,
//! values taken literally (no quotes, escapes or inline comments), as the official agent reads it.
//!
//! Only the line structure is checked here; keys and values are checked by `settings`. Never
//! fails and never panics: every input yields entries plus the malformed lines found.

/// `(key, value, 1-based line)` for each assignment.
pub type Assignment = (String, String, usize);

/// Splits the file into assignments and malformed lines `(line, message)`.
///
/// Blank lines and lines starting with `#` are skipped silently. A line without `=` is skipped
/// (as the official agent does) and reported. A key that is not a valid environment name is
/// reported and skipped. Values wrapped in matching quotes are kept literally but reported,
/// because the official agent keeps the quotes too and that surprises people.
pub fn parse(text: &str) -> (Vec<Assignment>, Vec<(usize, String)>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bad.push((
                line_no,
                format!("malformed line {trimmed:?}: expected KEY=VALUE"),
            ));
            continue;
        };
        let key = key.trim();
        let key = key.strip_prefix("export ").map(str::trim).unwrap_or(key);
        if key.is_empty()
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || key.starts_with(|c: char| c.is_ascii_digit())
        {
            bad.push((
                line_no,
                format!("malformed line {trimmed:?}: {key:?} is not a valid key name"),
            ));
            continue;
        }
        let value = value.trim();
        if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            bad.push((
                line_no,
                format!(
                    "{key}: value {value} is quoted; quotes are taken literally, as the official agent does"
                ),
            ));
        }
        out.push((key.to_owned(), value.to_owned(), line_no));
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn splits_at_first_equals_and_numbers_lines() {
        let (entries, bad) = parse(
            "# comment\n\nECS_CLUSTER=prod\nECS_INSTANCE_ATTRIBUTES={\"a\":\"b=c\"}\ngarbage\n",
        );
        assert_eq!(
            entries,
            vec![
                ("ECS_CLUSTER".into(), "prod".into(), 3),
                (
                    "ECS_INSTANCE_ATTRIBUTES".into(),
                    "{\"a\":\"b=c\"}".into(),
                    4
                ),
            ]
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, 5);
        assert!(bad[0].1.contains("expected KEY=VALUE"));
    }

    #[test]
    fn bad_key_names_and_quotes_are_reported() {
        let (entries, bad) = parse("BAD KEY=1\nECS_CLUSTER=\"prod\"\n");
        assert_eq!(entries.len(), 1, "quoted value kept, literally");
        assert_eq!(entries[0].1, "\"prod\"");
        assert_eq!(bad.len(), 2);
        assert_eq!(bad[0].0, 1);
        assert_eq!(bad[1].0, 2);
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let (entries, bad) = parse(&text);
            for (_, _, line) in &entries { prop_assert!(*line >= 1); }
            for (line, _) in &bad { prop_assert!(*line >= 1); }
        }
    }
}
