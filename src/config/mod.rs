//! The gateway's configuration: typed TOML (`config/gateway.toml`), environment
//! overrides (`GATEWAY__SECTION__KEY`), validation that names the key at fault,
//! and `CRYPT:` secrets opened at load time.
//!
//! Loading never half-succeeds: either every key is valid and every secret
//! opens, or the caller gets the full list of problems and the gateway refuses
//! to start.

pub mod secret;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::origin::OriginPattern;
pub use secret::{CryptError, CryptKey, Secret};

/// Default location of the config file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/gateway.toml";
/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "GATEWAY__";

/// Longest `[media] relay-busy-poll-us`: spinning longer than a
/// millisecond between packets only burns the core.
pub const MAX_BUSY_POLL_US: u32 = 1000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    pub http: HttpConfig,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
    pub sip: SipConfig,
    pub media: MediaConfig,
    pub echo: EchoConfig,
    pub cluster: ClusterConfig,
    pub log: LogConfig,
    pub secrets: SecretsConfig,
}

/// `[cluster]`: this node among several behind one load balancer. Off
/// (one node) while `node-id` is empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ClusterConfig {
    /// Starts every session id this node makes (`<node-id>.<random>`), so
    /// any node can tell whose a session is.
    pub node_id: String,
    /// The API's URL on this node itself (not the load balancer's), as
    /// browsers reach it: the create response gives it and js-api uses it
    /// for the session from then on.
    pub node_url: String,
    /// The other nodes' URLs by node id: a request for one of their
    /// sessions is redirected there (307).
    pub nodes: std::collections::BTreeMap<String, String>,
    /// The session directory shared by the nodes (`redis://…`, a secret:
    /// it may carry a password; `CRYPT:` allowed). "": none, a node knows
    /// its own sessions only.
    pub redis_url: Secret,
}

impl ClusterConfig {
    /// A node id may stand before the "." of a session id in a URL path.
    pub fn valid_node_id(id: &str) -> bool {
        (1..=32).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct HttpConfig {
    pub listen: String,
    pub tls_listen: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub domain_whitelist: Vec<String>,
    pub session_timeout_s: u64,
    pub max_sessions: usize,
    pub max_body_bytes: usize,
    pub rate_limit_per_s: u32,
    pub rate_limit_burst: u32,
    pub max_connections: usize,
    pub idle_timeout_s: u64,
    pub body_read_timeout_s: u64,
    pub hsts_max_age_s: u64,
    pub max_sessions_per_user: usize,
    pub max_sessions_per_address: usize,
    pub max_calls_per_session: usize,
    pub max_ringing_calls_per_session: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            tls_listen: "0.0.0.0:8443".into(),
            tls_cert: String::new(),
            tls_key: String::new(),
            domain_whitelist: Vec::new(),
            session_timeout_s: 300,
            max_sessions: 10_000,
            max_body_bytes: 65_536,
            rate_limit_per_s: 20,
            rate_limit_burst: 100,
            max_connections: 4096,
            idle_timeout_s: 60,
            body_read_timeout_s: 10,
            hsts_max_age_s: 31_536_000,
            max_sessions_per_user: 10,
            max_sessions_per_address: 1000,
            max_calls_per_session: 16,
            max_ringing_calls_per_session: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    #[default]
    None,
    Token,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AuthConfig {
    pub mode: AuthMode,
    pub token_secret: Secret,
    /// A token expiring further ahead than this is refused.
    pub token_max_ttl_s: u64,
    /// With `mode = "none"`, listen where configured rather than on
    /// loopback only.
    pub allow_anonymous: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::default(),
            token_secret: Secret::default(),
            token_max_ttl_s: 3600,
            allow_anonymous: false,
        }
    }
}

/// Where an API listener configured at `configured` really binds: there,
/// unless anyone may open sessions (`auth.mode = "none"`) and
/// `allow-anonymous` is off, in which case the same port on loopback
/// (127.0.0.1, or ::1 for an IPv6 address): an open gateway is not put on
/// a network by accident.
pub fn api_bind_address(auth: &AuthConfig, configured: &str) -> String {
    if auth.mode != AuthMode::None || auth.allow_anonymous {
        return configured.to_string();
    }
    match configured.parse::<std::net::SocketAddr>() {
        Ok(addr) if !addr.ip().is_loopback() => {
            let loopback = if addr.is_ipv4() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            };
            std::net::SocketAddr::new(loopback, addr.port()).to_string()
        }
        _ => configured.to_string(),
    }
}

/// The shortest token secret taken: RFC 2104 asks for an HMAC key at
/// least as long as the hash's output (32 bytes for SHA-256).
pub const MIN_TOKEN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AdminConfig {
    pub listen: String,
    /// How long a drain (SIGTERM, `POST /admin/drain`) waits for the calls
    /// in progress before it ends them and the process exits.
    pub drain_timeout_s: u64,
}

/// The longest `[admin] drain-timeout-s` taken (a day).
pub const MAX_DRAIN_TIMEOUT_S: u64 = 86_400;

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9090".into(),
            drain_timeout_s: 600,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SipTransport {
    #[default]
    Udp,
    Tcp,
    Tls,
}

impl SipTransport {
    pub fn default_port(self) -> u16 {
        match self {
            SipTransport::Tls => 5061,
            _ => 5060,
        }
    }

    /// The name `transport=` and the config use.
    pub fn as_str(self) -> &'static str {
        match self {
            SipTransport::Udp => "udp",
            SipTransport::Tcp => "tcp",
            SipTransport::Tls => "tls",
        }
    }
}

/// `[sip] server`: the SIP servers in the order they are tried (the first
/// live one takes registrations and new calls). In TOML a string — one
/// server, or several separated by commas — or an array of strings; each
/// is `host[:port]` or `sip:host[:port][;transport=…]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerList(Vec<String>);

impl ServerList {
    pub fn new(entries: Vec<String>) -> Self {
        ServerList(entries)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn entries(&self) -> &[String] {
        &self.0
    }

    /// The first server, or "" without one.
    pub fn primary(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    /// Each server as (host, port), checked against `transport`.
    pub fn parse(&self, transport: SipTransport) -> Result<Vec<(String, u16)>, String> {
        self.0
            .iter()
            .map(|entry| parse_server(entry, transport))
            .collect()
    }
}

impl From<&str> for ServerList {
    fn from(text: &str) -> Self {
        ServerList(
            text.split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(String::from)
                .collect(),
        )
    }
}

impl Serialize for ServerList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [] => s.serialize_str(""),
            [one] => s.serialize_str(one),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ServerList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(text) => ServerList::from(text.as_str()),
            OneOrMany::Many(list) => ServerList(
                list.iter()
                    .map(|e| e.trim().to_string())
                    .filter(|e| !e.is_empty())
                    .collect(),
            ),
        })
    }
}

