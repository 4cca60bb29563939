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

/// Checks an address other nodes dial: `host:port` with a DNS name (`r1`,
/// `r1.baton.svc.cluster.local`), an IPv4 address or a bracketed IPv6 address, and a port in
/// 1..=65535. Names are resolved each time a connection is made, not here (DESIGN.md §8), so a
/// node whose name moves to a new IP is still found.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} is not host:port"));
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(format!("{addr:?}: the port must be a number in 1..=65535")),
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{addr:?}: {v6:?} is not an IPv6 address"));
    }
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if host.contains("://") {
        return Err(format!("{addr:?} is a URL: give host:port"));
    }
    if host.contains(':') {
        return Err(format!(
            "{addr:?}: an IPv6 address goes in brackets, [::1]:7101"
        ));
    }
    check_dns_name(host).map_err(|r| format!("{addr:?}: {r}"))
}

/// A host name as DNS and TLS certificates allow it: dot-separated labels of letters, digits
/// and `-` (not first or last), each 1..=63 bytes, 253 in all.
pub fn check_dns_name(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.len() > 253 {
        return Err(format!(
            "the host name is {} bytes (at most 253)",
            host.len()
        ));
    }
    for label in host.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "{host:?} is not a host name (labels of letters, digits and '-', 1 to 63 bytes)"
            ));
        }
    }
    if host
        .rsplit('.')
        .next()
        .is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{host:?} is neither an IPv4 address nor a host name"
        ));
    }
    Ok(())
}

/// Checks the address a node advertises (its `advertise`, else its `listen`): others dial it,
/// so it must be `host:port` and not a wildcard. `example` is a good value for the message.
pub fn check_advertise(advertised: &str, listen: &str, example: &str) -> Result<(), String> {
    check_host_port(advertised)?;
    if is_wildcard(advertised) {
        return Err(format!(
            "listen is {listen} (every interface): say which address the other nodes reach this \
             one at, e.g. advertise = {example:?}"
        ));
    }
    Ok(())
}

/// Whether `addr`'s host is a wildcard (`0.0.0.0`, `[::]`): fine to listen on, useless to dial.
pub fn is_wildcard(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    matches!(host, "0.0.0.0" | "[::]" | "::")
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::{check_host_port, is_wildcard};

    #[test]
    fn addresses_may_be_host_names_ips_or_bracketed_ipv6() {
        for ok in [
            "r1:7101",
            "r1.baton.svc.cluster.local:7101",
            "10.0.0.5:1",
            "[::1]:7101",
            "a-b:65535",
        ] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("r1", "not host:port"),
            ("r1:0", "1..=65535"),
            ("r1:70000", "1..=65535"),
            (":7101", "empty"),
            ("-r1:7101", "not a host name"),
            ("r_1:7101", "not a host name"),
            ("::1:7101", "brackets"),
            ("[zz]:7101", "not an IPv6"),
            ("10.0.0.256:7101", "neither an IPv4"),
            ("http://r1:7101", "is a URL"),
        ] {
            let e = check_host_port(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(is_wildcard("0.0.0.0:7101") && is_wildcard("[::]:7101"));
        assert!(!is_wildcard("r1:7101"));
    }

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
