//! ICE-lite checks made and read by an independent STUN implementation
//! (webrtc-rs `stun`): its Binding request with short-term credentials,
//! USE-CANDIDATE and FINGERPRINT is answered by our agent, and our response
//! passes its integrity, fingerprint and address checks.

use std::net::SocketAddr;
use std::time::Instant;

use stun::agent::TransactionId;
use stun::attributes::{AttrType, ATTR_USERNAME};
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{Getter, Message, Setter, BINDING_REQUEST, BINDING_SUCCESS};
use stun::textattrs::Username;
use stun::xoraddr::XorMappedAddress;
use webrtc_sip_gateway::sdp::IceCredentials;
use webrtc_sip_gateway::webrtc::ice::{IceEvent, IceInput, IceLiteAgent, DEFAULT_CONSENT_TIMEOUT};

const OUR_PWD: &str = "gatewaysidepassword12345";

fn request(username: &str, password: &str, nominate: bool) -> Message {
    let mut m = Message::new();
    let mut setters: Vec<Box<dyn Setter>> = vec![
        Box::new(BINDING_REQUEST),
        Box::new(TransactionId::new()),
        Box::new(Username::new(ATTR_USERNAME, username.to_string())),
    ];
    if nominate {
        setters.push(Box::new(UseCandidate));
    }
    setters.push(Box::new(MessageIntegrity::new_short_term_integrity(
        password.to_string(),
    )));
    setters.push(Box::new(FINGERPRINT));
    m.build(&setters).unwrap();
    m
}

/// USE-CANDIDATE lives in webrtc-rs's ice crate; as a STUN attribute it is empty.
struct UseCandidate;

impl Setter for UseCandidate {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(AttrType(0x0025), &[]);
        Ok(())
    }
}

/// Decodes our answer to `req` with the independent stack: a success for
/// that transaction, signed with our password and fingerprinted; returns
/// the browser address it names (XOR-MAPPED-ADDRESS).
fn verified_success(response: Vec<u8>, req: &Message) -> SocketAddr {
    let mut resp = Message::new();
    resp.raw = response;
    resp.decode().unwrap();
    assert_eq!(resp.typ, BINDING_SUCCESS);
    assert_eq!(resp.transaction_id, req.transaction_id);
    MessageIntegrity::new_short_term_integrity(OUR_PWD.to_string())
        .check(&mut resp)
        .expect("our MESSAGE-INTEGRITY verifies");
    FINGERPRINT.check(&resp).expect("our FINGERPRINT verifies");
    let mut mapped = XorMappedAddress::default();
    mapped.get_from(&resp).unwrap();
    SocketAddr::new(mapped.ip, mapped.port)
}

#[test]
fn an_independent_stun_stack_completes_a_check() {
    let t0 = Instant::now();
    let mut agent = IceLiteAgent::new(
        IceCredentials {
            ufrag: "gwab".into(),
            pwd: OUR_PWD.into(),
        },
        IceCredentials {
            ufrag: "brcd".into(),
            pwd: "browserpassword123456789".into(),
        },
        DEFAULT_CONSENT_TIMEOUT,
        t0,
    );
    let browser: SocketAddr = "127.0.0.1:51234".parse().unwrap();
    let req = request("gwab:brcd", OUR_PWD, true);
    let check_bridged = |agent: &mut IceLiteAgent, data: &[u8], bridged_from| {
        agent
            .handle_input(
                t0,
                IceInput::Stun {
                    pair: browser.into(),
                    data,
                    bridged_from,
                },
            )
            .unwrap();
        match agent.poll_output() {
            IceEvent::Transmit { pair, data } => {
                assert_eq!(
                    pair.remote, browser,
                    "the answer goes back to the check's source"
                );
                data
            }
            other => panic!("no answer first: {other:?}"),
        }
    };
    let check = |agent: &mut IceLiteAgent, data: &[u8]| check_bridged(agent, data, None);
    let response = check(&mut agent, &req.raw);
    assert_eq!(verified_success(response, &req), browser);
    assert_eq!(agent.poll_output(), IceEvent::Selected(browser.into()));
    assert_eq!(
        agent.poll_output(),
        IceEvent::Timeout(Some(t0 + DEFAULT_CONSENT_TIMEOUT)),
        "consent: the next check is due within the timeout"
    );

    // A check bridged from an ICE-TCP connection (it reaches the agent from
    // our loopback socket): the answer goes back there, and names the
    // browser's TCP address, still signed and verifiable.
    let tcp_browser: SocketAddr = "192.0.2.77:40001".parse().unwrap();
    let bridged = request("gwab:brcd", OUR_PWD, false);
    let response = check_bridged(&mut agent, &bridged.raw, Some(tcp_browser));
    assert_eq!(verified_success(response, &bridged), tcp_browser);

    // Their request signed with the wrong password is refused with 401.
    let bad = request("gwab:brcd", "wrongpassword00000000000", true);
    let response = check(&mut agent, &bad.raw);
    let mut resp = Message::new();
    resp.raw = response;
    resp.decode().unwrap();
    let mut code = stun::error_code::ErrorCodeAttribute::default();
    code.get_from(&resp).unwrap();
    assert_eq!(code.code.0, 401);
}