/// One `[sip] server` entry: `host[:port]`, or a SIP URI
/// `sip:host[:port][;transport=udp|tcp|tls]` (`sips:` means TLS) whose
/// transport, when it names one, must be `[sip] transport`'s (one link
/// kind for every server).
pub fn parse_server(entry: &str, transport: SipTransport) -> Result<(String, u16), String> {
    server_parts(entry, transport)
        .map(|(host, port)| (host, port.unwrap_or_else(|| transport.default_port())))
}

/// [`parse_server`]'s host and the port the entry names (None: it names
/// none, so DNS SRV may say, RFC 3263 §4.2).
pub fn server_parts(entry: &str, transport: SipTransport) -> Result<(String, Option<u16>), String> {
    let explicit = |(host, port): (String, u16)| (host, (port != 0).then_some(port));
    let lower = entry.to_ascii_lowercase();
    let (address, uri_transport) = if let Some(rest) = lower.strip_prefix("sips:") {
        (&entry[entry.len() - rest.len()..], Some("tls".to_string()))
    } else if let Some(rest) = lower.strip_prefix("sip:") {
        (&entry[entry.len() - rest.len()..], None)
    } else {
        return parse_host_port(entry, 0).map(explicit);
    };
    let mut parts = address.split(';');
    let host_port = parts.next().unwrap_or("");
    let mut named = uri_transport;
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "transport" => named = Some(value.trim().to_ascii_lowercase()),
            "lr" => {}
            other => return Err(format!("{entry:?}: unknown URI parameter {other:?}")),
        }
    }
    if let Some(named) = named {
        if named != transport.as_str() {
            return Err(format!(
                "{entry:?} names transport {named:?}, but [sip] transport is {:?}: every server is reached one way",
                transport.as_str()
            ));
        }
    }
    if host_port.contains('@') {
        return Err(format!("{entry:?}: a server URI has no user part"));
    }
    parse_host_port(host_port, 0).map(explicit)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SrtpPolicy {
    #[default]
    Off,
    Optional,
    Required,
}

/// The shortest session interval RFC 4028 §4 allows, and the Min-SE the
/// gateway demands (`[sip] session-expires-s` below it is refused).
pub const MIN_SESSION_EXPIRES_S: u32 = 90;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SipConfig {
    pub server: ServerList,
    pub domain: String,
    pub listen: String,
    pub transport: SipTransport,
    pub tls_ca_file: String,
    pub tls_server_name: String,
    pub register: bool,
    pub srtp: SrtpPolicy,
    pub password: Secret,
    pub register_expires_s: u32,
    pub keepalive_interval_s: u64,
    pub timer_t1_ms: u64,
    pub timer_t2_ms: u64,
    pub timer_t4_ms: u64,
    pub ring_timeout_s: u64,
    /// Session timer interval (RFC 4028) we ask for; 0: none of ours.
    pub session_expires_s: u32,
    /// The browser may answer an incoming call with early media first
    /// (183 with our SDP before the 200).
    pub early_media: bool,
    /// A REFER from the switch (asking us to call someone else in the
    /// far end's place) is followed; off: it gets 603.
    pub accept_refer: bool,
    /// Our caller identity header on outgoing INVITEs (RFC 3325).
    pub asserted_identity: AssertedIdentity,
    pub dtmf: DtmfMode,
    pub media_address: String,
    pub trusted_sources: Vec<String>,
    pub allowed_destination_domains: Vec<String>,
    /// Headers of an incoming INVITE passed to the browser: these name
    /// prefixes, and these whole names (the switch's call data).
    pub incoming_header_prefixes: Vec<String>,
    pub incoming_headers: Vec<String>,
    /// Headers a page may add to our INVITE or 200 besides those with an
    /// incoming prefix.
    pub allowed_outgoing_headers: Vec<String>,
    pub max_ringing_calls_per_user: usize,
    pub max_ringing_calls: usize,
    pub max_transactions_per_source: usize,
    pub max_transactions: usize,
}

/// Which identity header (RFC 3325) our outgoing INVITEs carry, naming
/// the session's user and display name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AssertedIdentity {
    /// None: the From says who calls.
    #[default]
    None,
    /// P-Asserted-Identity: the switch trusts the gateway to assert it.
    Pai,
    /// P-Preferred-Identity: the switch decides what to assert.
    Ppi,
}

impl AssertedIdentity {
    pub fn header_name(self) -> Option<&'static str> {
        match self {
            AssertedIdentity::None => None,
            AssertedIdentity::Pai => Some("P-Asserted-Identity"),
            AssertedIdentity::Ppi => Some("P-Preferred-Identity"),
        }
    }
}

/// Whether `name` can be a SIP header's name (an RFC 3261 token).
pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// How DTMF from the browser goes to the SIP side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DtmfMode {
    /// RFC 4733 events in the media stream (SIP INFO when the far end
    /// negotiated no telephone-event).
    #[default]
    Rfc4733,
    /// SIP INFO with `application/dtmf-relay`.
    Info,
}

impl SipConfig {
    /// The SIP domain user URIs carry: `domain`, else the host of
    /// `server`, else "invalid" (no SIP side to call).
    pub fn effective_domain(&self) -> String {
        if !self.domain.is_empty() {
            return self.domain.clone();
        }
        parse_server(self.server.primary(), self.transport)
            .map(|(host, _)| host)
            .ok()
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| "invalid".into())
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            server: ServerList::default(),
            domain: String::new(),
            listen: "0.0.0.0:5070".into(),
            transport: SipTransport::Udp,
            tls_ca_file: String::new(),
            tls_server_name: String::new(),
            register: true,
            srtp: SrtpPolicy::Off,
            password: Secret::default(),
            register_expires_s: 600,
            keepalive_interval_s: 30,
            timer_t1_ms: 500,
            timer_t2_ms: 4000,
            timer_t4_ms: 5000,
            ring_timeout_s: 45,
            session_expires_s: 1800,
            early_media: false,
            accept_refer: false,
            asserted_identity: AssertedIdentity::None,
            dtmf: DtmfMode::Rfc4733,
            media_address: String::new(),
            trusted_sources: Vec::new(),
            allowed_destination_domains: Vec::new(),
            incoming_header_prefixes: vec!["X-".into()],
            incoming_headers: vec![
                "User-to-User".into(),
                "Diversion".into(),
                "History-Info".into(),
            ],
            allowed_outgoing_headers: vec!["User-to-User".into()],
            max_ringing_calls_per_user: 4,
            max_ringing_calls: 500,
            max_transactions_per_source: 5_000,
            max_transactions: 20_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MediaConfig {
    pub public_address: AddressList,
    /// One UDP port for every call's web leg (0: a port per call from
    /// `web-port-min`..`web-port-max`).
    pub web_port: u16,
    /// The ICE-TCP port for browsers whose UDP is blocked (0: none).
    pub web_tcp_port: u16,
    pub web_port_min: u16,
    pub web_port_max: u16,
    pub sip_port_min: u16,
    pub sip_port_max: u16,
    pub web_enable_dtls: bool,
    pub relay_workers: usize,
    pub relay_io: RelayIo,
    pub relay_busy_poll_us: u32,
    pub consent_timeout_s: u64,
    pub rtp_timeout_s: u64,
    /// Calls this node takes at once, both ways, in any state; one more is
    /// refused (503). 0: as many as the media port ranges allow.
    pub max_calls: usize,
    /// The machine's CPU busy share (percent of all cores, over the last
    /// 5 s) at which new calls are refused (503). 0: no threshold.
    pub max_cpu_percent: u32,
    /// When the relay transcodes a call's audio (`[media] transcode`).
    pub transcode: TranscodePolicy,
}

/// When a call's audio is transcoded (Opus toward the browser, G.711
/// toward the SIP side) rather than passed through (`[media] transcode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TranscodePolicy {
    /// Never: a call needs a codec both legs take.
    Never,
    /// Only when the legs share no codec the gateway carries.
    #[default]
    WhenNeeded,
    /// Opus toward every browser that offers or takes it, transcoded to
    /// G.711 when the SIP side does not take Opus.
    PreferOpusWeb,
}

