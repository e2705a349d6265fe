//! Prometheus metrics, served as text on the admin listener.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/v1/sessions/{sid}/events`), never the raw path.
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SipMessageLabels {
    /// "in" or "out".
    pub direction: String,
    pub method: String,
    /// The response status; 0 for requests.
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabels {
    pub server: String,
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
    pub http_connections_refused: Counter,
    pub calls: Gauge,
    pub calls_started: Counter,
    pub calls_ended: Family<KindLabels, Counter>,
    /// New calls refused by admission control (`max_calls`, `cpu`,
    /// `draining`).
    pub calls_refused: Family<ReasonLabels, Counter>,
    /// The machine's CPU busy share (percent, over the last 5 s).
    pub cpu_busy_percent: Gauge,
    /// 1 while the node drains.
    pub draining: Gauge,
    /// Each SIP server's keepalive verdict, by `server` address.
    pub sip_server_up: Family<ServerLabels, Gauge>,
    /// Moves of registrations and new calls to another SIP server.
    pub sip_failovers: Counter,
    /// Incoming calls sent to the cluster node with the user's session (302).
    pub calls_redirected: Counter,
    /// Session directory (Redis) reads and writes that failed.
    pub directory_errors: Counter,
    pub sip_registrations: Gauge,
    pub sip_dialogs: Gauge,
    pub sip_registrations_failed: Counter,
    pub sip_requests_sent: Counter,
    pub sip_transaction_timeouts: Counter,
    pub sip_malformed_received: Counter,
    pub sip_retransmissions_absorbed: Counter,
    pub sip_messages: Family<SipMessageLabels, Counter>,
    pub sip_refused: Family<ReasonLabels, Counter>,
    /// Media ports free now, by leg (`web`, `sip`); set at each scrape.
    pub media_ports_free: Family<LegLabels, Gauge>,
    /// The async runtime's live tasks; set at each scrape (a leak shows here).
    pub runtime_tasks: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LegLabels {
    pub leg: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Metrics {
    /// The metrics, with the relay's totals when there is a relay.
    pub fn new(relay: Option<Arc<Relay>>) -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let sessions = Gauge::default();
        let sessions_created = Counter::default();
        let sessions_ended = Family::<KindLabels, Counter>::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let cors_rejections = Counter::default();
        let auth_failures = Family::<KindLabels, Counter>::default();
        let rate_limited = Counter::default();
        let http_connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at once because http.max-connections were open",
            http_connections_refused.clone(),
        );
        let calls = Gauge::default();
        let calls_started = Counter::default();
        let calls_ended = Family::<KindLabels, Counter>::default();
        registry.register("calls", "Calls in progress now", calls.clone());
        let sip_server_up = Family::<ServerLabels, Gauge>::default();
        let calls_redirected = Counter::default();
        registry.register(
            "calls_redirected",
            "Incoming calls redirected (302) to the cluster node holding the user's session",
            calls_redirected.clone(),
        );
        let directory_errors = Counter::default();
        registry.register(
            "directory_errors",
            "Session directory (Redis) reads and writes that failed or timed out",
            directory_errors.clone(),
        );
        let sip_failovers = Counter::default();
        registry.register(
            "sip_failovers",
            "Moves of registrations and new calls to another SIP server, the one in use having stopped answering",
            sip_failovers.clone(),
        );
        let sip_registrations = Gauge::default();
        let sip_dialogs = Gauge::default();
        registry.register(
            "sip_dialogs",
            "SIP calls (INVITE dialogs) in progress",
            sip_dialogs.clone(),
        );
        let calls_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "calls_refused",
            "New calls (API and SIP) refused by admission control, by reason: max_calls, cpu, draining",
            calls_refused.clone(),
        );
        let cpu_busy_percent = Gauge::default();
        registry.register(
            "cpu_busy_percent",
            "The machine's CPU busy share, percent of all cores over the last 5 s",
            cpu_busy_percent.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "draining",
            "1 while the gateway drains (no new sessions or calls)",
            draining.clone(),
        );
        let sip_registrations_failed = Counter::default();
        let sip_requests_sent = Counter::default();
        let sip_transaction_timeouts = Counter::default();
        let sip_malformed_received = Counter::default();
        let sip_retransmissions_absorbed = Counter::default();
        let sip_messages = Family::<SipMessageLabels, Counter>::default();
        let sip_refused = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "sip_refused",
            "SIP datagrams and connections dropped unanswered, by reason \
             (untrusted_source: not the server nor in trusted-sources; \
             too_many_transactions: max-transactions-per-source or max-transactions open; \
             too_many_connections: 32 from one address or 256 in all)",
            sip_refused.clone(),
        );
        registry.register(
            "sip_messages",
            "SIP requests (status 0, retransmissions not counted) and responses received, by direction, method and status",
            sip_messages.clone(),
        );
        registry.register(
            "sip_server_up",
            "Each SIP server by address: 1 while it answers (keepalive OPTIONS, and our requests), else 0",
            sip_server_up.clone(),
        );
        registry.register(
            "sip_registrations",
            "Browser users registered with the SIP server now",
            sip_registrations.clone(),
        );
        registry.register(
            "sip_registrations_failed",
            "Registrations the SIP server refused or never answered",
            sip_registrations_failed.clone(),
        );
        registry.register(
            "sip_requests_sent",
            "SIP requests sent (retransmissions not counted)",
            sip_requests_sent.clone(),
        );
        registry.register(
            "sip_transaction_timeouts",
            "SIP client transactions that got no final response (timer B or F)",
            sip_transaction_timeouts.clone(),
        );
        registry.register(
            "sip_malformed_received",
            "SIP datagrams that could not be parsed (answered 400 when readable enough, else dropped)",
            sip_malformed_received.clone(),
        );
        registry.register(
            "sip_retransmissions_absorbed",
            "Retransmitted requests answered from their server transaction, not handled again",
            sip_retransmissions_absorbed.clone(),
        );
        registry.register("calls_started", "Calls started", calls_started.clone());
        registry.register(
            "calls_ended",
            "Calls ended, by the reason of their call.ended event",
            calls_ended.clone(),
        );
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
        let media_ports_free = Family::<LegLabels, Gauge>::default();
        registry.register(
            "media_ports_free",
            "Media ports free now, by leg (SIP ports count in RTP/RTCP pairs)",
            media_ports_free.clone(),
        );
        let runtime_tasks = Gauge::default();
        registry.register(
            "runtime_tasks",
            "Tasks alive in the gateway's async runtime",
            runtime_tasks.clone(),
        );
        if let Some(relay) = relay {
            registry.register_collector(Box::new(RelayCollector(relay)));
        }
        Metrics {
            registry: Arc::new(registry),
            sessions,
            sessions_created,
            sessions_ended,
            http_requests,
            cors_rejections,
            auth_failures,
            rate_limited,
            http_connections_refused,
            calls,
            calls_started,
            calls_ended,
            sip_server_up,
            sip_failovers,
            calls_redirected,
            directory_errors,
            sip_registrations,
            sip_dialogs,
            sip_registrations_failed,
            sip_requests_sent,
            sip_transaction_timeouts,
            sip_malformed_received,
            sip_retransmissions_absorbed,
            sip_messages,
            sip_refused,
            calls_refused,
            cpu_busy_percent,
            draining,
            media_ports_free,
            runtime_tasks,
        }
    }

    /// Sets the gauges read from state at scrape time.
    /// `web_ports_free`: `None` on a shared web port (no per-call ports).
    pub fn set_point_in_time(
        &self,
        web_ports_free: Option<usize>,
        sip_ports_free: usize,
        tasks: usize,
    ) {
        for (leg, free) in [("web", web_ports_free), ("sip", Some(sip_ports_free))] {
            if let Some(free) = free {
                self.media_ports_free
                    .get_or_create(&LegLabels { leg })
                    .set(free as i64);
            }
        }
        self.runtime_tasks.set(tasks as i64);
    }

    /// One SIP datagram or connection dropped unanswered for `reason`.
    pub fn count_sip_refused(&self, reason: &str, n: u64) {
        self.sip_refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc_by(n);
    }

    /// A SIP server's keepalive verdict.
    pub fn sip_server_state(&self, server: &str, up: bool) {
        self.sip_server_up
            .get_or_create(&ServerLabels {
                server: server.into(),
            })
            .set(i64::from(up));
    }

    /// A new call refused by admission control.
    pub fn count_call_refused(&self, reason: &str) {
        self.calls_refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn call_started(&self) {
        self.calls_started.inc();
        self.calls.inc();
    }

    pub fn call_ended(&self, reason: &str) {
        self.calls.dec();
        self.calls_ended
            .get_or_create(&KindLabels {
                kind: reason.into(),
            })
            .inc();
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

use crate::media::relay::Relay;
use crate::media::stats::LegSnapshot;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LegOnly {
    leg: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LegDirection {
    leg: &'static str,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LegCause {
    leg: &'static str,
    cause: &'static str,
}

/// The relay's counters summed over calls, read at each scrape.
struct RelayCollector(Arc<Relay>);

impl std::fmt::Debug for RelayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayCollector")
    }
}

fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (mut web, sip) = self.0.totals();
        // The shared web port's own drops (no call known yet, or its
        // socket's buffer full) are the web leg's too.
        let port = self.0.web_port_counters();
        web.dropped_overload += port.overload;
        let legs: [(&'static str, &LegSnapshot); 2] = [("web", &web), ("sip", &sip)];
        let mut packets = Vec::new();
        let mut bytes = Vec::new();
        let mut drops = Vec::new();
        let mut made_up = Vec::new();
        for (leg, s) in legs {
            made_up.push((LegOnly { leg }, s.made_up));
            packets.push((
                LegDirection {
                    leg,
                    direction: "in",
                },
                s.packets_in,
            ));
            packets.push((
                LegDirection {
                    leg,
                    direction: "out",
                },
                s.packets_out,
            ));
            bytes.push((
                LegDirection {
                    leg,
                    direction: "in",
                },
                s.bytes_in,
            ));
            bytes.push((
                LegDirection {
                    leg,
                    direction: "out",
                },
                s.bytes_out,
            ));
            for (cause, value) in [
                ("foreign_source", s.dropped_foreign_source),
                ("auth_failed", s.dropped_auth_failed),
                ("replay", s.dropped_replay),
                ("malformed", s.dropped_malformed),
                ("payload_type", s.dropped_payload_type),
                ("not_ready", s.dropped_not_ready),
                ("overload", s.dropped_overload),
            ] {
                drops.push((LegCause { leg, cause }, value));
            }
        }
        drops.push((
            LegCause {
                leg: "web",
                cause: "unknown_source",
            },
            port.unknown_source,
        ));
        counter_family(
            &mut encoder,
            // The registry adds the "gateway_" prefix.
            "media_packets",
            "Media packets by leg and direction",
            &packets,
        )?;
        counter_family(
            &mut encoder,
            "media_bytes",
            "Media bytes by leg and direction",
            &bytes,
        )?;
        counter_family(
            &mut encoder,
            "media_dropped",
            "Media packets dropped, by leg and cause",
            &drops,
        )?;
        counter_family(
            &mut encoder,
            "media_made_up_packets",
            "Packets of transcoded calls made up (in-band FEC or concealment) for ones lost on the way in, by the leg they were lost on",
            &made_up,
        )?;
        if self.0.web_port().is_some() {
            let steered = encoder.encode_descriptor(
                "media_steered_packets",
                "Datagrams on the shared web port received by one relay worker and handed to the worker of their call",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(port.steered).encode(steered)?;
        }
        let tcp = self.0.ice_tcp_counters();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        counter_family(
            &mut encoder,
            "media_ice_tcp_connections",
            "ICE-TCP connections from browsers, by outcome: accepted, connected (an ICE check answered with success), refused (closed before that)",
            &[
                (Outcome { outcome: "accepted" }, load(&tcp.accepted)),
                (Outcome { outcome: "connected" }, load(&tcp.connected)),
                (Outcome { outcome: "refused" }, load(&tcp.refused)),
            ],
        )?;
        let dropped = encoder.encode_descriptor(
            "media_ice_tcp_dropped",
            "Datagrams an ICE-TCP bridge dropped: a browser connection too slow to take them, or a call that refused them",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(load(&tcp.dropped)).encode(dropped)?;
        let calls = encoder.encode_descriptor(
            "media_calls",
            "Calls the relay carries now",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.call_count() as i64).encode(calls)?;
        let mut workers = encoder.encode_descriptor(
            "media_relay_workers",
            "Relay worker threads, by how they move datagrams (io_uring or epoll)",
            None,
            MetricType::Gauge,
        )?;
        let on_ring = self.0.io_uring_workers();
        let by_io = [
            ("io-uring", on_ring),
            ("epoll", self.0.worker_count() - on_ring),
        ];
        for (io, count) in by_io {
            ConstGauge::new(count as i64).encode(workers.encode_family(&[("io", io)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_in_time_gauges_are_exported() {
        let metrics = Metrics::default();
        metrics.set_point_in_time(Some(7), 3, 12);
        let text = metrics.render();
        assert!(
            text.contains("gateway_media_ports_free{leg=\"web\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("gateway_media_ports_free{leg=\"sip\"} 3"),
            "{text}"
        );
        assert!(text.contains("gateway_runtime_tasks 12"), "{text}");
    }

    #[test]
    fn relay_totals_are_exported() {
        let relay = Relay::start(1).unwrap();
        let metrics = Metrics::new(Some(relay));
        let text = metrics.render();
        assert!(
            text.lines()
                .any(|l| l == "gateway_media_packets_total{leg=\"web\",direction=\"in\"} 0"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "gateway_media_dropped_total{leg=\"sip\",cause=\"overload\"} 0"),
            "{text}"
        );
        // Whole lines: the names carry the registry's prefix once.
        assert!(text.lines().any(|l| l == "gateway_media_calls 0"), "{text}");
        assert!(text.contains("gateway_sessions 0"));
        // Relay::start takes io_uring, which these machines allow; the worker
        // reports it once running.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut text = metrics.render();
        while !text.contains("gateway_media_relay_workers{io=\"io-uring\"} 1")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
            text = metrics.render();
        }
        assert!(
            text.contains("gateway_media_relay_workers{io=\"io-uring\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("gateway_media_relay_workers{io=\"epoll\"} 0"),
            "{text}"
        );
    }
}
