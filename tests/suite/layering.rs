//! The dependency rule of the library, checked on its source: every file under `src/` (but
//! `bin/`, the binary, and `lib.rs`, the map) belongs to a top-level module, and a module
//! may use only modules below it. From the bottom up:
//!
//! | rank | modules                                     |
//! |------|---------------------------------------------|
//! | 0    | `error`, `clock`, `limiter`, `pb` (leaves)  |
//! | 1    | `store`                                     |
//! | 2    | `service`                                   |
//! | 3    | `metrics`                                   |
//! | 4    | `server`                                    |
//! | 5    | `config`                                    |
//!
//! Leaves do not use each other, except that any leaf may use `error` and `clock` (and
//! `clock` may use `error`, never the reverse). Nothing uses `config`: only the binary does.
//! A top-level module missing from the table fails too, so that a new one is given a place.
//!
//! Uses are found by reading the source, comments and string literals left out: every
//! `crate::<module>` path (in a `use`, a multi-line `use crate::{…}` group or inline in the
//! code) and every `super::` path that climbs out of the top-level module.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The rank of a top-level module, or `None` when the table has no place for it.
fn rank(module: &str) -> Option<u8> {
    Some(match module {
        "error" | "clock" | "limiter" | "pb" => 0,
        "store" => 1,
        "service" => 2,
        "metrics" => 3,
        "server" => 4,
        "config" => 5,
        _ => return None,
    })
}

/// Why `from` may not use `to`, or `None` when it may.
fn broken_rule(from: &str, to: &str) -> Option<String> {
    if from == to {
        return None;
    }
    if to == "config" {
        return Some("nothing below the binary may use `config`".into());
    }
    let (Some(from_rank), Some(to_rank)) = (rank(from), rank(to)) else {
        return Some(format!(
            "`{}` has no place in the layering table of tests/suite/layering.rs",
            if rank(from).is_none() { from } else { to }
        ));
    };
    if from_rank == 0 && to_rank == 0 {
        let allowed = to == "error" || (to == "clock" && from != "error");
        return (!allowed).then(|| {
            "leaves do not use each other (any leaf may use `error` and `clock`; `error` uses \
             nothing)"
                .into()
        });
    }
    (to_rank >= from_rank).then(|| {
        format!(
            "`{from}` (rank {from_rank}) may use only modules below it, not `{to}` (rank {to_rank})"
        )
    })
}

