//! CORS by the `domain-whitelist` option (see `shared/API.md`).
//!
//! Entries are origins `scheme://host[:port]`; the host may start with `*.`
//! (any subdomain at any depth, never the bare domain) and an entry without a
//! scheme matches both `http` and `https`. Comparison is case-insensitive with
//! the default port implied. An empty list allows every origin.

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

/// The whole whitelist.
#[derive(Debug, Clone, Default)]
pub struct CorsPolicy {
    patterns: Vec<OriginPattern>,
}

/// What the policy says about one request's `Origin`.
#[derive(Debug, PartialEq, Eq)]
pub enum OriginVerdict {
    /// No `Origin` header: a server-side client, served normally.
    NoOrigin,
    /// Allowed: echo this value in `Access-Control-Allow-Origin`.
    Allowed(String),
    /// Refused: 403 `origin_not_allowed`, nothing else happens.
    Denied,
}

impl CorsPolicy {
    /// Builds the policy; entries were validated with the config.
    pub fn new(entries: &[String]) -> Result<CorsPolicy, String> {
        let patterns = entries
            .iter()
            .map(|e| OriginPattern::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CorsPolicy { patterns })
    }

    pub fn judge(&self, origin_header: Option<&str>) -> OriginVerdict {
        let Some(raw) = origin_header else {
            return OriginVerdict::NoOrigin;
        };
        if self.patterns.is_empty() {
            return OriginVerdict::Allowed(raw.to_string());
        }
        match Origin::parse(raw) {
            Ok(origin) if self.patterns.iter().any(|p| p.matches(&origin)) => {
                OriginVerdict::Allowed(raw.to_string())
            }
            _ => OriginVerdict::Denied,
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

    fn allowed(list: &[&str], origin: &str) -> bool {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        matches!(
            CorsPolicy::new(&list).unwrap().judge(Some(origin)),
            OriginVerdict::Allowed(_)
        )
    }

    #[test]
    fn exact_and_default_port() {
        assert!(allowed(&["https://a.example"], "https://a.example"));
        assert!(allowed(&["https://a.example"], "https://A.Example:443"));
        assert!(allowed(&["https://a.example:443"], "https://a.example"));
        assert!(!allowed(&["https://a.example"], "https://a.example:8443"));
        assert!(!allowed(&["https://a.example"], "http://a.example"));
        assert!(allowed(&["http://localhost:3000"], "http://localhost:3000"));
        assert!(!allowed(
            &["http://localhost:3000"],
            "http://localhost:3001"
        ));
    }

    #[test]
    fn wildcards() {
        let list = ["https://*.example.com"];
        assert!(allowed(&list, "https://a.example.com"));
        assert!(allowed(&list, "https://a.b.example.com"));
        assert!(!allowed(&list, "https://example.com"));
        assert!(!allowed(&list, "https://badexample.com"));
        assert!(!allowed(&list, "http://a.example.com"));
        assert!(!allowed(&list, "https://a.example.com.evil.org"));
    }

    #[test]
    fn entry_without_scheme_matches_both_on_default_ports() {
        let list = ["*.example.com", "www.example.org"];
        assert!(allowed(&list, "http://a.example.com"));
        assert!(allowed(&list, "https://a.example.com"));
        assert!(!allowed(&list, "https://a.example.com:8443"));
        assert!(allowed(&list, "http://www.example.org"));
        assert!(allowed(&list, "https://www.example.org:443"));
        assert!(!allowed(&list, "http://www.example.org:443"));
    }

    #[test]
    fn empty_list_echoes_and_no_origin_is_served() {
        let p = CorsPolicy::new(&[]).unwrap();
        assert_eq!(
            p.judge(Some("https://x.test")),
            OriginVerdict::Allowed("https://x.test".into())
        );
        assert_eq!(p.judge(None), OriginVerdict::NoOrigin);
        let p = CorsPolicy::new(&["https://a.example".into()]).unwrap();
        assert_eq!(p.judge(None), OriginVerdict::NoOrigin);
        assert_eq!(p.judge(Some("null")), OriginVerdict::Denied);
        assert_eq!(p.judge(Some("garbage")), OriginVerdict::Denied);
    }

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
}
