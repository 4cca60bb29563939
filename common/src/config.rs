//! Loading a binary's TOML config with errors a person can act on: every error names the file,
//! the key path and what is wrong (DESIGN.md §2). Validation of cross-field rules stays with each
//! binary's config type; it reports through [`ConfigError::invalid`].

use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// A config that could not be used. `Display` is the one line a binary prints before exiting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {reason}")]
    Read { file: PathBuf, reason: String },
    #[error("{file}: {key}: {reason}")]
    Invalid {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

impl ConfigError {
    pub fn invalid(file: &Path, key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// Reads and parses `path` into `T` (which should use `deny_unknown_fields`).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse(path, &text)
}

/// Parses `text` as if read from `path`.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::parse(text)
        .map_err(|e| ConfigError::invalid(path, "(syntax)", one_line(&e.to_string())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." || key.is_empty() {
            "(top level)".to_string()
        } else {
            key
        };
        ConfigError::invalid(path, &key, one_line(&e.inner().to_string()))
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        port: u16,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Inner,
    }

    fn err(text: &str) -> String {
        parse::<Outer>(Path::new("x.toml"), text)
            .expect_err("must fail")
            .to_string()
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let e = err("name = \"a\"\n[inner]\nport = 70000\n");
        assert!(e.starts_with("x.toml: inner.port: "), "{e}");
        let e = err("name = \"a\"\n[inner]\nport = 1\nbogus = 2\n");
        assert!(e.contains("x.toml: inner") && e.contains("bogus"), "{e}");
        let e = err("name = \n");
        assert!(e.starts_with("x.toml: (syntax): "), "{e}");
        let e = err("[inner]\nport = 1\n");
        assert!(e.contains("name"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = load::<Outer>(Path::new("/nonexistent/x.toml")).expect_err("must fail");
        assert!(e
            .to_string()
            .starts_with("/nonexistent/x.toml: cannot read"));
    }
}
