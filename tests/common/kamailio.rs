//! Kamailio (Debian's kamailio package) as a test's SIP proxy, registrar or
//! dispatcher: a config from tests/kamailio with its ports filled in,
//! started in the foreground, ready once it answers OPTIONS, stopped when
//! dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Kamailio {
    child: Child,
    /// UDP port.
    pub port: u16,
    /// TLS port (when started with TLS).
    pub tls_port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // Its worker processes follow the main one out.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Kamailio {
    /// Kamailio with tests/kamailio/`config`, whose LISTEN_PORT, TLS_PORT
    /// and TLS_CFG are filled in, and each (`placeholder`, `value`) of
    /// `replace`; with `tls` (certificate and key PEM files) it also
    /// listens for SIP over TLS. `defines` are `-A` names.
    pub fn start(
        config: &str,
        replace: &[(&str, &str)],
        tls: Option<(&Path, &Path)>,
        defines: &[&str],
    ) -> Kamailio {
        // Kamailio listens on UDP and TCP there.
        Kamailio::start_at(
            "127.0.0.1",
            super::free_udp_and_tcp_port(),
            config,
            replace,
            tls,
            defines,
        )
    }

    /// [`Kamailio::start`] on UDP (and TCP) `port`, without TLS.
    pub fn start_on(port: u16, config: &str, replace: &[(&str, &str)]) -> Kamailio {
        Kamailio::start_at("127.0.0.1", port, config, replace, None, &[])
    }

    /// [`Kamailio::start_on`] for a config listening on `address` (its
    /// FRONT_ADDR) rather than loopback.
    pub fn start_on_address(
        address: &str,
        port: u16,
        config: &str,
        replace: &[(&str, &str)],
    ) -> Kamailio {
        let mut replace = replace.to_vec();
        replace.push(("FRONT_ADDR", address));
        Kamailio::start_at(address, port, config, &replace, None, &[])
    }

    fn start_at(
        address: &str,
        port: u16,
        config: &str,
        replace: &[(&str, &str)],
        tls: Option<(&Path, &Path)>,
        defines: &[&str],
    ) -> Kamailio {
        let dir = tempfile::tempdir().unwrap();
        let tls_port = super::free_tcp_port();
        let template = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/kamailio")
                .join(config),
        )
        .unwrap();
        let tls_cfg = dir.path().join("tls.cfg");
        let cfg = dir.path().join("kamailio.cfg");
        let mut text = template
            .replace("LISTEN_PORT", &port.to_string())
            .replace("TLS_PORT", &tls_port.to_string())
            .replace("TLS_CFG", tls_cfg.to_str().unwrap());
        for (placeholder, value) in replace {
            text = text.replace(placeholder, value);
        }
        std::fs::write(&cfg, text).unwrap();
        let mut command = Command::new("kamailio");
        if let Some((cert, key)) = tls {
            let profile = std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/kamailio/tls.cfg"
            ))
            .unwrap();
            std::fs::write(
                &tls_cfg,
                profile
                    .replace("CERT_FILE", cert.to_str().unwrap())
                    .replace("KEY_FILE", key.to_str().unwrap()),
            )
            .unwrap();
            command.args(["-A", "WITH_TLS"]);
        }
        for define in defines {
            command.args(["-A", define]);
        }
        let child = command
            .arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-Y"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kamailio runs (the test command installs it)");
        wait_answering(address, port);
        Kamailio {
            child,
            port,
            tls_port,
            _dir: dir,
        }
    }
}

/// Waits until Kamailio on `address`:`port` answers an OPTIONS to itself
/// with 200.
fn wait_answering(address: &str, port: u16) {
    let probe = std::net::UdpSocket::bind((address, 0)).unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let local = probe.local_addr().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 2048];
    loop {
        assert!(Instant::now() < deadline, "kamailio did not start");
        let options = format!(
            "OPTIONS sip:{address}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKprobe{}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=p\r\nTo: <sip:{address}:{port}>\r\n\
             Call-ID: probe@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            deadline.elapsed().as_nanos()
        );
        let _ = probe.send_to(options.as_bytes(), (address, port));
        if let Ok(n) = probe.recv(&mut buf) {
            if buf[..n].starts_with(b"SIP/2.0 200") {
                return;
            }
        }
    }
}
