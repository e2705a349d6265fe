//! The binary's commands: check-config, refusing bad configs, encrypt-password
//! with CRYPT: secrets, issue-token, firewall-rules, and masked logs.

mod common;

use common::{client, config_text, run, write, Gateway};
use serde_json::json;

const KEY_HEX: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0";

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn shipped_config_checks_clean() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/gateway.toml");
    let o = run(&["check-config", "--config", shipped], &[], None);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("tls-listen = \"0.0.0.0:8443\""), "{out}");
    assert!(out.contains("number = \"echo\""));
    // Anonymous by default, so the HTTPS port stays on loopback: said why.
    assert!(
        out.contains("http.tls-listen 0.0.0.0:8443 listens on 127.0.0.1:8443 (loopback) only")
            && out.contains("auth.allow-anonymous = true"),
        "{out}"
    );
}

/// With tokens, or anonymous by choice, the listeners stay where configured
/// and check-config has nothing to say of them.
#[test]
fn check_config_is_quiet_about_listeners_it_leaves_alone() {
    let dir = tempfile::tempdir().unwrap();
    for text in [
        "[auth]\nallow-anonymous = true\n",
        "[auth]\nmode = \"token\"\ntoken-secret = \"0123456789abcdef0123456789abcdef\"\n",
    ] {
        let path = write(dir.path(), "gateway.toml", text);
        let out = checked_clean(&path);
        assert!(!out.contains("(loopback) only"), "{text}: {out}");
    }
}

/// check-config's output for a config it finds valid.
fn checked_clean(path: &std::path::Path) -> String {
    let o = run(
        &["check-config", "--config", path.to_str().unwrap()],
        &[],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// check-config says what the web leg offers: the host's own addresses
/// by default; for configured ones, which the host has and which must come
/// through a NAT.
#[test]
fn check_config_explains_the_media_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "gateway.toml", "");
    let out = checked_clean(&path);
    assert!(
        out.contains("media.public-address is empty: browsers are offered this host's addresses")
            && out.contains("127.0.0.1"),
        "{out}"
    );
    let path = write(
        dir.path(),
        "nat.toml",
        "[media]\npublic-address = [\"203.0.113.5\", \"127.0.0.1\"]\n\
         [sip]\nmedia-address = \"198.51.100.99\"\n",
    );
    let out = checked_clean(&path);
    for line in [
        "# media.public-address 203.0.113.5 is not an address of this host: a NAT or load balancer must forward it",
        "# media.public-address 127.0.0.1 is an address of this host",
        "# sip.media-address 198.51.100.99 is not an address of this host",
        "public-address = [\n    \"203.0.113.5\",\n    \"127.0.0.1\",\n]",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
}

#[test]
fn bad_configs_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[http]\nlisten = \"127.0.0.1:8080\"\nlisen = \"x\"\n",
            "lisen",
        ),
        (
            "[media]\nweb-port-min = 30000\nweb-port-max = 39999\n",
            "media.sip-port-min",
        ),
        (
            "[media]\nweb-port-min = 25000\nweb-port-max = 24000\n",
            "media.web-port-min",
        ),
        (
            "[http]\ntls-cert = \"/no/such/cert.pem\"\ntls-key = \"/no/such/key.pem\"\n",
            "http.tls-cert",
        ),
        ("[media]\nweb-port-min = \"many\"\n", "web-port-min"),
        ("[auth]\nmode = \"token\"\n", "auth.token-secret"),
        (
            "[auth]\nmode = \"token\"\ntoken-secret = \"short\"\n",
            "at least 32 bytes",
        ),
        ("[auth]\ntoken-max-ttl-s = 0\n", "auth.token-max-ttl-s"),
        ("[sip]\ntransport = \"carrier-pigeon\"\n", "carrier-pigeon"),
        (
            "[sip]\nallowed-destination-domains = [\"evil example\"]\n",
            "sip.allowed-destination-domains[0]",
        ),
        (
            "[sip]\nincoming-header-prefixes = [\"X-\", \"bad name\"]\n",
            "sip.incoming-header-prefixes[1]",
        ),
        (
            "[sip]\nallowed-outgoing-headers = [\"Via:\"]\n",
            "sip.allowed-outgoing-headers[0]",
        ),
        ("[sip]\nasserted-identity = \"maybe\"\n", "maybe"),
        ("[http]\nidle-timeout-s = 0\n", "http.idle-timeout-s"),
        ("[http]\nmax-connections = 0\n", "http.max-connections"),
        (
            "[http]\nbody-read-timeout-s = 0\n",
            "http.body-read-timeout-s",
        ),
        (
            "[http]\nhsts-max-age-s = 99999999999\n",
            "http.hsts-max-age-s",
        ),
        (
            "[sip]\ntrusted-sources = [\"10.0.0.0/8\", \"pbx.example\"]\n",
            "sip.trusted-sources[1]",
        ),
        (
            "[sip]\ntrusted-sources = [\"10.1.2.3/8\"]\n",
            "host bits set",
        ),
        ("[http\n", "gateway.toml"),
    ];
    for (text, key) in cases {
        let path = write(dir.path(), "gateway.toml", text);
        let path = path.to_str().unwrap();
        for command in ["check-config", "run"] {
            let o = run(&[command, "--config", path], &[], None);
            assert_eq!(o.status.code(), Some(1), "{command} accepted {text:?}");
            assert!(
                stderr(&o).contains(key),
                "{command}: {key} not named in {}",
                stderr(&o)
            );
        }
    }
    let o = run(
        &["check-config", "--config", "/no/such/file.toml"],
        &[],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/no/such/file.toml"));
}

