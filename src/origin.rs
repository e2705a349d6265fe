//! Web origins and `domain-whitelist` entries.
//!
//! Entries are origins `scheme://host[:port]`; the host may start with `*.`
//! (any subdomain at any depth, never the bare domain) and an entry without a
//! scheme matches both `http` and `https`. Comparison is case-insensitive with
//! the default port implied. The config checks entries with
//! [`OriginPattern::parse`]; the API's CORS policy matches them.

use std::fmt;

/// A parsed `Origin` header value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Parses `scheme://host[:port]` as browsers send it.
    pub fn parse(text: &str) -> Result<Origin, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("origin {text:?} has no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = default_port(&scheme)
            .ok_or_else(|| format!("origin {text:?} must use http or https"))?;
        let (host, port) = split_host_port(rest, default_port)
            .ok_or_else(|| format!("origin {text:?} is not scheme://host[:port]"))?;
        if host.starts_with("*.") || host.contains('*') {
            return Err(format!("origin {text:?} may not contain a wildcard"));
        }
        Ok(Origin { scheme, host, port })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// One `domain-whitelist` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    /// `None`: http or https, each on its own default port unless a port is given.
    scheme: Option<String>,
    /// Lower-case host; for a wildcard, the suffix after `*.` (e.g. `example.com`).
    host: String,
    wildcard: bool,
    /// `None`: the scheme's default port.
    port: Option<u16>,
}

impl OriginPattern {
    pub fn parse(text: &str) -> Result<OriginPattern, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("an empty entry is not an origin".into());
        }
        let (scheme, rest) = match trimmed.split_once("://") {
            Some((s, rest)) => {
                let s = s.to_ascii_lowercase();
                if default_port(&s).is_none() {
                    return Err(format!("{text:?}: the scheme must be http or https"));
                }
                (Some(s), rest)
            }
            None => (None, trimmed),
        };
        let (host, port) = split_host_port(rest, 0)
            .ok_or_else(|| format!("{text:?} is not [scheme://]host[:port] (no path, no user)"))?;
        let port = (port != 0).then_some(port);
        let (wildcard, host) = match host.strip_prefix("*.") {
            Some(suffix) => (true, suffix.to_string()),
            None => (false, host),
        };
        if host.contains('*') {
            return Err(format!(
                "{text:?}: a wildcard may only be the first label, as in *.example.com"
            ));
        }
        if wildcard && host.is_empty() {
            return Err(format!("{text:?}: a wildcard needs a domain after *."));
        }
        Ok(OriginPattern {
            scheme,
            host,
            wildcard,
            port,
        })
    }

    pub fn matches(&self, origin: &Origin) -> bool {
        if let Some(scheme) = &self.scheme {
            if *scheme != origin.scheme {
                return false;
            }
        }
        let wanted_port = match self.port {
            Some(p) => p,
            None => match default_port(&origin.scheme) {
                Some(p) => p,
                None => return false,
            },
        };
        if wanted_port != origin.port {
            return false;
        }
        if self.wildcard {
            origin.host.len() > self.host.len() + 1
                && origin.host.ends_with(&self.host)
                && origin.host.as_bytes()[origin.host.len() - self.host.len() - 1] == b'.'
        } else {
            origin.host == self.host
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (IPv6 in brackets); no path, query, user info or
/// trailing slash allowed. Returns a lower-case host.
fn split_host_port(text: &str, default_port: u16) -> Option<(String, u16)> {
    if text.is_empty() || text.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (format!("[{}]", inside.to_ascii_lowercase()), port)
    } else {
        match text.split_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), p.parse().ok()?),
            None => (text.to_ascii_lowercase(), default_port),
        }
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_entries_refused() {
        for bad in [
            "",
            "ftp://a.example",
            "https://a.example/path",
            "https://a.*.example",
            "*.",
            "https://u@a.example",
            "https://a.example:99999",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(OriginPattern::parse("https://[::1]:8443").is_ok());
    }

    #[test]
    fn origins_carry_their_default_port() {
        let o = Origin::parse("HTTPS://A.Example").unwrap();
        assert_eq!(o.to_string(), "https://a.example:443");
        assert!(Origin::parse("https://*.example").is_err());
        assert!(Origin::parse("ftp://a.example").is_err());
    }
}
