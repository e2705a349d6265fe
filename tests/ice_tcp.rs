//! ICE-TCP (RFC 6544, framing RFC 4571) over real sockets: a connection
//! whose first frame is a check for a call is bridged to the call's UDP
//! web port (its own, and the shared one) — the check reaches the ICE side,
//! its answer comes back framed, media flows both ways — and connections
//! that are not ICE for a call are closed: junk, a check for nobody, a
//! frame larger than any datagram, a check never answered with success.

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use webrtc_sip_gateway::media::ice_tcp;
use webrtc_sip_gateway::media::relay::{
    CallMedia, CallMediaSetup, PayloadMap, Relay, RelayEvent, RelayOptions,
};
use webrtc_sip_gateway::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};
use webrtc_sip_gateway::webrtc::stun;

const UFRAG: &str = "tcpufrag";
const PASSWORD: &str = "tcp-test-password-0123";

fn keys(seed: u8) -> SrtpKeyMaterial {
    SrtpKeyMaterial::new(SrtpProfile::AesCm128HmacSha1_80, &[seed; 16], &[seed; 14]).unwrap()
}

fn check(ufrag: &str, password: &str) -> Vec<u8> {
    stun::Builder::new(stun::BINDING_REQUEST, [3; 12])
        .attribute(stun::ATTR_USERNAME, format!("{ufrag}:browser").as_bytes())
        .attribute(stun::ATTR_PRIORITY, &[0x6e, 0, 0x1e, 0xff])
        .message_integrity(password.as_bytes())
        .finish()
}

fn framed(packet: &[u8]) -> Vec<u8> {
    let mut out = (packet.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(packet);
    out
}

async fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(3), stream.read_exact(&mut len))
        .await
        .ok()?
        .ok()?;
    let mut frame = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut frame).await.ok()?;
    Some(frame)
}

/// The connection ends (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            _ => {}
        }
    }
    false
}

struct Bridge {
    relay: Arc<Relay>,
    at: SocketAddr,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

async fn bridge(web_port: bool) -> Bridge {
    let relay = Relay::start_with_options(
        1,
        RelayOptions {
            web_port: web_port.then(|| "127.0.0.1:0".parse().unwrap()),
            ..RelayOptions::default()
        },
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let (shutdown, watch) = tokio::sync::watch::channel(false);
    tokio::spawn(ice_tcp::serve(
        listener,
        relay.clone(),
        relay.ice_tcp_counters(),
        watch,
    ));
    Bridge {
        relay,
        at,
        _shutdown: shutdown,
    }
}

/// A call known by UFRAG/PASSWORD, SDES keys 1 (in) and 2 (out), G.711
/// toward `sip_peer`; with its own web socket unless the relay has a port.
/// Returns it, a socket to answer checks from (the ICE side's), its SIP
/// address and its events.
fn call(
    relay: &Arc<Relay>,
    sip_peer: &UdpSocket,
) -> (CallMedia, UdpSocket, SocketAddr, Receiver<RelayEvent>) {
    let (web_socket, control) = match relay.web_port_socket() {
        Some(shared) => (None, shared.unwrap()),
        None => {
            let own = UdpSocket::bind("0.0.0.0:0").unwrap();
            let control = own.try_clone().unwrap();
            (Some(own), control)
        }
    };
    let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gateway_sip = sip.local_addr().unwrap();
    let (tx, events) = sync_channel(16);
    let media = relay
        .add_call(CallMediaSetup {
            web_socket,
            web_ufrag: Some(UFRAG.into()),
            web_srtp: Some((
                SrtpContext::new(&keys(1)).unwrap(),
                SrtpContext::new(&keys(2)).unwrap(),
            )),
            web_check_verifier: Some(Box::new(|p: &[u8]| {
                stun::is_authenticated_binding_request(p, PASSWORD.as_bytes())
            })),
            events: Some(tx),
            ..CallMediaSetup::new(
                sip,
                sip_peer.local_addr().unwrap(),
                PayloadMap::new(&[(0, 0, 8_000)]),
            )
        })
        .unwrap();
    (media, control, gateway_sip, events)
}

fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![
        0x80,
        0,
        (seq >> 8) as u8,
        seq as u8,
        0,
        0,
        0,
        160,
        0,
        0,
        0,
        7,
    ];
    p.extend_from_slice(payload);
    p
}

async fn a_connection_carries_a_call(web_port: bool) {
    let b = bridge(web_port).await;
    let sip_peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    sip_peer
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let (media, control, gateway_sip, events) = call(&b.relay, &sip_peer);
    let mut browser = TcpStream::connect(b.at).await.unwrap();
    let ice = check(UFRAG, PASSWORD);
    browser.write_all(&framed(&ice)).await.unwrap();
    // The ICE side gets the check (from the bridge's loopback socket) and
    // answers it; the answer reaches the browser framed.
    let handed = tokio::task::spawn_blocking(move || events.recv_timeout(Duration::from_secs(3)))
        .await
        .unwrap();
    let Ok(RelayEvent::Packet(handed)) = handed else {
        panic!(
            "the check did not reach the ICE side: {:?}",
            b.relay.ice_tcp_counters()
        );
    };
    assert_eq!(handed.data, ice);
    assert!(handed.from.ip().is_loopback(), "{:?}", handed.from);
    // The relay tells who stands behind that loopback socket: the
    // browser's TCP address and ours it connected to.
    let peer = b
        .relay
        .ice_tcp_peer(handed.from)
        .expect("the bridge noted its peer");
    assert_eq!(peer.browser, browser.local_addr().unwrap());
    assert_eq!(peer.gateway, b.at.ip());
    assert_eq!(b.relay.ice_tcp_peer(browser.local_addr().unwrap()), None);
    let success = stun::Builder::new(stun::BINDING_SUCCESS, [3; 12])
        .xor_mapped_address(handed.from, &[3; 12])
        .message_integrity(PASSWORD.as_bytes())
        .finish();
    control.send_to(&success, handed.from).unwrap();
    assert_eq!(read_frame(&mut browser).await.unwrap(), success);
    media.set_web_remote(handed.from, None).unwrap();
    // Media in over TCP, out to the SIP peer; and back.
    let mut tx = SrtpContext::new(&keys(1)).unwrap();
    let plain = rtp(1, b"over tcp");
    let mut wire = plain.clone();
    wire.resize(plain.len() + 10, 0);
    let n = tx.protect_rtp(&mut wire, plain.len()).unwrap();
    browser.write_all(&framed(&wire[..n])).await.unwrap();
    let mut buf = [0u8; 512];
    let got = tokio::task::spawn_blocking(move || {
        let n = sip_peer.recv(&mut buf).map(|n| buf[..n].to_vec());
        (n, sip_peer)
    })
    .await
    .unwrap();
    assert_eq!(got.0.unwrap(), plain);
    got.1.send_to(&rtp(1, b"back"), gateway_sip).unwrap();
    let mut back = read_frame(&mut browser).await.expect("media back over TCP");
    let len = SrtpContext::new(&keys(2))
        .unwrap()
        .unprotect_rtp(&mut back)
        .unwrap();
    assert_eq!(&back[12..len], b"back");
    let counters = b.relay.ice_tcp_counters();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        (load(&counters.accepted), load(&counters.connected)),
        (1, 1)
    );
    // A closed connection is forgotten.
    drop(browser);
    let deadline = Instant::now() + Duration::from_secs(3);
    while b.relay.ice_tcp_peer(handed.from).is_some() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.relay.ice_tcp_peer(handed.from), None);
    drop(media);
}