#[test]
fn env_override_applies_and_is_validated() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "g.toml", "");
    let path = path.to_str().unwrap();
    let o = run(
        &["check-config", "--config", path],
        &[("GATEWAY__ECHO__NUMBER", "9999")],
        None,
    );
    assert!(o.status.success());
    assert!(stdout(&o).contains("number = \"9999\""));
    let o = run(
        &["check-config", "--config", path],
        &[("GATEWAY__MEDIA__WEB_PORT_MIN", "35000")],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("media."));
}

#[test]
fn port_in_use_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\ntls-listen = \"\"\n[admin]\nlisten = \"{}\"\n[sip]\nlisten = \"127.0.0.1:0\"\n",
        taken.local_addr().unwrap()
    );
    let path = write(dir.path(), "g.toml", &text);
    let o = run(&["--config", path.to_str().unwrap()], &[], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("admin.listen"), "{}", stderr(&o));
}

#[tokio::test]
async fn crypt_secret_end_to_end() {
    let token_secret = "the-backend-shares-this-secret-with-us";
    // encrypt-password needs a key.
    let o = run(
        &["encrypt-password", "--config", "/nonexistent"],
        &[],
        Some(token_secret),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("GATEWAY_SECRET_KEY"));

    let o = run(
        &["encrypt-password", "--config", "/nonexistent"],
        &[("GATEWAY_SECRET_KEY", KEY_HEX)],
        Some(&format!("{token_secret}\n")),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let sealed = stdout(&o).trim().to_string();
    assert!(sealed.starts_with("CRYPT:"));
    assert!(!sealed.contains(token_secret));

    let dir = tempfile::tempdir().unwrap();
    let config = config_text(
        "",
        &format!("[auth]\nmode = \"token\"\ntoken-secret = \"{sealed}\"\n"),
    );
    let path = write(dir.path(), "g.toml", &config);
    let path_s = path.to_str().unwrap();

    // Without the key the config is refused, naming the secret's key.
    let o = run(&["check-config", "--config", path_s], &[], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("auth.token-secret"), "{}", stderr(&o));
    // A key file named in the config works too, and check-config masks the secret.
    let key_file = write(dir.path(), "key", KEY_HEX);
    let with_key_file = format!("{config}[secrets]\nkey-file = \"{}\"\n", key_file.display());
    let path2 = write(dir.path(), "g2.toml", &with_key_file);
    let o = run(
        &["check-config", "--config", path2.to_str().unwrap()],
        &[],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("token-secret = \"****\""));
    assert!(!stdout(&o).contains(token_secret) && !stdout(&o).contains(&sealed));

    // issue-token signs with the opened secret, and the running gateway accepts it.
    let o = run(
        &[
            "issue-token",
            "--config",
            path_s,
            "--user",
            "1001",
            "--ttl",
            "60",
        ],
        &[("GATEWAY_SECRET_KEY", KEY_HEX)],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let token = stdout(&o).trim().to_string();
    let gw = Gateway::start_with_env(&config, &[("GATEWAY_SECRET_KEY", KEY_HEX)]);
    let r = client()
        .post(format!("{}/v1/sessions", gw.api()))
        .bearer_auth(&token)
        .json(&json!({"user": "1001"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = client()
        .post(format!("{}/v1/sessions", gw.api()))
        .bearer_auth(&token)
        .json(&json!({"user": "1002"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn firewall_rules_follow_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "g.toml",
        "[http]\ntls-listen = \"0.0.0.0:443\"\n[sip]\nserver = \"198.51.100.7:5060\"\nlisten = \"0.0.0.0:5070\"\n\
         trusted-sources = [\"10.20.0.0/24\", \"10.30.0.9\"]\n\
         [media]\nweb-port-min = 21000\nweb-port-max = 21999\nsip-port-min = 31000\nsip-port-max = 31999\n",
    );
    let o = run(
        &["firewall-rules", "--config", path.to_str().unwrap()],
        &[],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let rules = stdout(&o);
    for expected in [
        "tcp dport 443 accept",
        "udp dport 21000-21999 accept",
        "ip saddr 198.51.100.7 udp dport 5070 accept",
        "ip saddr 198.51.100.7 udp dport 31000-31999 accept",
        "udp dport 31000-31999 drop",
        "ip saddr 198.51.100.7 tcp dport 5070 accept",
        "ip saddr 10.20.0.0/24 udp dport 5070 accept",
        "udp sport 31000-31999 ip daddr != { 198.51.100.7, 10.20.0.0/24, 10.30.0.9/32 } drop",
    ] {
        assert!(rules.contains(expected), "missing {expected:?} in\n{rules}");
    }
    assert!(
        !rules.contains("20000"),
        "only the configured ranges appear"
    );
    // When nft is installed, the rules must at least parse.
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok()
    {
        let file = write(dir.path(), "rules.nft", &rules);
        let check = std::process::Command::new("nft")
            .args(["--check", "-f", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "nft --check: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

async fn exercise_with_secrets(gw: &Gateway, token: &str) {
    let base = gw.api();
    let r = client()
        .post(format!(
            "{base}/v1/sessions?MMM_key=QUERYSECRET3&XXX_drop=QUERYSECRET4&token=QUERYSECRET5"
        ))
        .bearer_auth(token)
        .json(&json!({"user": "1001", "password": "PWSECRET1", "display_name": "Alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.unwrap();
    let (sid, secret) = (
        v["session"].as_str().unwrap(),
        v["session_secret"].as_str().unwrap(),
    );
    let r = client()
        .get(format!(
            "{base}/v1/sessions/{sid}/events?timeout=0&MMM_key=QUERYSECRET3"
        ))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A refused token and a refused secret are logged without themselves.
    let r = client()
        .post(format!("{base}/v1/sessions"))
        .bearer_auth("FORGEDTOKEN6")
        .json(&json!({"user": "1001", "password": "PWSECRET7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client()
        .delete(format!("{base}/v1/sessions/{sid}"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let log = gw.log();
    for s in [
        secret,
        token,
        "PWSECRET1",
        "QUERYSECRET3",
        "QUERYSECRET4",
        "QUERYSECRET5",
        "FORGEDTOKEN6",
        "PWSECRET7",
        "XXX_drop",
        "backend-secret-8",
    ] {
        assert!(!log.contains(s), "{s} leaked into the log:\n{log}");
    }
}

#[tokio::test]
async fn logs_never_carry_secrets() {
    let token_secret = "backend-secret-of-thirty-two-bytes";
    for format in ["json", "pretty"] {
        let config = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\ntls-listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [sip]\nlisten = \"127.0.0.1:0\"\n\
             [log]\nformat = \"{format}\"\nlevel = \"trace\"\n[auth]\nmode = \"token\"\ntoken-secret = \"{token_secret}\"\n"
        );
        let gw = Gateway::start_with_env(&config, &[]);
        let expires = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let token = webrtc_sip_gateway::api::token::issue(token_secret.as_bytes(), "1001", expires);
        exercise_with_secrets(&gw, &token).await;
        let log = gw.stop();
        assert!(
            log.contains("MMM_key=****"),
            "the URI is logged, masked: {log}"
        );
        assert!(log.contains("token refused"));
        assert!(log.contains("session created"));
    }
}

/// SIP over TLS with a CA file that is not there: refused at start,
/// naming the key.
#[test]
fn sip_tls_without_its_ca_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::config_text(
        "",
        "[sip]\nserver = \"127.0.0.1:5061\"\ntransport = \"tls\"\ntls-ca-file = \"/nonexistent/ca.pem\"\n",
    );
    let path = common::write(dir.path(), "gateway.toml", &config);
    let out = common::run(&["--config", path.to_str().unwrap()], &[], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sip.tls-ca-file"), "{err}");
}
