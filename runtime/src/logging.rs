//! Log set-up shared by every binary: `tracing` to stderr as text (colours only on a terminal,
//! so log files stay plain) or as one JSON object per line for log shippers, at the level the
//! config's `[log]` table gives (`RUST_LOG`, when set, overrides it).

use serde::Deserialize;

/// `[log]` in every server's config.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json` (one object per line: timestamp, level, target, fields, and
    /// the process span with its id).
    #[serde(default)]
    pub format: LogFormat,
    /// `error`, `warn`, `info` (default), `debug`, `trace`, or a filter such as
    /// `info,baton_replica::repl=debug`.
    #[serde(default = "info")]
    pub level: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn info() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: info(),
        }
    }
}

impl LogConfig {
    /// Why `level` is not a filter, if it is not (reported as `log.level`).
    pub fn check(&self) -> Result<(), (String, String)> {
        // A bare word would parse as a target name ("inof" logs nothing): it must be a level.
        let plain = !self.level.contains(['=', ',', ':', '[']);
        let levels = ["off", "error", "warn", "info", "debug", "trace"];
        if plain && !levels.contains(&self.level.to_ascii_lowercase().as_str()) {
            return Err((
                "log.level".to_string(),
                format!(
                    "{:?} is not a level: use error, warn, info, debug or trace (or a filter \
                     such as \"info,baton_replica=debug\")",
                    self.level
                ),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map(|_| ())
            .map_err(|e| {
                (
                    "log.level".to_string(),
                    format!(
                        "{:?} is not a level or filter ({e}); use error, warn, info, debug, \
                         trace, or e.g. \"info,baton_replica=debug\"",
                        self.level
                    ),
                )
            })
    }
}

/// A config that says how its process logs.
pub trait Logged {
    fn log(&self) -> &LogConfig;
}

/// Installs the global subscriber with the defaults (text, `info`, or `RUST_LOG`).
pub fn init() {
    init_with(&LogConfig::default());
}

/// Installs the global subscriber; call once, first thing in `main` after the config loaded
/// (`process::main` does). A second call (tests starting several servers) changes nothing.
pub fn init_with(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match cfg.format {
        LogFormat::Text => b
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => b
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_filters_are_checked() {
        let ok = |l: &str| {
            LogConfig {
                level: l.into(),
                ..LogConfig::default()
            }
            .check()
        };
        assert!(ok("info").is_ok() && ok("info,baton_replica::repl=debug").is_ok());
        let (key, why) = ok("inof").expect_err("a typo is not a target");
        assert_eq!(key, "log.level");
        assert!(why.contains("\"inof\" is not a level"), "{why}");
        let (key, _) = ok("info,baton=loud").expect_err("not a filter");
        assert_eq!(key, "log.level");
    }
}
