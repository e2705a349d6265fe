//! SIPp (Debian's sip-tester) as the far end of a test, started one way:
//! as the SIP server the gateway points at (a UAS scenario, or SIPp's own
//! `uas`) or as a caller toward the gateway's SIP port (a UAC scenario, or
//! `uac`); and ended one way: SIPp's verdict, then nothing of the call left
//! in the gateway (API calls, relay calls, SIP dialogs).

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{free_udp_port, wait_until_bound, Gateway};

/// SIP transport of a SIPp peer and of the gateway toward it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// SIPp's `-t` value.
    fn sipp(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }

    /// A port free now for a peer listening on this transport (a UDP
    /// probe says nothing of TCP: another test's connection may hold it).
    pub fn free_port(self) -> u16 {
        match self {
            Transport::Udp => free_udp_port(),
            Transport::Tcp => super::free_tcp_port(),
        }
    }

    /// The gateway's `[sip] transport`.
    pub fn config(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// A SIPp process playing one scenario once.
pub struct Sipp {
    child: Child,
}

/// The arguments every SIPp peer here takes: the scenario (a file under
/// tests/sipp, or one of SIPp's built-in `uas`/`uac`), one call, loopback,
/// and a bounded run that fails on timeout.
fn command(scenario: &str, transport: Transport, timeout_s: u32) -> Command {
    command_for_calls(scenario, transport, timeout_s, 1)
}

/// The same, for a scenario that plays `calls` calls.
fn command_for_calls(scenario: &str, transport: Transport, timeout_s: u32, calls: u32) -> Command {
    let mut cmd = Command::new("sipp");
    cmd.args(["-t", transport.sipp()]);
    match scenario {
        "uas" => {
            cmd.args(["-sn", "uas"]);
        }
        "uac" => {
            cmd.args(["-sn", "uac", "-d", "1000"]);
        }
        file => {
            cmd.arg("-sf")
                .arg(format!("{}/tests/sipp/{file}", env!("CARGO_MANIFEST_DIR")));
        }
    }
    cmd.args(["-m", &calls.to_string()])
        .args(["-i", "127.0.0.1", "-mi", "127.0.0.1", "-mp"])
        .arg(free_udp_port().to_string())
        .args([
            "-nostdin",
            "-timeout",
            &timeout_s.to_string(),
            "-timeout_error",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

impl Sipp {
    /// SIPp as a server on `port`, once it listens there.
    pub fn server(scenario: &str, port: u16, transport: Transport) -> Sipp {
        Sipp::server_for(scenario, port, transport, 30)
    }

    /// The same, for a scenario that lasts up to `timeout_s` seconds.
    pub fn server_for(scenario: &str, port: u16, transport: Transport, timeout_s: u32) -> Sipp {
        Sipp::server_for_calls(scenario, port, transport, timeout_s, 1)
    }

    /// The same, for `calls` calls.
    pub fn server_for_calls(
        scenario: &str,
        port: u16,
        transport: Transport,
        timeout_s: u32,
        calls: u32,
    ) -> Sipp {
        let child = command_for_calls(scenario, transport, timeout_s, calls)
            .arg("-p")
            .arg(port.to_string())
            .spawn()
            .expect("sipp runs (the test command installs sip-tester)");
        wait_until_bound(port, transport == Transport::Tcp);
        Sipp { child }
    }

    /// SIPp calling user 1001 at `target` (the gateway's SIP port).
    pub fn caller(scenario: &str, target: SocketAddr, transport: Transport) -> Sipp {
        Sipp::caller_for(scenario, target, transport, 30)
    }

    /// The same, for a scenario that lasts up to `timeout_s` seconds.
    pub fn caller_for(
        scenario: &str,
        target: SocketAddr,
        transport: Transport,
        timeout_s: u32,
    ) -> Sipp {
        Sipp::caller_from(
            scenario,
            target,
            transport,
            timeout_s,
            transport.free_port(),
            &[],
        )
    }

    /// The same, from SIP port `port` (the gateway's SIP server, when the
    /// scenario needs our requests in the dialog: they go to the server).
    pub fn caller_from(
        scenario: &str,
        target: SocketAddr,
        transport: Transport,
        timeout_s: u32,
        port: u16,
        args: &[&str],
    ) -> Sipp {
        let child = command(scenario, transport, timeout_s)
            .args(args)
            .args(["-s", "1001", "-p"])
            .arg(port.to_string())
            .arg(target.to_string())
            .spawn()
            .expect("sipp runs (the test command installs sip-tester)");
        Sipp { child }
    }

    /// Waits for SIPp to end.
    pub fn output(self) -> Output {
        self.child.wait_with_output().unwrap()
    }

    /// Waits for SIPp to end and asserts its scenario passed.
    pub fn passed(self) {
        super::assert_sipp_passed(&self.output());
    }
}

/// A gateway whose SIP server is 127.0.0.1:`port`, without registration or
/// keepalive, with `extra` lines in `[sip]`.
pub fn gateway_toward(port: u16, transport: Transport, extra: &str) -> Gateway {
    Gateway::start(
        "",
        &format!(
            "[sip]\nserver = \"127.0.0.1:{port}\"\nregister = false\nkeepalive-interval-s = 0\n\
             transport = \"{}\"\n{extra}",
            transport.config()
        ),
    )
}

/// Asserts (within 5 s) that the gateway holds no call anywhere.
pub async fn nothing_left(gw: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while (gw.metric("gateway_calls").await != 0.0
        || gw.metric("gateway_media_calls").await != 0.0
        || gw.metric("gateway_sip_dialogs").await != 0.0)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gw.metric("gateway_calls").await, 0.0);
    assert_eq!(
        gw.metric("gateway_media_calls").await,
        0.0,
        "the relay let go"
    );
    assert_eq!(gw.metric("gateway_sip_dialogs").await, 0.0);
}

/// A test's gateway and its SIPp peer.
pub struct SipTest {
    pub gw: Gateway,
    peer: Option<Sipp>,
}

impl SipTest {
    /// SIPp as the SIP server over UDP playing `scenario`, and a gateway
    /// pointed at it.
    pub fn toward(scenario: &str) -> SipTest {
        SipTest::toward_over(scenario, Transport::Udp, "")
    }

    /// The same over `transport`, with `extra` lines in the gateway's `[sip]`.
    pub fn toward_over(scenario: &str, transport: Transport, extra: &str) -> SipTest {
        let port = transport.free_port();
        let peer = Sipp::server(scenario, port, transport);
        SipTest {
            gw: gateway_toward(port, transport, extra),
            peer: Some(peer),
        }
    }

    /// SIPp over UDP playing `scenario`, which lasts up to `timeout_s`
    /// seconds, and a gateway pointed at it with `extra` TOML appended.
    pub fn toward_for(scenario: &str, timeout_s: u32, extra: &str) -> SipTest {
        let port = Transport::Udp.free_port();
        let peer = Sipp::server_for(scenario, port, Transport::Udp, timeout_s);
        SipTest {
            gw: gateway_toward(port, Transport::Udp, extra),
            peer: Some(peer),
        }
    }

    /// SIPp over UDP playing `scenario` with SIPp `args` (`-key` values),
    /// and a gateway pointed at it.
    pub fn toward_with(scenario: &str, args: &[&str]) -> SipTest {
        let port = Transport::Udp.free_port();
        let child = command(scenario, Transport::Udp, 30)
            .args(args)
            .arg("-p")
            .arg(port.to_string())
            .spawn()
            .expect("sipp runs (the test command installs sip-tester)");
        wait_until_bound(port, false);
        SipTest {
            gw: gateway_toward(port, Transport::Udp, ""),
            peer: Some(Sipp { child }),
        }
    }

    /// SIPp over UDP playing `scenario` for `calls` calls, and a gateway
    /// pointed at it.
    pub fn toward_calls(scenario: &str, calls: u32) -> SipTest {
        let port = Transport::Udp.free_port();
        let peer = Sipp::server_for_calls(scenario, port, Transport::Udp, 30, calls);
        SipTest {
            gw: gateway_toward(port, Transport::Udp, ""),
            peer: Some(peer),
        }
    }

    /// Starts SIPp calling user 1001 at the gateway, playing `scenario`
    /// for up to `timeout_s` seconds.
    pub fn call_in_for(&mut self, scenario: &str, timeout_s: u32) {
        assert!(self.peer.is_none(), "one SIPp peer per test");
        self.peer = Some(Sipp::caller_for(
            scenario,
            self.gw.sip,
            Transport::Udp,
            timeout_s,
        ));
    }

    /// A gateway whose SIP server is the SIPp caller [`SipTest::call_in_as_server`]
    /// starts later on `port` (our requests in its dialogs reach it).
    pub fn gateway_with_calling_server(port: u16, extra: &str) -> SipTest {
        SipTest {
            gw: gateway_toward(port, Transport::Udp, extra),
            peer: None,
        }
    }

    /// Starts SIPp calling user 1001 at the gateway from `port`, the
    /// gateway's SIP server, playing `scenario` (with SIPp `args`, such as
    /// `-oocsf` and the path of an out-of-call scenario).
    pub fn call_in_as_server(&mut self, scenario: &str, port: u16, args: &[&str]) {
        assert!(self.peer.is_none(), "one SIPp peer per test");
        self.peer = Some(Sipp::caller_from(
            scenario,
            self.gw.sip,
            Transport::Udp,
            30,
            port,
            args,
        ));
    }

    /// A gateway whose SIP server nothing plays (for calls that come in).
    pub fn gateway(transport: Transport, extra: &str) -> SipTest {
        SipTest {
            gw: gateway_toward(free_udp_port(), transport, extra),
            peer: None,
        }
    }

    /// Starts SIPp calling user 1001 at the gateway, playing `scenario`.
    pub fn call_in(&mut self, scenario: &str, transport: Transport) {
        assert!(self.peer.is_none(), "one SIPp peer per test");
        self.peer = Some(Sipp::caller(scenario, self.gw.sip, transport));
    }

    /// Waits for SIPp to end; its output (for what its screen shows).
    pub fn peer_output(&mut self) -> Output {
        self.peer.take().expect("a SIPp peer runs").output()
    }

    /// The end of every SIP test: SIPp passed (if it still runs), and the
    /// gateway holds nothing of the call.
    pub async fn finish(mut self) -> Gateway {
        if let Some(peer) = self.peer.take() {
            peer.passed();
        }
        nothing_left(&self.gw).await;
        self.gw
    }
}

/// For the browser tests, inside their own namespace (fixed ports): a SIPp
/// UAS on 127.0.0.1:5090 playing `scenario` (a file under tests/sipp, or
/// SIPp's own `uas`), returning the RTP it gets on port 6000
/// (`-rtp_echo`), and a gateway whose SIP server it is. Returns both and
/// the gateway's HTTPS URL.
pub fn echoing_uas_and_gateway(scenario: &str) -> (Child, Gateway, String) {
    echoing_uas_and_gateway_with(scenario, &[])
}

/// The same, with SIPp `args` (`-key` values for the scenario).
pub fn echoing_uas_and_gateway_with(scenario: &str, args: &[&str]) -> (Child, Gateway, String) {
    echoing_uas_and_configured_gateway(scenario, args, "")
}

/// The same, with `config` (more sections) in the gateway's config.
pub fn echoing_uas_and_configured_gateway(
    scenario: &str,
    args: &[&str],
    config: &str,
) -> (Child, Gateway, String) {
    let mut cmd = Command::new("sipp");
    cmd.args(args);
    match scenario {
        "uas" => cmd.args(["-sn", "uas"]),
        file => cmd
            .arg("-sf")
            .arg(format!("{}/tests/sipp/{file}", env!("CARGO_MANIFEST_DIR"))),
    };
    let sipp = cmd
        .args(["-m", "1", "-i", "127.0.0.1", "-p", "5090"])
        .args(["-mi", "127.0.0.1", "-mp", "6000", "-rtp_echo", "-nostdin"])
        .args(["-timeout", "60", "-timeout_error"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipp runs (the test command installs sip-tester)");
    wait_until_bound(5090, false);
    let gw = Gateway::start(
        "",
        &format!(
            "[sip]\nserver = \"127.0.0.1:5090\"\nregister = false\nkeepalive-interval-s = 0\n{config}"
        ),
    );
    let url = format!("https://127.0.0.1:{}", gw.https.port());
    (sipp, gw, url)
}

/// SIPp calling user 1001 at the gateway's SIP address `gateway`, one call,
/// returning the RTP it gets (`-rtp_echo`); `args` pick the scenario (and
/// may set its own `-timeout`, else 60 s).
pub fn calling_user_1001(args: &[&str], gateway: SocketAddr) -> Child {
    let timeout: &[&str] = if args.contains(&"-timeout") {
        &[]
    } else {
        &["-timeout", "60"]
    };
    Command::new("sipp")
        .args(args)
        .args(["-s", "1001", "-m", "1", "-i", "127.0.0.1", "-p", "5090"])
        .args(["-mi", "127.0.0.1", "-mp", "6000", "-rtp_echo", "-nostdin"])
        .arg("-timeout_error")
        .args(timeout)
        .arg(gateway.to_string())
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipp runs (the test command installs sip-tester)")
}
