//! The settings' declaration as the binary shows it: `larder check-config --settings-table`
//! prints the table `docs/configuration.md` holds, and a value given as a variable is checked
//! and named like a flag.

use std::process::Command;

use larder::config::{TABLE_BEGIN, TABLE_END, settings_table};

/// `larder` with `args` and the variables `env`, none of the caller's `LARDER_*` ones.
fn larder(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_larder"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("LARDER_") {
            cmd.env_remove(key);
        }
    }
    cmd.args(args).envs(env.iter().copied());
    cmd.output().expect("running larder")
}

#[test]
fn check_config_prints_the_docs_settings_table() {
    let out = larder(&["check-config", "--settings-table"], &[]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, settings_table());
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    let region = docs
        .split_once(TABLE_BEGIN)
        .and_then(|(_, rest)| rest.split_once(TABLE_END))
        .map(|(table, _)| table.trim_start_matches('\n'))
        .expect("docs/configuration.md holds the marked table");
    assert_eq!(region, printed);
}

#[test]
fn a_variable_is_checked_and_named_like_a_flag() {
    for (var, value, says) in [
        (
            "LARDER_LOG_LEVEL",
            "verbose",
            "\"verbose\" is not a log level",
        ),
        (
            "LARDER_LISTEN",
            "0.0.0.0:99999",
            "port 99999 is out of range",
        ),
        (
            "LARDER_MAX_MEMORY",
            "lots",
            "expected a size such as 256MiB",
        ),
    ] {
        let out = larder(&["check-config"], &[(var, value)]);
        assert!(!out.status.success(), "{var}={value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(var) && err.contains(says),
            "{var}={value}: {err}"
        );
    }
}
