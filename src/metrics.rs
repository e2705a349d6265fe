//! Prometheus metrics, served as text on the admin listener.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/v1/sessions/{sid}/events`), never the raw path.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Every metric the gateway exports. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub sessions: Gauge,
    pub sessions_created: Counter,
    pub sessions_ended: Family<KindLabels, Counter>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub cors_rejections: Counter,
    pub auth_failures: Family<KindLabels, Counter>,
    pub rate_limited: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let sessions = Gauge::default();
        let sessions_created = Counter::default();
        let sessions_ended = Family::<KindLabels, Counter>::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let cors_rejections = Counter::default();
        let auth_failures = Family::<KindLabels, Counter>::default();
        let rate_limited = Counter::default();
        registry.register("sessions", "Browser sessions open now", sessions.clone());
        registry.register(
            "sessions_created",
            "Browser sessions created",
            sessions_created.clone(),
        );
        registry.register(
            "sessions_ended",
            "Browser sessions ended, by reason (deleted, expired)",
            sessions_ended.clone(),
        );
        registry.register(
            "http_requests",
            "Signaling API requests by route template, method and status",
            http_requests.clone(),
        );
        registry.register(
            "cors_rejections",
            "Requests refused because their Origin is not in domain-whitelist",
            cors_rejections.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused for a bad bearer token or session secret, by kind",
            auth_failures.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by the per-client-IP rate limit",
            rate_limited.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            sessions,
            sessions_created,
            sessions_ended,
            http_requests,
            cors_rejections,
            auth_failures,
            rate_limited,
        }
    }

    pub fn auth_failure(&self, kind: &str) {
        self.auth_failures
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