#[tokio::test]
async fn a_connection_carries_a_call_on_its_own_port() {
    a_connection_carries_a_call(false).await;
}

#[tokio::test]
async fn a_connection_carries_a_call_on_the_shared_port() {
    a_connection_carries_a_call(true).await;
}

/// Connections that are not ICE for a call are closed, and counted.
#[tokio::test]
async fn what_is_not_ice_for_a_call_is_closed() {
    let b = bridge(false).await;
    let sip_peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (_media, _control, _sip, _events) = call(&b.relay, &sip_peer);
    let cases: [(&str, Vec<u8>); 3] = [
        ("junk", framed(b"GET / HTTP/1.1\r\n\r\n")),
        ("a check for nobody", framed(&check("nobody", PASSWORD))),
        ("a frame too large", {
            let mut f = 4000u16.to_be_bytes().to_vec();
            f.extend_from_slice(&[0; 100]);
            f
        }),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(b.at).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(2)).await,
            "{what}: still open"
        );
    }
    // A check for the call that the ICE side never answers with success
    // (a forged one: the relay drops it) is closed after the ICE deadline.
    let mut s = TcpStream::connect(b.at).await.unwrap();
    let started = Instant::now();
    s.write_all(&framed(&check(UFRAG, "not-the-password")))
        .await
        .unwrap();
    assert!(
        closed_within(&mut s, ice_tcp::ICE_DEADLINE + Duration::from_secs(2)).await,
        "a connection without ICE stays open"
    );
    assert!(started.elapsed() >= ice_tcp::ICE_DEADLINE - Duration::from_millis(100));
    // A connection that says nothing is closed too.
    let mut silent = TcpStream::connect(b.at).await.unwrap();
    assert!(closed_within(&mut silent, ice_tcp::ICE_DEADLINE + Duration::from_secs(2)).await);
    let counters = b.relay.ice_tcp_counters();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&counters.accepted), 5);
    assert_eq!(load(&counters.refused), 5);
    assert_eq!(load(&counters.connected), 0);
}
