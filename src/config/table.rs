//! The settings table of `docs/configuration.md`, generated from the declaration: one row per
//! setting with its file key, flag, variable, kind, default and range. The docs hold it
//! between [`TABLE_BEGIN`] and [`TABLE_END`]; a test fails when the two differ, and
//! `LARDER_BLESS=1 cargo test --lib config::` (or `larder check-config --settings-table`)
//! writes it anew.

use std::fmt::Write as _;

use super::bound_text;
use super::settings::{Components, DefaultFrom, SETTINGS};

/// The line before the generated table in the docs.
pub const TABLE_BEGIN: &str = "<!-- settings:begin -->";
/// The line after it.
pub const TABLE_END: &str = "<!-- settings:end -->";

/// The markdown table of every setting, in the declaration's order.
pub fn settings_table() -> String {
    let components = Components::defaults();
    let mut out = String::from(
        "| File key | Flag | Environment variable | Kind | Default | Range | Description |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in SETTINGS {
        let default = match (s.default, s.default_value(&components)) {
            (_, None) => "unset".to_owned(),
            (DefaultFrom::With(other, _), Some(v)) => {
                format!("`{}` with `{}`, else unset", v.show(), other.key)
            }
            (_, Some(v)) => format!("`{}`", v.show()),
        };
        let range = match s.range {
            Some((lo, hi)) => format!(
                "{} to {}",
                code(&bound_text(lo, s.kind)),
                code(&bound_text(hi, s.kind))
            ),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "| `{}` | `--{}` | `{}` | {} | {} | {} | {} |",
            s.key,
            s.flag,
            s.env,
            s.kind.describe(),
            default,
            range,
            s.help.replace('|', "\\|")
        );
    }
    out
}

fn code(text: &str) -> String {
    format!("`{text}`")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The docs page holding the table.
    fn docs_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md")
    }

    /// The text between the markers, and where it starts and ends in `page`.
    fn region(page: &str) -> Option<(usize, usize)> {
        let start = page.find(TABLE_BEGIN)? + TABLE_BEGIN.len();
        let end = start + page[start..].find(TABLE_END)?;
        Some((start, end))
    }

    /// The lines of `want` and `got` that differ, marked `-` (docs) and `+` (declaration).
    fn diff(docs: &str, declared: &str) -> String {
        let (d, w): (Vec<&str>, Vec<&str>) = (docs.lines().collect(), declared.lines().collect());
        let mut out = String::new();
        for i in 0..d.len().max(w.len()) {
            let (a, b) = (d.get(i), w.get(i));
            if a != b {
                if let Some(a) = a {
                    let _ = writeln!(out, "line {}: - {a}", i + 1);
                }
                if let Some(b) = b {
                    let _ = writeln!(out, "line {}: + {b}", i + 1);
                }
            }
        }
        out
    }

    #[test]
    fn the_docs_table_is_the_declarations() {
        let path = docs_path();
        let page = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let (start, end) = region(&page).unwrap_or_else(|| {
            panic!(
                "{} has no {TABLE_BEGIN} ... {TABLE_END} region",
                path.display()
            )
        });
        let declared = format!("\n{}", settings_table());
        let committed = &page[start..end];
        if committed == declared {
            return;
        }
        if std::env::var_os("LARDER_BLESS").is_some_and(|v| v == "1") {
            let mut fresh = page.clone();
            fresh.replace_range(start..end, &declared);
            std::fs::write(&path, fresh).unwrap();
            return;
        }
        panic!(
            "the settings table in {} differs from the declaration (src/config/settings.rs); \
             rewrite it with `LARDER_BLESS=1 cargo test --lib config::table`:\n{}",
            path.display(),
            diff(committed, &declared)
        );
    }
}