/// How relay workers wait for and move datagrams (`[media] relay-io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelayIo {
    /// epoll readiness, then `recvmmsg`/`sendmmsg` per socket.
    Epoll,
    /// A multishot receive per socket and every send of a turn in one
    /// io_uring (the relay's ring); a worker falls back to epoll where the
    /// kernel refuses io_uring.
    #[default]
    IoUring,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            public_address: AddressList::default(),
            web_port: 0,
            web_tcp_port: 0,
            web_port_min: 20_000,
            web_port_max: 29_999,
            sip_port_min: 30_000,
            sip_port_max: 39_999,
            web_enable_dtls: true,
            relay_workers: 0,
            relay_io: RelayIo::default(),
            relay_busy_poll_us: 0,
            consent_timeout_s: 30,
            rtp_timeout_s: 30,
            max_calls: 0,
            max_cpu_percent: 0,
            transcode: TranscodePolicy::default(),
        }
    }
}

/// One `trusted-sources` entry: a CIDR network or a bare address (that
/// host alone); the error names what is wrong.
pub fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(ipnet::IpNet::from(ip.to_canonical()));
    }
    let net = text.parse::<ipnet::IpNet>().map_err(|_| {
        format!("{text:?} is not an IP address or a network such as \"10.0.0.0/8\"")
    })?;
    if net.network() != net.addr() {
        return Err(format!(
            "{text:?} has host bits set; the network is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

/// `[media] public-address`: no address (find the host's own), one, or a
/// list. Written as a string (`""`, `"203.0.113.5"`, or comma-separated)
/// or as a TOML list; kept as written until [`AddressList::parse`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressList(pub Vec<String>);

impl AddressList {
    /// The addresses as IPs, or a message naming the first that is not one.
    pub fn parse(&self) -> Result<Vec<IpAddr>, String> {
        self.0
            .iter()
            .map(|text| {
                text.parse::<IpAddr>().map_err(|_| {
                    format!(
                        "{text:?} is not an IP address (browsers are sent it as an ICE candidate)"
                    )
                })
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for AddressList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for AddressList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            One(String),
            Many(Vec<String>),
        }
        let list = match Written::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected an IP address, a comma-separated list of them, or a list",
            )
        })? {
            Written::One(text) => text.split(',').map(str::to_string).collect(),
            Written::Many(list) => list,
        };
        Ok(AddressList(
            list.into_iter()
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect(),
        ))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct EchoConfig {
    pub number: String,
}

impl Default for EchoConfig {
    fn default() -> Self {
        EchoConfig {
            number: "echo".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SecretsConfig {
    pub key_file: String,
}

/// One thing wrong with the config, naming the key (`section.key`) at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("config file {path} is not valid: {reason}")]
    Syntax { path: String, reason: String },
    #[error("environment override {var}: {reason}")]
    Env { var: String, reason: String },
    #[error("config is not valid:\n{}", list(.0))]
    Invalid(Vec<ConfigProblem>),
}

fn list(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads, overrides, validates and decrypts the config at `path`.
    /// `env` is the process environment (passed in so tests control it).
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text, &path.display().to_string(), env)
    }

    /// Like [`Config::load`] but from text; `origin` names the text in errors.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let overrides = env_overrides(env)?;
        let syntax = |e: toml::de::Error| ConfigError::Syntax {
            path: origin.to_string(),
            reason: e.to_string().trim_end().to_string(),
        };
        let mut config: Config = if overrides.is_empty() {
            // Parse straight from the text so errors point at the file's lines.
            toml::from_str(text).map_err(syntax)?
        } else {
            let mut table: toml::Table = toml::from_str(text).map_err(syntax)?;
            for (var, section, key, value) in overrides {
                let entry = table
                    .entry(section.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                let Some(section_table) = entry.as_table_mut() else {
                    return Err(ConfigError::Env {
                        var,
                        reason: format!("[{section}] is not a table in the config file"),
                    });
                };
                section_table.insert(key, value);
            }
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Syntax {
                path: format!("{origin} with environment overrides"),
                reason: e.to_string().trim_end().to_string(),
            })?
        };
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        config.open_secrets()?;
        let problems = config.check_opened_secrets();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(config)
    }

    /// What can only be checked of a secret in the clear: a token secret
    /// long enough for HMAC-SHA256.
    fn check_opened_secrets(&self) -> Vec<ConfigProblem> {
        let mut p = Problems::default();
        if self.auth.mode == AuthMode::Token
            && self.auth.token_secret.expose().len() < MIN_TOKEN_SECRET_BYTES
        {
            p.add(
                "auth.token-secret",
                format!(
                    "must be at least {MIN_TOKEN_SECRET_BYTES} bytes \
                     (e.g. the 64 hex digits of `openssl rand -hex 32`)"
                ),
            );
        }
        p.0
    }

    /// Checks every semantic rule and returns all the problems found.
    pub fn validate(&self) -> Vec<ConfigProblem> {
        let mut p = Problems::default();
        let http = &self.http;
        if !http.listen.is_empty() {
            p.socket_addr("http.listen", &http.listen);
        }
        if !http.tls_listen.is_empty() {
            p.socket_addr("http.tls-listen", &http.tls_listen);
        }
        if http.listen.is_empty() && http.tls_listen.is_empty() {
            p.add(
                "http.tls-listen",
                "both http.listen and http.tls-listen are empty: the API would not be reachable",
            );
        }
        match (http.tls_cert.is_empty(), http.tls_key.is_empty()) {
            (true, true) => {}
            (false, true) => p.add("http.tls-key", "tls-cert is set, so tls-key must be too"),
            (true, false) => p.add("http.tls-cert", "tls-key is set, so tls-cert must be too"),
            (false, false) => {
                if let Err(e) = crate::certs::load_cert_chain(Path::new(&http.tls_cert)) {
                    p.add("http.tls-cert", e.to_string());
                }
                if let Err(e) = crate::certs::load_private_key(Path::new(&http.tls_key)) {
                    p.add("http.tls-key", e.to_string());
                }
            }
        }
        for (i, entry) in http.domain_whitelist.iter().enumerate() {
            if let Err(e) = OriginPattern::parse(entry) {
                p.add(&format!("http.domain-whitelist[{i}]"), e);
            }
        }
        if http.session_timeout_s == 0 {
            p.add("http.session-timeout-s", "must be at least 1");
        }
        if http.max_sessions == 0 {
            p.add("http.max-sessions", "must be at least 1");
        }
        if http.max_body_bytes < 1024 {
            p.add(
                "http.max-body-bytes",
                "must be at least 1024 (an SDP offer alone is a few KiB)",
            );
        }
        if http.rate_limit_per_s > 0 && http.rate_limit_burst == 0 {
            p.add(
                "http.rate-limit-burst",
                "must be at least 1 when rate-limit-per-s is set",
            );
        }

        for (key, value) in [
            ("http.max-sessions-per-user", http.max_sessions_per_user),
            (
                "http.max-sessions-per-address",
                http.max_sessions_per_address,
            ),
            ("http.max-calls-per-session", http.max_calls_per_session),
            (
                "http.max-ringing-calls-per-session",
                http.max_ringing_calls_per_session,
            ),
            (
                "sip.max-ringing-calls-per-user",
                self.sip.max_ringing_calls_per_user,
            ),
            ("sip.max-ringing-calls", self.sip.max_ringing_calls),
            (
                "sip.max-transactions-per-source",
                self.sip.max_transactions_per_source,
            ),
            ("sip.max-transactions", self.sip.max_transactions),
        ] {
            if value == 0 {
                p.add(key, "must be at least 1");
            }
        }
        if !(1..=1_000_000).contains(&http.max_connections) {
            p.add("http.max-connections", "must be 1 to 1000000");
        }
        if !(1..=3600).contains(&http.idle_timeout_s) {
            p.add("http.idle-timeout-s", "must be 1 to 3600 seconds");
        }
        if !(1..=300).contains(&http.body_read_timeout_s) {
            p.add("http.body-read-timeout-s", "must be 1 to 300 seconds");
        }
        if http.hsts_max_age_s > 63_072_000 {
            p.add(
                "http.hsts-max-age-s",
                "must be 0 (off) to 63072000 seconds (two years)",
            );
        }

        if self.auth.mode == AuthMode::Token && self.auth.token_secret.is_empty() {
            p.add(
                "auth.token-secret",
                "auth.mode is \"token\", so a token secret is required",
            );
        } else if !self.auth.token_secret.expose().starts_with("CRYPT:") {
            // A CRYPT: value is measured once opened (`check_opened_secrets`).
            p.0.extend(self.check_opened_secrets());
        }
        if !(10..=604_800).contains(&self.auth.token_max_ttl_s) {
            p.add(
                "auth.token-max-ttl-s",
                "must be from 10 to 604800 (seven days)",
            );
        }

        p.socket_addr("admin.listen", &self.admin.listen);
        if self.admin.drain_timeout_s > MAX_DRAIN_TIMEOUT_S {
            p.add(
                "admin.drain-timeout-s",
                format!("must be 0 (end calls at once) to {MAX_DRAIN_TIMEOUT_S} seconds"),
            );
        }

        let cluster = &self.cluster;
        if !cluster.node_id.is_empty() && !ClusterConfig::valid_node_id(&cluster.node_id) {
            p.add(
                "cluster.node-id",
                "must be 1 to 32 letters, digits, '-' or '_'",
            );
        }
        let http_url = |u: &str| u.starts_with("https://") || u.starts_with("http://");
        if !cluster.node_url.is_empty() && !http_url(&cluster.node_url) {
            p.add("cluster.node-url", "must be an http:// or https:// URL");
        }
        let redis = cluster.redis_url.expose();
        let redis_ok = redis.is_empty()
            || redis.starts_with("CRYPT:")
            || redis.starts_with("redis://")
            || redis.starts_with("rediss://");
        if !redis_ok {
            p.add("cluster.redis-url", "must be a redis:// or rediss:// URL");
        }
        if cluster.node_id.is_empty()
            && (!cluster.node_url.is_empty() || !cluster.nodes.is_empty() || !redis.is_empty())
        {
            p.add(
                "cluster.node-id",
                "is needed for node-url, nodes and redis-url",
            );
        }
        for (id, url) in &cluster.nodes {
            if !ClusterConfig::valid_node_id(id) {
                p.add(
                    &format!("cluster.nodes.{id}"),
                    "a node id must be 1 to 32 letters, digits, '-' or '_'",
                );
            } else if !http_url(url) {
                p.add(
                    &format!("cluster.nodes.{id}"),
                    "must be an http:// or https:// URL",
                );
            } else if *id == cluster.node_id {
                p.add(
                    &format!("cluster.nodes.{id}"),
                    "names this node itself (node-url says where it is)",
                );
            }
        }

        let sip = &self.sip;
        p.socket_addr("sip.listen", &sip.listen);
        if let Err(e) = sip.server.parse(sip.transport) {
            p.add("sip.server", e);
        }

        if sip.transport == SipTransport::Tls && !sip.server.is_empty() {
            if let Err(e) = crate::certs::root_store(&sip.tls_ca_file) {
                p.add("sip.tls-ca-file", e.to_string());
            }
            if !sip.tls_server_name.is_empty()
                && rustls::pki_types::ServerName::try_from(sip.tls_server_name.as_str()).is_err()
            {
                p.add("sip.tls-server-name", "not a valid DNS name or IP address");
            }
        }
        if !(60..=86_400).contains(&sip.register_expires_s) {
            p.add("sip.register-expires-s", "must be 60 to 86400 seconds");
        }
        if sip.keepalive_interval_s != 0 && !(5..=3600).contains(&sip.keepalive_interval_s) {
            p.add(
                "sip.keepalive-interval-s",
                "must be 0 (off) or 5 to 3600 seconds",
            );
        }
        if !(10..=10_000).contains(&sip.timer_t1_ms) {
            p.add("sip.timer-t1-ms", "must be 10 to 10000 ms");
        }
        if sip.timer_t2_ms < sip.timer_t1_ms || sip.timer_t2_ms > 60_000 {
            p.add(
                "sip.timer-t2-ms",
                "must be at least timer-t1-ms and at most 60000 ms",
            );
        }
        if sip.session_expires_s != 0
            && !(MIN_SESSION_EXPIRES_S..=86_400).contains(&sip.session_expires_s)
        {
            p.add(
                "sip.session-expires-s",
                "must be 0 (off) or 90 to 86400 seconds",
            );
        }
        if !(5..=600).contains(&sip.ring_timeout_s) {
            p.add("sip.ring-timeout-s", "must be 5 to 600 seconds");
        }
        if !(10..=60_000).contains(&sip.timer_t4_ms) {
            p.add("sip.timer-t4-ms", "must be 10 to 60000 ms");
        }
        if !sip.media_address.is_empty() {
            match sip.media_address.parse::<IpAddr>() {
                Err(_) => p.add(
                    "sip.media-address",
                    format!("{:?} is not an IP address", sip.media_address),
                ),
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() => p.add(
                    "sip.media-address",
                    "must be a unicast address the SIP side can send to",
                ),
                Ok(_) => {}
            }
        }
        for (i, entry) in sip.allowed_destination_domains.iter().enumerate() {
            let host_like = entry == "*"
                || (!entry.is_empty()
                    && entry
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c)));
            if !host_like {
                p.add(
                    &format!("sip.allowed-destination-domains[{i}]"),
                    format!("{entry:?} is not a host name, an IP address or \"*\""),
                );
            }
        }
        for (key, entries) in [
            (
                "sip.incoming-header-prefixes",
                &sip.incoming_header_prefixes,
            ),
            ("sip.incoming-headers", &sip.incoming_headers),
            (
                "sip.allowed-outgoing-headers",
                &sip.allowed_outgoing_headers,
            ),
        ] {
            for (i, entry) in entries.iter().enumerate() {
                if !is_header_name(entry) {
                    p.add(
                        &format!("{key}[{i}]"),
                        format!("{entry:?} is not a SIP header name (letters, digits, -_.!%*+`'~)"),
                    );
                }
            }
        }
        for (i, entry) in sip.trusted_sources.iter().enumerate() {
            if let Err(e) = parse_network(entry) {
                p.add(&format!("sip.trusted-sources[{i}]"), e);
            }
        }
        if !sip.domain.is_empty() && sip.domain.contains(|c: char| c.is_whitespace() || c == '@') {
            p.add("sip.domain", "must be a host name without spaces or '@'");
        }

        let media = &self.media;
        match media.public_address.parse() {
            Err(e) => p.add("media.public-address", e),
            Ok(ips) => {
                if ips
                    .iter()
                    .any(|ip| ip.is_unspecified() || ip.is_multicast())
                {
                    p.add(
                        "media.public-address",
                        "must list unicast addresses browsers can send to (not 0.0.0.0, :: or multicast)",
                    );
                }
            }
        }
        if !(5..=600).contains(&media.consent_timeout_s) {
            p.add("media.consent-timeout-s", "must be 5 to 600 seconds");
        }
        if !(5..=3600).contains(&media.rtp_timeout_s) {
            p.add("media.rtp-timeout-s", "must be 5 to 3600 seconds");
        }
        if media.max_cpu_percent > 100 {
            p.add(
                "media.max-cpu-percent",
                "must be 0 (no threshold) to 100 percent",
            );
        }
        if media.relay_busy_poll_us > MAX_BUSY_POLL_US {
            p.add(
                "media.relay-busy-poll-us",
                format!("must be 0 (off) to {MAX_BUSY_POLL_US} microseconds"),
            );
        }
        if media.relay_workers > 256 {
            p.add(
                "media.relay-workers",
                "must be at most 256 (0 = one per core)",
            );
        }
        // ICE-TCP listens on every address: no other TCP listener of ours
        // may have its port.
        if media.web_tcp_port != 0 {
            for (key, listen) in [
                ("http.tls-listen", &self.http.tls_listen),
                ("http.listen", &self.http.listen),
                ("admin.listen", &self.admin.listen),
                ("sip.listen", &sip.listen),
            ] {
                let port = listen.parse::<SocketAddr>().map(|a| a.port());
                if port == Ok(media.web_tcp_port) {
                    p.add(
                        "media.web-tcp-port",
                        format!("{} is {key}'s port too", media.web_tcp_port),
                    );
                }
            }
        }
        // One web port for all calls, else a range of them.
        let (web_min, web_max) = if media.web_port != 0 {
            (media.web_port, media.web_port)
        } else {
            p.port_range("media.web-port", media.web_port_min, media.web_port_max, 1);
            (media.web_port_min, media.web_port_max)
        };
        // The SIP side needs an even RTP port and the odd one above it.
        p.port_range("media.sip-port", media.sip_port_min, media.sip_port_max, 2);
        if media.web_port != 0
            && (media.sip_port_min..=media.sip_port_max).contains(&media.web_port)
        {
            p.add(
                "media.web-port",
                format!(
                    "{} is in the SIP port range {}-{}",
                    media.web_port, media.sip_port_min, media.sip_port_max
                ),
            );
        } else if media.web_port == 0
            && media.web_port_min <= media.sip_port_max
            && media.sip_port_min <= media.web_port_max
        {
            p.add(
                "media.sip-port-min",
                format!(
                    "the SIP port range {}-{} overlaps the web port range {}-{}",
                    media.sip_port_min, media.sip_port_max, media.web_port_min, media.web_port_max
                ),
            );
        }
        if let Ok(sip_listen) = sip.listen.parse::<SocketAddr>() {
            let web_key = if media.web_port != 0 {
                "media.web-port"
            } else {
                "media.web-port-min"
            };
            for (key, min, max) in [
                (web_key, web_min, web_max),
                ("media.sip-port-min", media.sip_port_min, media.sip_port_max),
            ] {
                if (min..=max).contains(&sip_listen.port()) {
                    p.add(
                        key,
                        format!(
                            "the range {min}-{max} contains the SIP port {}",
                            sip_listen.port()
                        ),
                    );
                }
            }
        }

        if self.echo.number.trim().is_empty() {
            p.add("echo.number", "must not be empty");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            p.add("log.level", format!("not a valid filter: {e}"));
        }
        p.0
    }

    /// Replaces `CRYPT:` secrets by their plain text. Needs the key only when
    /// some secret is encrypted.
    fn open_secrets(&mut self) -> Result<(), ConfigError> {
        let env_key = std::env::var(secret::KEY_ENV).ok();
        self.open_secrets_with(env_key.as_deref())
    }

    fn open_secrets_with(&mut self, env_key: Option<&str>) -> Result<(), ConfigError> {
        let key_file = self.secrets.key_file.clone();
        let mut key: Option<CryptKey> = None;
        let mut problems = Vec::new();
        for (name, field) in [
            ("auth.token-secret", &mut self.auth.token_secret),
            ("sip.password", &mut self.sip.password),
            ("cluster.redis-url", &mut self.cluster.redis_url),
        ] {
            if !field.is_encrypted() {
                continue;
            }
            if key.is_none() {
                match CryptKey::locate(env_key, &key_file) {
                    Ok(k) => key = Some(k),
                    Err(e) => {
                        problems.push(ConfigProblem {
                            key: name.into(),
                            problem: e.to_string(),
                        });
                        continue;
                    }
                }
            }
            if let Some(k) = &key {
                match k.decrypt(field.expose()) {
                    Ok(plain) => *field = Secret::new(plain),
                    Err(e) => problems.push(ConfigProblem {
                        key: name.into(),
                        problem: e.to_string(),
                    }),
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The effective config as TOML, secrets shown as `****`.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }

    pub fn session_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.http.session_timeout_s)
    }
}

/// Collects `GATEWAY__SECTION__KEY=value` overrides. The key's underscores
/// stand for the config's hyphens. For a key whose default is text the value
/// is taken as it is; otherwise it is read as a TOML value (`true`, `8080`,
/// `["a", "b"]`), so a wrong type is reported like one in the file.
fn env_overrides(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String, String, toml::Value)>, ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let mut out = BTreeMap::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let mut parts = rest.splitn(2, "__");
        let (Some(section), Some(key)) = (parts.next(), parts.next()) else {
            return Err(ConfigError::Env {
                var,
                reason: "expected GATEWAY__SECTION__KEY".into(),
            });
        };
        if section.is_empty() || key.is_empty() || key.contains("__") {
            return Err(ConfigError::Env {
                var,
                reason: "expected GATEWAY__SECTION__KEY".into(),
            });
        }
        let section = section.to_ascii_lowercase().replace('_', "-");
        let key = key.to_ascii_lowercase().replace('_', "-");
        let default_is_text = defaults
            .get(&section)
            .and_then(|s| s.get(&key))
            .is_some_and(toml::Value::is_str);
        let value = if default_is_text {
            toml::Value::String(raw)
        } else {
            toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw))
        };
        out.insert(var.clone(), (var, section, key, value));
    }
    Ok(out.into_values().collect())
}

