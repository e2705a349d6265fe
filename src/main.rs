//! The `webrtc-sip-gateway` command: run the gateway, or one of its operator tools.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use webrtc_sip_gateway::api::token;
use webrtc_sip_gateway::config::{self, Config, CryptKey};
use webrtc_sip_gateway::media::relay::{io_uring_usable, RelayIo};
use webrtc_sip_gateway::ops::firewall;
use webrtc_sip_gateway::{logging, netif, Gateway};

#[derive(Parser)]
#[command(
    name = "webrtc-sip-gateway",
    version,
    about = "WebRTC to SIP media gateway"
)]
struct Cli {
    /// Config file (TOML).
    #[arg(long, short, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config and print it as it takes effect, secrets masked. Exit 0 if valid.
    CheckConfig,
    /// Read a secret on stdin and print it as a CRYPT: value for the config.
    EncryptPassword,
    /// Print nftables rules for the configured listeners and port ranges.
    FirewallRules,
    /// Print a bearer token for a user, signed with [auth] token-secret (for testing a deployment).
    IssueToken {
        /// The session user the token is for.
        #[arg(long)]
        user: String,
        /// Seconds until the token expires.
        #[arg(long, default_value_t = 300)]
        ttl: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(&cli.config),
        Command::CheckConfig => check_config(&cli.config),
        Command::EncryptPassword => encrypt_password(&cli.config),
        Command::FirewallRules => firewall_rules(&cli.config),
        Command::IssueToken { user, ttl } => issue_token(&cli.config, &user, ttl),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<Config, String> {
    Config::load(path, std::env::vars()).map_err(|e| e.to_string())
}

fn run(path: &Path) -> Result<(), String> {
    let config = load(path)?;
    logging::init(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let gateway = Gateway::start(config).await.map_err(|e| e.to_string())?;
        let mut signals = Signals::new();
        tokio::select! {
            _ = signals.next() => tracing::info!("stop signal: draining (a second one stops at once)"),
            _ = gateway.state.admission.drain_requested() => {}
        }
        tokio::select! {
            _ = gateway.drain() => {}
            _ = signals.next() => tracing::warn!("second stop signal: stopping now, calls and all"),
        }
        tracing::info!("shutting down");
        gateway.shutdown().await;
        Ok(())
    })
}

/// SIGTERM and Ctrl-C (SIGINT), each one a stop signal.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        Signals {
            #[cfg(unix)]
            term: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok(),
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(term) = self.term.as_mut() {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn check_config(path: &Path) -> Result<(), String> {
    let config = load(path)?;
    println!(
        "# {} is valid. Effective config (secrets masked):",
        path.display()
    );
    if config.media.relay_io == RelayIo::IoUring {
        if let Err(e) = io_uring_usable() {
            println!(
                "# Note: relay-io = \"io-uring\", but this machine refuses io_uring ({e}); \
                 relay workers will use epoll."
            );
        }
    }
    for (key, configured) in [
        ("http.tls-listen", &config.http.tls_listen),
        ("http.listen", &config.http.listen),
    ] {
        let bound = config::api_bind_address(&config.auth, configured);
        if !configured.is_empty() && &bound != configured {
            println!(
                "# Note: auth.mode is \"none\", so anyone who reaches the API may open a session: \
                 {key} {configured} listens on {bound} (loopback) only. Set \
                 auth.allow-anonymous = true to listen on {configured}, or use auth.mode = \"token\"."
            );
        }
    }
    for line in address_notes(&config) {
        println!("# {line}");
    }
    print!("{}", config.to_masked_toml());
    Ok(())
}

/// What check-config says of the media addresses: what the web leg
/// offers, and for each configured address whether this host has it
/// (replies leave from it) or it is a NAT's (replies leave from the host's
/// address behind it, which the NAT maps).
fn address_notes(config: &config::Config) -> Vec<String> {
    let host = match netif::host_addresses() {
        Ok(host) => host,
        Err(e) => return vec![format!("Cannot read this host's addresses: {e}")],
    };
    let configured = config.media.public_address.parse().unwrap_or_default();
    let mut notes = Vec::new();
    if configured.is_empty() {
        let offered = netif::default_web_addresses(&host);
        notes.push(format!(
            "media.public-address is empty: browsers are offered this host's addresses, \
             read now (again at each start): {}",
            join(&offered)
        ));
    }
    for ip in configured {
        notes.push(if netif::is_host_address(&host, ip) {
            format!("media.public-address {ip} is an address of this host: media to browsers leaves from it")
        } else {
            format!(
                "media.public-address {ip} is not an address of this host: a NAT or load balancer \
                 must forward it to this host; media to browsers leaves from the host's address \
                 the packets arrive at, which the NAT maps back to {ip}"
            )
        });
    }
    if let Ok(ip) = config.sip.media_address.parse::<std::net::IpAddr>() {
        if !netif::is_host_address(&host, ip) {
            notes.push(format!(
                "sip.media-address {ip} is not an address of this host: SIP media leaves from \
                 the host's own address toward the SIP side, which a NAT must map to {ip}"
            ));
        }
    }
    notes
}

fn join(ips: &[std::net::IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn encrypt_password(path: &Path) -> Result<(), String> {
    // The key file may be named in the config; the config itself is optional here.
    let key_file = if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        table
            .get("secrets")
            .and_then(|s| s.get("key-file"))
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string()
    } else {
        String::new()
    };
    let env_key = std::env::var(config::secret::KEY_ENV).ok();
    let key = CryptKey::locate(env_key.as_deref(), &key_file).map_err(|e| e.to_string())?;
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read stdin: {e}"))?;
    let secret = input.strip_suffix('\n').unwrap_or(&input);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err("no secret on stdin".into());
    }
    println!("{}", key.encrypt(secret).map_err(|e| e.to_string())?);
    Ok(())
}

fn firewall_rules(path: &Path) -> Result<(), String> {
    let config = load(path)?;
    let servers = if config.sip.server.is_empty() {
        Vec::new()
    } else {
        firewall::sip_server_addresses(&config).map_err(|e| e.to_string())?
    };
    let rules = firewall::render(&config, &servers, &path.display().to_string())
        .map_err(|e| e.to_string())?;
    print!("{rules}");
    Ok(())
}

fn issue_token(path: &Path, user: &str, ttl: u64) -> Result<(), String> {
    let config = load(path)?;
    if config.auth.token_secret.is_empty() {
        return Err("auth.token-secret is empty".into());
    }
    if ttl > config.auth.token_max_ttl_s {
        return Err(format!(
            "--ttl {ttl} is longer than auth.token-max-ttl-s ({}): the gateway would refuse the token",
            config.auth.token_max_ttl_s
        ));
    }
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs()
        + ttl;
    println!(
        "{}",
        token::issue(config.auth.token_secret.expose().as_bytes(), user, expires)
    );
    Ok(())
}