/// One use that breaks the rule.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    file: String,
    line: usize,
    from: String,
    to: String,
    rule: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.from == self.to {
            write!(f, "{}:{}: {}", self.file, self.line, self.rule)
        } else {
            write!(
                f,
                "{}:{}: `{}` uses `{}`: {}",
                self.file, self.line, self.from, self.to, self.rule
            )
        }
    }
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The module path of a file relative to `src/`: `store/writer/mod.rs` → `[store, writer]`,
/// `error.rs` → `[error]`.
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// `text` with comments and the contents of string and char literals blanked out, newlines
/// kept, so that line numbers still hold.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && !chars[..i]
                .last()
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let mut k = j + 1;
            while k < chars.len()
                && !(chars[k] == '"' && (0..hashes).all(|h| chars.get(k + 1 + h) == Some(&'#')))
            {
                k += 1;
            }
            let end = (k + 1 + hashes).min(chars.len());
            out.extend(chars[i..end].iter().map(|&ch| blank(ch)));
            i = end;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\''), or a lifetime ('a), which is left as it is.
            let literal_len = match (next, chars.get(i + 2), chars.get(i + 3)) {
                (Some('\\'), _, _) => chars[i + 3..]
                    .iter()
                    .position(|&ch| ch == '\'')
                    .map(|n| n + 4),
                (Some(_), Some('\''), _) => Some(3),
                _ => None,
            };
            match literal_len {
                Some(n) => {
                    out.extend(std::iter::repeat_n(' ', n));
                    i += n;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The identifier starting at `at` in `chars`, if any.
fn ident_at(chars: &[char], at: usize) -> Option<String> {
    let ident: String = chars[at..]
        .iter()
        .take_while(|c| c.is_alphanumeric() || **c == '_')
        .collect();
    (!ident.is_empty()).then_some(ident)
}

/// Skips whitespace from `at`.
fn skip_space(chars: &[char], mut at: usize) -> usize {
    while at < chars.len() && chars[at].is_whitespace() {
        at += 1;
    }
    at
}

/// The first segment of every path in the group that opens at `at` (`{store::{a, b},
/// service::X, self}` → `store`, `service`, `self`), each with its offset.
fn group_heads(chars: &[char], at: usize) -> Vec<(usize, String)> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect_head = false;
    let mut i = at;
    while i < chars.len() {
        match chars[i] {
            '{' => {
                depth += 1;
                expect_head = depth == 1;
                i += 1;
            }
            '}' => {
                depth -= 1;
                i += 1;
                if depth == 0 {
                    break;
                }
            }
            ',' => {
                expect_head = depth == 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            _ => {
                if expect_head && let Some(ident) = ident_at(chars, i) {
                    heads.push((i, ident.clone()));
                    expect_head = false;
                    i += ident.len();
                } else {
                    expect_head = false;
                    i += 1;
                }
            }
        }
    }
    heads
}

/// Every top-level module the code uses, with the offset of the use: `crate::x` paths, the
/// heads of `crate::{…}` groups, and `super::` chains that climb `depth` levels or more (out
/// of a file whose module path is `depth` long, they reach the crate root).
fn used_modules(code: &str, depth: usize) -> Vec<(usize, String)> {
    let chars: Vec<char> = code.chars().collect();
    let mut uses = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        let after_dollar = i > 0 && chars[i - 1] == '$';
        if !starts_word || after_dollar {
            i += 1;
            continue;
        }
        let root_at = if chars[i..].starts_with(&['c', 'r', 'a', 't', 'e', ':', ':']) {
            Some(i + "crate::".len())
        } else if chars[i..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
            let mut j = i;
            let mut climbs = 0;
            while chars[j..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                climbs += 1;
                j = skip_space(&chars, j + "super::".len());
            }
            (climbs >= depth).then_some(j)
        } else {
            None
        };
        match root_at {
            Some(at) => {
                let at = skip_space(&chars, at);
                if chars.get(at) == Some(&'{') {
                    uses.extend(group_heads(&chars, at));
                } else if let Some(ident) = ident_at(&chars, at) {
                    uses.push((at, ident));
                }
                i = at;
            }
            None => i += 1,
        }
    }
    uses.retain(|(_, m)| m != "self" && m != "super" && m != "crate");
    uses
}

/// Every use under `src` that breaks the rule, naming the file, the line and the rule.
fn violations(src: &Path) -> Vec<Violation> {
    let top_level: BTreeSet<String> = std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| {
            let path = e.unwrap().path();
            let name = path.file_stem()?.to_string_lossy().into_owned();
            (path.is_dir() || path.extension().is_some_and(|x| x == "rs")).then_some(name)
        })
        .collect();
    let mut found = Vec::new();
    for path in rust_files(src) {
        let relative = path.strip_prefix(src).unwrap();
        if relative.starts_with("bin") || relative == Path::new("lib.rs") {
            continue;
        }
        let modules = module_path(relative);
        let from = modules[0].clone();
        if rank(&from).is_none() {
            found.push(Violation {
                file: format!("src/{}", relative.display()),
                line: 1,
                from: from.clone(),
                to: from.clone(),
                rule: format!(
                    "`{from}` has no place in the layering table of tests/suite/layering.rs"
                ),
            });
        }
        let code = code_only(&std::fs::read_to_string(&path).unwrap());
        for (offset, to) in used_modules(&code, modules.len()) {
            // A `super::` chain out of an inline module may land inside the file's own
            // module: only names of top-level modules (or of ranked ones) count.
            if !top_level.contains(&to) && rank(&to).is_none() {
                continue;
            }
            if let Some(rule) = broken_rule(&from, &to) {
                let line = code[..code
                    .char_indices()
                    .nth(offset)
                    .map_or(code.len(), |(b, _)| b)]
                    .matches('\n')
                    .count()
                    + 1;
                found.push(Violation {
                    file: format!("src/{}", relative.display()),
                    line,
                    from: from.clone(),
                    to,
                    rule,
                });
            }
        }
    }
    found.sort();
    // An unranked module is reported once, at its first file.
    found.dedup_by(|later, first| {
        later.from == first.from && later.to == first.to && later.from == later.to
    });
    found
}

#[test]
fn modules_use_only_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "{} use(s) against the layering:\n{}",
        found.len(),
        found
            .iter()
            .map(|v| format!("  {v}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The check itself can fail: a scratch tree with one bad use of each kind is reported,
/// file, line and rule, and the good uses beside them are not.
#[test]
fn the_layering_check_reports_each_kind_of_bad_use() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    let write = |path: &str, text: &str| {
        let path = src.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "lib.rs",
        "mod error; mod clock; mod pb; mod store; mod service; mod metrics;\n",
    );
    write(
        "bin/larder/main.rs",
        "mod cli;\nuse crate::cli::Cli;\nuse larder::config::ServeConfig;\n",
    );
    write(
        "error.rs",
        "//! Errors.\npub enum Error {}\nuse crate::clock::Clock;\n",
    );
    write(
        "clock.rs",
        "use crate::error::Error;\n// use crate::store::Store; is only a comment\n",
    );
    write(
        "pb.rs",
        "use crate::clock::Clock;\nuse crate::store::Store;\nuse crate::limiter::Rule;\n",
    );
    write(
        "store/mod.rs",
        "use crate::error::Error;\nconst S: &str = \"crate::server::Server\";\n",
    );
    write(
        "store/cache.rs",
        "use crate::{\n    clock::Clock,\n    error::{Error, Result},\n    service::Api,\n};\n",
    );
    write(
        "service/mod.rs",
        "use crate::store::Store;\nfn f() { crate::metrics::count(); }\n",
    );
    write("service/deep.rs", "use super::super::config::Config;\n");
    write(
        "metrics/mod.rs",
        "use crate::service::Api;\nuse crate::server::Listeners;\n\
         #[cfg(test)]\nmod tests {\n    use super::super::store::Store;\n}\n",
    );
    write(
        "server/mod.rs",
        "use crate::metrics::Metrics;\nuse crate::config::Config;\n",
    );
    write("queue/mod.rs", "use crate::store::Store;\n");

    let found: Vec<(String, usize, String)> = violations(src)
        .into_iter()
        .map(|v| (v.file, v.line, v.to))
        .collect();
    let expected = [
        ("src/error.rs", 3, "clock"),
        ("src/metrics/mod.rs", 2, "server"),
        ("src/pb.rs", 2, "store"),
        ("src/pb.rs", 3, "limiter"),
        ("src/queue/mod.rs", 1, "queue"),
        ("src/queue/mod.rs", 1, "store"),
        ("src/server/mod.rs", 2, "config"),
        ("src/service/deep.rs", 1, "config"),
        ("src/service/mod.rs", 2, "metrics"),
        ("src/store/cache.rs", 4, "service"),
    ];
    let expected: Vec<(String, usize, String)> = expected
        .iter()
        .map(|(f, l, t)| (f.to_string(), *l, t.to_string()))
        .collect();
    assert_eq!(found, expected);

    let rules: Vec<String> = violations(src).iter().map(ToString::to_string).collect();
    assert!(
        rules
            .iter()
            .any(|r| r.contains("nothing below the binary may use `config`")),
        "{rules:#?}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r.contains("leaves do not use each other")),
        "{rules:#?}"
    );
    assert!(
        rules.iter().any(|r| r.contains("`queue` has no place")),
        "{rules:#?}"
    );
}