/// Parses `host[:port]` (IPv6 in brackets) and returns the host and port.
pub fn parse_host_port(text: &str, default_port: u16) -> Result<(String, u16), String> {
    if text.contains(char::is_whitespace) || text.contains("://") {
        return Err(format!(
            "{text:?} must be host[:port], without a scheme or spaces"
        ));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok((addr.ip().to_string(), addr.port()));
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip.to_string(), default_port));
    }
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{text:?} has an invalid port {p:?}"))?;
            (h, port)
        }
        None => (text, default_port),
    };
    let valid_host = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !valid_host {
        return Err(format!("{text:?} is not a valid host name or IP address"));
    }
    Ok((host.to_string(), port))
}

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn add(&mut self, key: &str, problem: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            problem: problem.into(),
        });
    }

    fn socket_addr(&mut self, key: &str, value: &str) {
        if value.parse::<SocketAddr>().is_err() {
            self.add(
                key,
                format!("{value:?} is not an IP address and port such as \"127.0.0.1:8080\""),
            );
        }
    }

    fn port_range(&mut self, prefix: &str, min: u16, max: u16, min_ports: u32) {
        if min == 0 {
            self.add(&format!("{prefix}-min"), "must be at least 1");
        }
        if min > max {
            self.add(
                &format!("{prefix}-min"),
                format!("{min} is greater than {prefix}-max {max}"),
            );
        } else if u32::from(max) - u32::from(min) + 1 < min_ports {
            self.add(
                &format!("{prefix}-max"),
                format!("the range {min}-{max} must hold at least {min_ports} ports"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml", Vec::new())
    }

    fn problems(text: &str) -> Vec<ConfigProblem> {
        match load(text) {
            Err(ConfigError::Invalid(p)) => p,
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.http.tls_listen, "0.0.0.0:8443");
        assert_eq!(c.http.listen, "127.0.0.1:8080");
        assert_eq!(c.http.session_timeout_s, 300);
        assert_eq!(c.media.web_port_min, 20_000);
        assert_eq!(c.sip.transport, SipTransport::Udp);
        assert_eq!(c.echo.number, "echo");
        assert!(c.media.web_enable_dtls);
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../../config/gateway.toml");
        let c = load(text).unwrap();
        assert!(
            c.sip.server.is_empty(),
            "the shipped default needs no SIP server"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("[http]\nlisten = \"127.0.0.1:1\"\nlissen = 1\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("lissen"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }

    #[test]
    fn transcode_takes_its_three_values() {
        assert_eq!(
            load("").unwrap().media.transcode,
            TranscodePolicy::WhenNeeded
        );
        for (text, policy) in [
            ("never", TranscodePolicy::Never),
            ("when-needed", TranscodePolicy::WhenNeeded),
            ("prefer-opus-web", TranscodePolicy::PreferOpusWeb),
        ] {
            let c = load(&format!("[media]\ntranscode = \"{text}\"\n")).unwrap();
            assert_eq!(c.media.transcode, policy);
        }
        let err = load("[media]\ntranscode = \"always\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("transcode") && text.contains("prefer-opus-web"),
            "{text}"
        );
    }

    #[test]
    fn relay_io_takes_its_two_values() {
        assert_eq!(load("").unwrap().media.relay_io, RelayIo::IoUring);
        let c = load("[media]\nrelay-io = \"epoll\"\n").unwrap();
        assert_eq!(c.media.relay_io, RelayIo::Epoll);
        let err = load("[media]\nrelay-io = \"kqueue\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("relay-io") && text.contains("io-uring"),
            "{text}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let err = load("[media]\nweb-port-min = \"abc\"\n").unwrap_err();
        assert!(err.to_string().contains("web-port-min"), "{err}");
    }

    #[test]
    fn busy_poll_is_off_by_default_and_bounded() {
        assert_eq!(load("").unwrap().media.relay_busy_poll_us, 0);
        let c = load("[media]\nrelay-busy-poll-us = 200\n").unwrap();
        assert_eq!(c.media.relay_busy_poll_us, 200);
        let c = load("[media]\nrelay-busy-poll-us = 1000\n").unwrap();
        assert_eq!(c.media.relay_busy_poll_us, MAX_BUSY_POLL_US);
        let p = problems("[media]\nrelay-busy-poll-us = 1001\n");
        assert!(
            p.iter()
                .any(|p| p.key == "media.relay-busy-poll-us" && p.problem.contains("1000")),
            "{p:?}"
        );
    }

    #[test]
    fn one_web_port_is_checked_against_the_sip_side() {
        assert!(load("[media]\nweb-port = 3478\n").is_ok());
        let p = problems("[media]\nweb-port = 30002\n");
        assert!(
            p.iter()
                .any(|p| p.key == "media.web-port" && p.problem.contains("SIP port range")),
            "{p:?}"
        );
        let p = problems("[sip]\nlisten = \"0.0.0.0:3478\"\n[media]\nweb-port = 3478\n");
        assert!(p.iter().any(|p| p.key == "media.web-port"), "{p:?}");
        // The range is not used (nor checked) with one port.
        assert!(load("[media]\nweb-port = 3478\nweb-port-min = 30000\n").is_ok());
        let err = load("[media]\nweb-port = 70000\n").unwrap_err();
        assert!(err.to_string().contains("web-port"), "{err}");
    }

    #[test]
    fn the_ice_tcp_port_is_no_other_listeners() {
        assert!(load("[media]\nweb-tcp-port = 3479\n").is_ok());
        let p = problems("[media]\nweb-tcp-port = 8443\n");
        assert!(
            p.iter()
                .any(|p| p.key == "media.web-tcp-port" && p.problem.contains("http.tls-listen")),
            "{p:?}"
        );
        let p = problems("[media]\nweb-tcp-port = 5070\n");
        assert!(p.iter().any(|p| p.problem.contains("sip.listen")), "{p:?}");
    }

    #[test]
    fn port_ranges_checked() {
        let p = problems("[media]\nweb-port-min = 30000\nweb-port-max = 20000\n");
        assert!(p
            .iter()
            .any(|p| p.key == "media.web-port-min" && p.problem.contains("greater")));
        let p = problems("[media]\nweb-port-min = 20000\nweb-port-max = 31000\n");
        assert!(p
            .iter()
            .any(|p| p.key == "media.sip-port-min" && p.problem.contains("overlaps")));
        let p = problems("[media]\nsip-port-min = 30000\nsip-port-max = 30000\n");
        assert!(p.iter().any(|p| p.key == "media.sip-port-max"));
    }

    #[test]
    fn missing_cert_file_is_named() {
        let p = problems(
            "[http]\ntls-cert = \"/nonexistent/cert.pem\"\ntls-key = \"/nonexistent/key.pem\"\n",
        );
        assert!(p.iter().any(|p| p.key == "http.tls-cert"), "{p:?}");
        assert!(p.iter().any(|p| p.key == "http.tls-key"), "{p:?}");
        let p = problems("[http]\ntls-cert = \"/nonexistent/cert.pem\"\n");
        assert!(p.iter().any(|p| p.key == "http.tls-key"));
    }

    #[test]
    fn public_address_takes_none_one_or_a_list() {
        let ips = |c: Config| -> Vec<String> {
            c.media
                .public_address
                .parse()
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert!(ips(load("").unwrap()).is_empty(), "empty by default");
        assert!(ips(load("[media]\npublic-address = \"\"\n").unwrap()).is_empty());
        assert_eq!(
            ips(load("[media]\npublic-address = \"203.0.113.5\"\n").unwrap()),
            ["203.0.113.5"]
        );
        assert_eq!(
            ips(load("[media]\npublic-address = \"203.0.113.5, 10.0.0.5\"\n").unwrap()),
            ["203.0.113.5", "10.0.0.5"]
        );
        assert_eq!(
            ips(load("[media]\npublic-address = [\"2001:db8::5\", \"2001:db8::6\"]\n").unwrap()),
            ["2001:db8::5", "2001:db8::6"]
        );
        // From the environment, as a user would write it.
        for (raw, want) in [
            ("192.0.2.10", vec!["192.0.2.10"]),
            ("192.0.2.10,192.0.2.11", vec!["192.0.2.10", "192.0.2.11"]),
            ("[\"192.0.2.12\"]", vec!["192.0.2.12"]),
        ] {
            let env = vec![(
                "GATEWAY__MEDIA__PUBLIC_ADDRESS".to_string(),
                raw.to_string(),
            )];
            let c = Config::from_toml("", "t", env).unwrap();
            assert_eq!(ips(c), want, "{raw}");
        }
    }

    #[test]
    fn bad_media_addresses_are_named() {
        for (text, key, says) in [
            (
                "[media]\npublic-address = \"192.0.2.1, nope\"\n",
                "media.public-address",
                "\"nope\" is not an IP address",
            ),
            (
                "[media]\npublic-address = \"0.0.0.0\"\n",
                "media.public-address",
                "unicast",
            ),
            (
                "[media]\npublic-address = 5\n",
                "public-address",
                "expected an IP address",
            ),
            (
                "[sip]\nmedia-address = \"pbx.example\"\n",
                "sip.media-address",
                "not an IP address",
            ),
            (
                "[sip]\nmedia-address = \"::\"\n",
                "sip.media-address",
                "unicast",
            ),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn both_address_families_may_be_offered_to_browsers() {
        let c = load("[media]\npublic-address = [\"192.0.2.1\", \"2001:db8::1\"]\n").unwrap();
        assert_eq!(c.media.public_address.parse().unwrap().len(), 2);
    }

    #[test]
    fn bad_values_are_named() {
        let p = problems(
            "[http]\nlisten = \"nope\"\ndomain-whitelist = [\"https://ok.example\", \"ftp://x\"]\n\
             [auth]\nmode = \"token\"\n[media]\npublic-address = \"example.com\"\n\
             [sip]\nserver = \"bad host:99999\"\n[echo]\nnumber = \"\"\n",
        );
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "http.listen",
            "http.domain-whitelist[1]",
            "auth.token-secret",
            "media.public-address",
            "sip.server",
            "echo.number",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn sip_servers_come_as_a_list_or_one_string_in_either_form() {
        let c = load("[sip]\nserver = [\"pbx1.example\", \"sip:10.0.0.2:5070;transport=udp\"]\n")
            .unwrap();
        assert_eq!(
            c.sip.server.parse(SipTransport::Udp).unwrap(),
            [
                ("pbx1.example".to_string(), 5060),
                ("10.0.0.2".to_string(), 5070)
            ]
        );
        assert_eq!(c.sip.effective_domain(), "pbx1.example");
        let c = load("[sip]\nserver = \"pbx1.example:5080, pbx2.example\"\n").unwrap();
        assert_eq!(
            c.sip.server.entries(),
            ["pbx1.example:5080", "pbx2.example"]
        );
        let c =
            load("[sip]\nserver = \"sips:pbx.example\"\ntransport = \"tls\"\ntls-ca-file = \"\"\n")
                .unwrap();
        assert_eq!(
            c.sip.server.parse(SipTransport::Tls).unwrap(),
            [("pbx.example".to_string(), 5061)]
        );
        // Shown back as written: one server as a string, several as an array.
        let shown = toml::to_string(&load("[sip]\nserver = \"a.example\"\n").unwrap().sip).unwrap();
        assert!(shown.contains("server = \"a.example\""), "{shown}");
        let shown = toml::to_string(
            &load("[sip]\nserver = \"a.example,b.example\"\n")
                .unwrap()
                .sip,
        )
        .unwrap();
        assert!(
            shown.contains("server = [\"a.example\", \"b.example\"]"),
            "{shown}"
        );
    }

    #[test]
    fn cluster_settings_are_checked() {
        let ok = load(
            "[cluster]\nnode-id = \"gw-1\"\nnode-url = \"https://gw1.example:8443\"\n\
             [cluster.nodes]\ngw-2 = \"https://gw2.example:8443\"\n",
        )
        .unwrap();
        assert_eq!(ok.cluster.nodes["gw-2"], "https://gw2.example:8443");
        let p = problems(
            "[cluster]\nnode-id = \"gw 1\"\nnode-url = \"gw1.example\"\n\
             [cluster.nodes]\n\"gw 1\" = \"https://x\"\ngw3 = \"ftp://y\"\n",
        );
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "cluster.node-id",
            "cluster.node-url",
            "cluster.nodes.gw 1",
            "cluster.nodes.gw3",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
        let p = problems("[cluster]\nnode-url = \"https://gw1.example\"\n");
        assert!(p.iter().any(|p| p.key == "cluster.node-id"), "{p:?}");
        let p = problems("[cluster]\nnode-id = \"a\"\nredis-url = \"http://r:6379\"\n");
        assert!(p.iter().any(|p| p.key == "cluster.redis-url"), "{p:?}");
        let p = problems("[cluster]\nredis-url = \"redis://r:6379\"\n");
        assert!(p.iter().any(|p| p.key == "cluster.node-id"), "{p:?}");
    }

    #[test]
    fn a_bad_server_entry_is_named() {
        for (text, needle) in [
            (
                "[sip]\nserver = [\"ok.example\", \"sip:pbx.example;transport=tcp\"]\n",
                "transport \"tcp\"",
            ),
            ("[sip]\nserver = \"sip:1001@pbx.example\"\n", "no user part"),
            ("[sip]\nserver = \"sip:pbx.example;maddr=x\"\n", "\"maddr\""),
            ("[sip]\nserver = \"pbx.example:0\"\n", "invalid port"),
        ] {
            let p = problems(text);
            let found = p
                .iter()
                .find(|p| p.key == "sip.server")
                .unwrap_or_else(|| panic!("{text}: {p:?}"));
            assert!(found.problem.contains(needle), "{text}: {}", found.problem);
        }
    }

    #[test]
    fn sip_tls_settings_are_checked() {
        let p = problems(
            "[sip]\nserver = \"sip.example.com\"\ntransport = \"tls\"\n\
             tls-ca-file = \"/nonexistent/ca.pem\"\ntls-server-name = \"bad name\"\n",
        );
        let keys: Vec<&str> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"sip.tls-ca-file"), "{keys:?}");
        assert!(keys.contains(&"sip.tls-server-name"), "{keys:?}");
        // Not checked when TLS is not used.
        assert!(load("[sip]\ntls-ca-file = \"/nonexistent/ca.pem\"\n").is_ok());
    }

    #[test]
    fn bad_enum_value_is_refused() {
        let err = load("[sip]\ntransport = \"sctp\"\n").unwrap_err();
        assert!(
            err.to_string().contains("sctp") || err.to_string().contains("transport"),
            "{err}"
        );
    }

    #[test]
    fn env_overrides_apply() {
        let env = vec![
            (
                "GATEWAY__HTTP__LISTEN".to_string(),
                "127.0.0.1:9999".to_string(),
            ),
            (
                "GATEWAY__HTTP__DOMAIN_WHITELIST".to_string(),
                "[\"https://a.example\"]".to_string(),
            ),
            (
                "GATEWAY__MEDIA__WEB_ENABLE_DTLS".to_string(),
                "false".to_string(),
            ),
            ("GATEWAY__ECHO__NUMBER".to_string(), "600".to_string()),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::from_toml("[http]\nlisten = \"127.0.0.1:1\"\n", "t", env).unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:9999");
        assert_eq!(
            c.http.domain_whitelist,
            vec!["https://a.example".to_string()]
        );
        assert!(!c.media.web_enable_dtls);
        assert_eq!(c.echo.number, "600", "a number for a text key stays text");
        let env = vec![("GATEWAY__HTTP__NOPE".to_string(), "1".to_string())];
        assert!(Config::from_toml("", "t", env).is_err());
        let env = vec![("GATEWAY__HTTP".to_string(), "1".to_string())];
        assert!(matches!(
            Config::from_toml("", "t", env),
            Err(ConfigError::Env { .. })
        ));
    }

    #[test]
    fn crypt_secrets_open_or_name_the_key() {
        let key_hex = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";
        let key = CryptKey::parse(key_hex).unwrap();
        let sealed = key.encrypt("token-secret-value").unwrap();
        let mut c: Config = toml::from_str(&format!(
            "[auth]\nmode = \"token\"\ntoken-secret = \"{sealed}\"\n"
        ))
        .unwrap();
        c.open_secrets_with(Some(key_hex)).unwrap();
        assert_eq!(c.auth.token_secret.expose(), "token-secret-value");

        let mut c: Config = toml::from_str(&format!("[sip]\npassword = \"{sealed}\"\n")).unwrap();
        match c.open_secrets_with(None) {
            Err(ConfigError::Invalid(p)) => assert_eq!(p[0].key, "sip.password"),
            other => panic!("{other:?}"),
        }
        let other_key = "00".repeat(32);
        match c.open_secrets_with(Some(&other_key)) {
            Err(ConfigError::Invalid(p)) => assert!(p[0].problem.contains("does not open")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn masked_dump_hides_secrets() {
        let mut c = Config::default();
        c.auth.token_secret = Secret::new("very-secret-value");
        c.sip.password = Secret::new("sip-pass");
        let dump = c.to_masked_toml();
        assert!(!dump.contains("very-secret-value"));
        assert!(!dump.contains("sip-pass"));
        assert!(dump.contains("token-secret = \"****\""), "{dump}");
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            parse_host_port("10.0.0.1", 5060).unwrap(),
            ("10.0.0.1".into(), 5060)
        );
        assert_eq!(
            parse_host_port("pbx.example:5080", 5060).unwrap(),
            ("pbx.example".into(), 5080)
        );
        assert_eq!(
            parse_host_port("[::1]:5061", 5060).unwrap(),
            ("::1".into(), 5061)
        );
        assert!(parse_host_port("sip:pbx", 5060).is_err());
        assert!(parse_host_port("pbx:0", 5060).is_err());
        assert!(parse_host_port("", 5060).is_err());
    }
}
