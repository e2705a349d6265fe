//! CORS by the `domain-whitelist` option (see `docs/api.md`): the whole
//! list judged against a request's `Origin` header. The entries themselves
//! are `crate::origin` patterns, which the config reads and checks too.

use crate::origin::{Origin, OriginPattern};

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
}
