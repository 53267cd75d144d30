//! `/etc/ecs-hostd/config.toml`: our own structured settings, as `[section]` tables of keys.
//!
//! The document is flattened into dotted keys (`watchdog.enabled`) with the line each key is on,
//! so a bad value can be reported as file, line and key. A syntax error is reported with the line
//! the TOML parser points at. Never panics.

use std::path::Path;

use super::{Diagnostic, Origin, Severity};

/// `(dotted key, value, 1-based line)`.
pub type TomlEntry = (String, toml::Value, usize);

/// Parses and flattens the document. Syntax errors come back as error diagnostics.
pub fn parse(path: &Path, text: &str) -> (Vec<TomlEntry>, Vec<Diagnostic>) {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            let e: toml::de::Error = e;
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            return (
                Vec::new(),
                vec![Diagnostic {
                    severity: Severity::Error,
                    origin: Origin::TomlFile {
                        path: path.to_owned(),
                        line,
                    },
                    key: String::new(),
                    message: format!("not valid TOML: {}", e.message()),
                }],
            );
        }
    };
    let mut out = Vec::new();
    flatten("", &table, text, &mut out);
    (out, Vec::new())
}

fn flatten(prefix: &str, table: &toml::Table, text: &str, out: &mut Vec<TomlEntry>) {
    for (key, value) in table {
        let dotted = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&dotted, inner, text, out),
            other => {
                let line = find_key_line(text, prefix, key);
                out.push((dotted, other.clone(), line));
            }
        }
    }
}

/// 1-based line of byte offset `pos`.
fn line_of(text: &str, pos: usize) -> usize {
    text.get(..pos.min(text.len()))
        .map(|t| t.matches('\n').count() + 1)
        .unwrap_or(1)
}

/// The line on which `key = ...` appears inside `[section]` (or at top level). The document has
/// already parsed, so the first match after the section header is the assignment. 0 if not found
/// (for example a key written as a dotted key or an inline table).
fn find_key_line(text: &str, section: &str, key: &str) -> usize {
    let mut in_section = section.is_empty();
    for (idx, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.starts_with('[') {
            let name = t.trim_start_matches('[').trim_end_matches(']').trim();
            in_section = name == section;
            continue;
        }
        if in_section
            && let Some((k, _)) = t.split_once('=')
            && k.trim().trim_matches('"') == key
        {
            return idx + 1;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn flattens_sections_with_lines() {
        let text = "# ours\n[watchdog]\nenabled = false\n\n[metrics]\ninterval = \"30s\"\n";
        let (entries, diags) = parse(Path::new("c.toml"), text);
        assert!(diags.is_empty());
        let keys: Vec<_> = entries.iter().map(|(k, _, l)| (k.as_str(), *l)).collect();
        assert!(keys.contains(&("watchdog.enabled", 3)));
        assert!(keys.contains(&("metrics.interval", 6)));
    }

    #[test]
    fn syntax_error_names_the_line() {
        let (_, diags) = parse(Path::new("c.toml"), "[metrics]\ninterval = \n");
        assert_eq!(diags.len(), 1);
        assert_eq!(
            diags[0].origin,
            Origin::TomlFile {
                path: "c.toml".into(),
                line: 2
            }
        );
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse(Path::new("x.toml"), &text);
        }
    }
}
