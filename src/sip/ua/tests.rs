//! The user agent with virtual time and a seeded random source, through
//! its one input and one output.

use super::*;
use crate::sip::endpoint::Datagram;
use crate::sip::transfer::{RemoteControl, TransferProgress, TransferTarget};

/// The tests' way of driving the user agent: every call goes through
/// `handle_input`, and the output queues are read as `poll_output` reads
/// them (datagrams by the way they leave, events in order).
trait Drive {
    fn datagram_in(&mut self, now: Instant, from: SocketAddr, data: &[u8]);
    fn timeout_in(&mut self, now: Instant);
    fn register_in(&mut self, now: Instant, id: &str, user: &str, password: Option<String>);
    fn unregister_in(&mut self, now: Instant, id: &str);
    fn invite_in(&mut self, now: Instant, key: &str, user: &str, to: &str, sdp: String);
    fn hangup_in(&mut self, now: Instant, key: &str);
    fn accept_in(&mut self, now: Instant, key: &str, sdp: String);
    fn ring_in(&mut self, now: Instant, key: &str);
    fn progress_in(&mut self, now: Instant, key: &str, sdp: &str);
    fn stream_failed_in(&mut self, now: Instant);
    fn next_transmit(&mut self) -> Option<Datagram>;
    fn next_stream_transmit(&mut self) -> Option<Datagram>;
    fn next_event(&mut self) -> Option<UaEvent>;
    fn next_wakeup(&self) -> Option<Instant>;
}

impl Drive for UserAgent {
    fn datagram_in(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        self.handle_input(now, UaInput::Datagram { from, data });
    }
    fn timeout_in(&mut self, now: Instant) {
        self.handle_input(now, UaInput::Timeout);
    }
    fn register_in(&mut self, now: Instant, id: &str, user: &str, password: Option<String>) {
        let (id, user) = (id.into(), user.into());
        self.handle_input(now, UaInput::Register { id, user, password });
    }
    fn unregister_in(&mut self, now: Instant, id: &str) {
        self.handle_input(now, UaInput::Unregister { id: id.into() });
    }
    fn invite_in(&mut self, now: Instant, key: &str, user: &str, to: &str, sdp: String) {
        let (key, user, to) = (key.into(), user.into(), to.into());
        let password = None;
        self.handle_input(
            now,
            UaInput::Invite {
                key,
                user,
                to,
                sdp,
                password,
                caller: OutgoingCaller::default(),
            },
        );
    }
    fn hangup_in(&mut self, now: Instant, key: &str) {
        self.handle_input(now, UaInput::Hangup { key: key.into() });
    }
    fn accept_in(&mut self, now: Instant, key: &str, sdp: String) {
        self.handle_input(
            now,
            UaInput::Accept {
                key: key.into(),
                sdp,
                headers: Vec::new(),
            },
        );
    }
    fn ring_in(&mut self, now: Instant, key: &str) {
        self.handle_input(now, UaInput::Ring { key: key.into() });
    }
    fn progress_in(&mut self, now: Instant, key: &str, sdp: &str) {
        let (key, sdp) = (key.into(), sdp.into());
        self.handle_input(now, UaInput::Progress { key, sdp });
    }
    fn stream_failed_in(&mut self, now: Instant) {
        self.handle_input(now, UaInput::StreamFailed);
    }
    fn next_transmit(&mut self) -> Option<Datagram> {
        let at = self.transmit.iter().position(|t| t.over == Over::Link)?;
        self.transmit.remove(at).map(|t| (t.to, t.data))
    }
    fn next_stream_transmit(&mut self) -> Option<Datagram> {
        let at = self
            .transmit
            .iter()
            .position(|t| t.over == Over::LargeRequestStream)?;
        self.transmit.remove(at).map(|t| (t.to, t.data))
    }
    fn next_event(&mut self) -> Option<UaEvent> {
        self.events.pop_front()
    }
    fn next_wakeup(&self) -> Option<Instant> {
        self.wakeups.next()
    }
}

fn cfg(keepalive: Option<Duration>) -> UaConfig {
    UaConfig {
        servers: vec!["192.0.2.1:5060".parse().unwrap()],
        identity: Identity {
            domain: "pbx.example".into(),
            local: "192.0.2.10:5070".parse().unwrap(),
            transport: crate::config::SipTransport::Udp,
        },
        timers: TimerConfig::default(),
        register_expires: 300,
        keepalive,
        trusted: TrustedSources::new(&[server().ip()], &[]),
        transactions: TransactionLimits::default(),
        session_timer: crate::sip::session_timer::SessionTimerConfig { expires_s: 0 },
        call_data: crate::sip::call_data::CallDataRules {
            prefixes: vec!["X-".into()],
            incoming: vec!["User-to-User".into()],
            outgoing: vec!["User-to-User".into()],
        },
        accept_refer: false,
    }
}

fn server() -> SocketAddr {
    "192.0.2.1:5060".parse().unwrap()
}

/// The server's answer to the datagram we sent.
fn answer(sent: &[u8], status: &str, extra: &str) -> Vec<u8> {
    let text = std::str::from_utf8(sent).unwrap();
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in text.split("\r\n") {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        if ["via", "from", "to", "call-id", "cseq"].contains(&name.as_str()) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

/// Everything a UA sends for a registration with a digest challenge,
/// an INVITE and the keepalive, from one seed.
fn wire_bytes(seed: u64) -> Vec<Vec<u8>> {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(Some(Duration::from_secs(30))), t0, Random::seeded(seed));
    ua.register_in(t0, "s1", "1001", Some("pw".into()));
    ua.invite_in(t0, "c1", "1001", "5000", "v=0\r\n".into());
    let mut sent = Vec::new();
    while let Some((_, bytes)) = ua.next_transmit() {
        sent.push(bytes);
    }
    let challenge = answer(
        &sent[0],
        "401 Unauthorized",
        "WWW-Authenticate: Digest realm=\"r\", nonce=\"n\", qop=\"auth\"\r\n",
    );
    ua.datagram_in(t0, server(), &challenge);
    ua.timeout_in(t0 + Duration::from_secs(30));
    while let Some((_, bytes)) = ua.next_transmit() {
        sent.push(bytes);
    }
    sent
}

#[test]
fn one_seed_gives_the_same_bytes_on_the_wire() {
    let first = wire_bytes(42);
    assert!(first.len() >= 4, "REGISTER, INVITE, the answer, OPTIONS");
    assert!(
        String::from_utf8_lossy(&first.concat()).contains("cnonce="),
        "the cnonce is drawn too"
    );
    let again = wire_bytes(42);
    let differs = |a: &[Vec<u8>], b: &[Vec<u8>]| {
        (a.len() != b.len())
            .then(|| format!("{} messages, then {}", a.len(), b.len()))
            .or_else(|| {
                a.iter().zip(b).position(|(x, y)| x != y).map(|i| {
                    format!(
                        "{}\n---\n{}",
                        String::from_utf8_lossy(&a[i]),
                        String::from_utf8_lossy(&b[i])
                    )
                })
            })
    };
    assert_eq!(
        differs(&first, &again),
        None,
        "tags, branches, Call-IDs, cnonce"
    );
    assert!(differs(&first, &wire_bytes(43)).is_some());
}

#[test]
fn registration_through_transactions_with_a_lost_request() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
    ua.register_in(t0, "s1", "1001", Some("pw".into()));
    let (to, first) = ua.next_transmit().unwrap();
    assert_eq!(Some(to), ua.server());
    assert!(first.starts_with(b"REGISTER sip:pbx.example SIP/2.0"));
    // Lost: timer E retransmits after T1.
    assert_eq!(ua.next_wakeup(), Some(t0 + Duration::from_millis(500)));
    ua.timeout_in(t0 + Duration::from_millis(500));
    let (_, again) = ua.next_transmit().unwrap();
    assert_eq!(again, first);
    let t1 = t0 + Duration::from_millis(600);
    ua.datagram_in(
        t1,
        server(),
        &answer(
            &first,
            "401 Unauthorized",
            "WWW-Authenticate: Digest realm=\"r\", nonce=\"n\"\r\n",
        ),
    );
    let (_, second) = ua.next_transmit().unwrap();
    assert!(String::from_utf8_lossy(&second).contains("Authorization: Digest"));
    ua.datagram_in(t1, server(), &answer(&second, "200 OK", "Expires: 300\r\n"));
    assert_eq!(ua.next_event(), Some(UaEvent::ServerReachable(true)));
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Registration {
            id: "s1".into(),
            event: RegistrationEvent::Registered { expires: 300 }
        })
    );
    assert_eq!(ua.registered_count(), 1);
    ua.unregister_in(t1, "s1");
    let (_, bye) = ua.next_transmit().unwrap();
    assert!(String::from_utf8_lossy(&bye).contains("Expires: 0"));
    ua.datagram_in(t1, server(), &answer(&bye, "200 OK", ""));
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Registration {
            id: "s1".into(),
            event: RegistrationEvent::Unregistered
        })
    );
    assert_eq!(ua.registered_count(), 0);
}

#[test]
fn an_unanswered_register_fails_after_timer_f() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
    ua.register_in(t0, "s1", "1001", None);
    let mut now = t0;
    let mut sent = 0;
    while let Some(at) = ua.next_wakeup() {
        now = at;
        ua.timeout_in(now);
        while ua.next_transmit().is_some() {
            sent += 1;
        }
    }
    assert_eq!(now, t0 + Duration::from_secs(32), "timer F = 64·T1");
    assert!(sent >= 9, "retransmitted up to T2 spacing: {sent}");
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Registration {
            id: "s1".into(),
            event: RegistrationEvent::Failed { status: None }
        })
    );
    assert_eq!(ua.counters.transaction_timeouts, 1);
}

#[test]
fn without_a_server_registration_fails_at_once() {
    let t0 = Instant::now();
    let mut c = cfg(None);
    c.servers = Vec::new();
    let mut ua = UserAgent::new(c, t0, Random::seeded(1));
    ua.register_in(t0, "s1", "1001", None);
    assert_eq!(ua.next_transmit(), None);
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Registration {
            id: "s1".into(),
            event: RegistrationEvent::Failed { status: None }
        })
    );
}

#[test]
fn keepalive_reports_reachability_changes() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(Some(Duration::from_secs(30))), t0, Random::seeded(1));
    ua.timeout_in(t0);
    let (_, ping) = ua.next_transmit().unwrap();
    assert!(ping.starts_with(b"OPTIONS sip:pbx.example"));
    ua.datagram_in(t0, server(), &answer(&ping, "404 Not Found", ""));
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::ServerReachable(true)),
        "any answer counts"
    );
    // The next ping goes unanswered.
    let t1 = t0 + Duration::from_secs(30);
    ua.timeout_in(t1);
    let mut now = t1;
    while let Some(at) = ua
        .next_wakeup()
        .filter(|&at| at < t1 + Duration::from_secs(33))
    {
        now = at;
        ua.timeout_in(now);
    }
    assert_eq!(ua.next_event(), Some(UaEvent::ServerReachable(false)));
    assert!(now >= t1 + Duration::from_secs(32));
}

fn incoming_invite(branch: &str) -> Vec<u8> {
    let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    format!(
            "INVITE sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
             From: \"Caller\" <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>\r\n\
             Call-ID: in-1@pbx\r\nCSeq: 7 INVITE\r\nContact: <sip:2000@192.0.2.1:5060>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
        .into_bytes()
}

fn sent(ua: &mut UserAgent) -> Vec<String> {
    std::iter::from_fn(|| ua.next_transmit())
        .map(|(_, b)| String::from_utf8(b).unwrap())
        .collect()
}

#[test]
fn sip_from_an_untrusted_source_is_dropped_unanswered_and_counted() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
    let stranger: SocketAddr = "203.0.113.66:5060".parse().unwrap();
    ua.datagram_in(t0, stranger, &incoming_invite("z9hG4bKstranger"));
    assert!(sent(&mut ua).is_empty());
    assert_eq!(ua.next_event(), None);
    assert_eq!(ua.call_count(), 0);
    assert_eq!(ua.counters.untrusted_dropped, 1);
    assert_eq!(ua.counters.malformed_received, 0);
    // The same INVITE from the server rings.
    ua.datagram_in(t0, server(), &incoming_invite("z9hG4bKtrusted"));
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
    assert!(matches!(ua.next_event(), Some(UaEvent::Incoming { .. })));
    assert_eq!(ua.counters.untrusted_dropped, 1);
}

#[test]
fn the_2xx_goes_to_where_the_invite_came_from_not_where_its_via_points() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
    // A Via that names a victim with received/rport of its own making.
    let invite = String::from_utf8(incoming_invite("z9hG4bKrefl"))
        .unwrap()
        .replace(
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKrefl",
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKrefl;received=203.0.113.9;rport=9999",
        );
    ua.datagram_in(t0, server(), invite.as_bytes());
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("an incoming call event");
    };
    ua.accept_in(t0, &key, "v=0 answer\r\n".into());
    ua.timeout_in(t0 + Duration::from_millis(500));
    ua.timeout_in(t0 + Duration::from_millis(1500));
    let mut destinations = Vec::new();
    while let Some((to, bytes)) = ua.next_transmit() {
        if bytes.starts_with(b"SIP/2.0 200") {
            destinations.push(to);
        }
    }
    assert!(destinations.len() >= 3, "{destinations:?}");
    assert!(
        destinations.iter().all(|to| *to == server()),
        "{destinations:?}"
    );
    // Never more than the transaction allows: nothing after 64·T1.
    ua.timeout_in(t0 + Duration::from_secs(40));
    while ua.next_transmit().is_some() {}
    ua.timeout_in(t0 + Duration::from_secs(80));
    assert!(std::iter::from_fn(|| ua.next_transmit()).all(|(_, b)| !b.starts_with(b"SIP/2.0 200")));
}

#[test]
fn an_incoming_call_rings_is_answered_and_its_200_repeats_until_the_ack() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
    ua.datagram_in(t0, server(), &incoming_invite("z9hG4bKin1"));
    let out = sent(&mut ua);
    assert!(out[0].starts_with("SIP/2.0 100"), "{out:?}");
    let Some(UaEvent::Incoming {
        key,
        user,
        from,
        to,
        caller,
        call_data,
        auto_answer,
        sdp,
    }) = ua.next_event()
    else {
        panic!("an incoming call event");
    };
    assert!(call_data.is_empty(), "{call_data:?}");
    assert_eq!(auto_answer, None);
    assert_eq!(caller.display_name.as_deref(), Some("Caller"));
    assert_eq!(caller.identity_uri, "sip:2000@pbx.example");
    assert!(!caller.asserted);
    assert_eq!(
        (user.as_str(), from.as_str(), to.as_str()),
        ("1001", "2000", "1001")
    );
    assert!(sdp.unwrap().contains("m=audio 4000"));
    ua.ring_in(t0, &key);
    let out = sent(&mut ua);
    assert!(
        out[0].starts_with("SIP/2.0 180") && out[0].contains(";tag="),
        "{out:?}"
    );
    // The INVITE again: the 180 again, no second call.
    ua.datagram_in(t0, server(), &incoming_invite("z9hG4bKin1"));
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 180"));
    assert_eq!(ua.next_event(), None);
    ua.handle_input(
        t0,
        UaInput::Accept {
            key: key.clone(),
            sdp: "v=0 answer\r\n".into(),
            headers: vec![("X-Agent-Id".into(), "7".into())],
        },
    );
    let ok = sent(&mut ua);
    assert!(
        ok[0].starts_with("SIP/2.0 200") && ok[0].ends_with("v=0 answer\r\n"),
        "{ok:?}"
    );
    assert_eq!(
        header_line(&ok[0], "X-Agent-Id"),
        Some("X-Agent-Id: 7"),
        "the page's call data"
    );
    let tag = ok[0]
        .lines()
        .find(|l| l.starts_with("To:"))
        .and_then(|l| l.split("tag=").nth(1))
        .unwrap()
        .to_string();
    // No ACK: the 200 goes again after T1, then 2·T1.
    ua.timeout_in(t0 + Duration::from_millis(500));
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
    ua.timeout_in(t0 + Duration::from_millis(1400));
    assert_eq!(sent(&mut ua).len(), 0);
    ua.timeout_in(t0 + Duration::from_millis(1500));
    assert_eq!(sent(&mut ua).len(), 1);
    let ack = format!(
            "ACK sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKack\r\n\
             From: <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>;tag={tag}\r\n\
             Call-ID: in-1@pbx\r\nCSeq: 7 ACK\r\nContent-Length: 0\r\n\r\n"
        );
    ua.datagram_in(t0 + Duration::from_millis(1600), server(), ack.as_bytes());
    ua.timeout_in(t0 + Duration::from_secs(10));
    assert!(
        sent(&mut ua).iter().all(|m| !m.starts_with("SIP/2.0 200")),
        "the ACK stopped it"
    );
    // The caller hangs up.
    let bye = ack
        .replace("ACK sip", "BYE sip")
        .replace("CSeq: 7 ACK", "CSeq: 8 BYE")
        .replace("z9hG4bKack", "z9hG4bKbye");
    ua.datagram_in(t0 + Duration::from_secs(11), server(), bye.as_bytes());
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key,
            event: DialogEvent::RemoteBye
        })
    );
    assert_eq!(ua.call_count(), 0);
}

/// An incoming INVITE (`branch`) answered with `sdp`: the call's key and
/// our To tag.
fn answered_incoming_call(
    ua: &mut UserAgent,
    t0: Instant,
    branch: &str,
    sdp: &str,
) -> (String, String) {
    ua.datagram_in(t0, server(), &incoming_invite(branch));
    sent(ua);
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("an incoming call event");
    };
    ua.accept_in(t0, &key, sdp.into());
    let ok = sent(ua);
    let tag = ok[0]
        .lines()
        .find(|l| l.starts_with("To:"))
        .and_then(|l| l.split("tag=").nth(1))
        .unwrap()
        .to_string();
    (key, tag)
}

/// The far end's re-INVITE with an offer waits for the call's answer (a
/// 100 now, its resends absorbed); the answer's 200 repeats until its ACK.
/// A re-INVITE without SDP gets our offer and its ACK's answer is handed
/// on; an UPDATE without SDP is answered at once.
#[test]
fn the_far_ends_offers_in_the_dialog_wait_for_the_calls_answer() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
    let (key, tag) = answered_incoming_call(
        &mut ua,
        t0,
        "z9hG4bKin1",
        "v=0\r\no=- 5 1 IN IP4 192.0.2.10\r\nm=audio 1 RTP/AVP 0\r\n",
    );
    let request = |method: &str, cseq: u32, branch: &str, body: &str| {
        format!(
            "{method} sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
             From: <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>;tag={tag}\r\n\
             Call-ID: in-1@pbx\r\nCSeq: {cseq} {method}\r\nContact: <sip:2000@192.0.2.1:5060>\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    ua.datagram_in(t0, server(), request("ACK", 7, "z9hG4bKa7", "").as_bytes());
    assert_eq!(ua.next_event(), None, "an ACK to our answer brings nothing");

    let offer = "v=0\r\nm=audio 4002 RTP/AVP 0\r\n";
    let reinvite = request("INVITE", 8, "z9hG4bKre8", offer);
    ua.datagram_in(t0, server(), reinvite.as_bytes());
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key: key.clone(),
            event: DialogEvent::Offer {
                sdp: Some(offer.into())
            }
        })
    );
    ua.datagram_in(t0, server(), reinvite.as_bytes());
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
    assert_eq!(ua.next_event(), None, "a resend is no new offer");
    let answer = "v=0\r\no=- 99 1 IN IP4 192.0.2.10\r\nm=audio 2 RTP/AVP 0\r\n";
    ua.handle_input(
        t0,
        UaInput::AnswerOffer {
            key: key.clone(),
            answer: Ok(answer.into()),
        },
    );
    let ok = sent(&mut ua);
    assert!(
        ok[0].starts_with("SIP/2.0 200") && ok[0].contains("CSeq: 8 INVITE"),
        "{ok:?}"
    );
    assert!(
        ok[0].ends_with("o=- 5 2 IN IP4 192.0.2.10\r\nm=audio 2 RTP/AVP 0\r\n"),
        "{ok:?}"
    );
    let t1 = t0 + Duration::from_millis(500);
    ua.timeout_in(t1);
    assert!(
        sent(&mut ua)[0].starts_with("SIP/2.0 200"),
        "resent until the ACK"
    );
    ua.datagram_in(t1, server(), request("ACK", 8, "z9hG4bKa8", "").as_bytes());
    ua.timeout_in(t0 + Duration::from_secs(5));
    assert!(sent(&mut ua).is_empty(), "the ACK stopped it");

    // A re-INVITE without SDP: our offer in the 200, the answer in the ACK.
    ua.datagram_in(
        t1,
        server(),
        request("INVITE", 9, "z9hG4bKre9", "").as_bytes(),
    );
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
    assert!(matches!(
        ua.next_event(),
        Some(UaEvent::Call {
            event: DialogEvent::Offer { sdp: None },
            ..
        })
    ));
    ua.handle_input(
        t1,
        UaInput::AnswerOffer {
            key: key.clone(),
            answer: Ok(answer.into()),
        },
    );
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
    let their_answer = "v=0\r\nm=audio 4004 RTP/AVP 0\r\n";
    ua.datagram_in(
        t1,
        server(),
        request("ACK", 9, "z9hG4bKa9", their_answer).as_bytes(),
    );
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key: key.clone(),
            event: DialogEvent::AckAnswer {
                sdp: Some(their_answer.into())
            }
        })
    );
    // An UPDATE without SDP: 200 at once, nothing for the call.
    ua.datagram_in(
        t1,
        server(),
        request("UPDATE", 10, "z9hG4bKu10", "").as_bytes(),
    );
    let ok = sent(&mut ua);
    assert!(
        ok[0].starts_with("SIP/2.0 200") && ok[0].contains("CSeq: 10 UPDATE"),
        "{ok:?}"
    );
    assert_eq!(ua.next_event(), None);
    // A refused offer: 488, and the dialog goes on.
    ua.datagram_in(
        t1,
        server(),
        request("UPDATE", 11, "z9hG4bKu11", offer).as_bytes(),
    );
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
    ua.next_event();
    ua.handle_input(
        t1,
        UaInput::AnswerOffer {
            key,
            answer: Err(488),
        },
    );
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 488"));
    assert_eq!(ua.call_count(), 1);
}

/// A 407 to our INVITE is answered once with Proxy-Authorization (next
/// CSeq, new branch); a second refusal of the same kind ends the call.
#[test]
fn a_challenged_invite_is_sent_again_with_our_answer() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
    ua.handle_input(
        t0,
        UaInput::Invite {
            key: "c1".into(),
            user: "1001".into(),
            to: "2000".into(),
            sdp: "v=0\r\n".into(),
            password: Some("secret".into()),
            caller: OutgoingCaller {
                display_name: Some("Agent \"7\" \\ Desk".into()),
                identity_header: Some("P-Asserted-Identity"),
                headers: vec![("User-to-User".into(), "00ff;encoding=hex".into())],
            },
        },
    );
    let first = sent(&mut ua).remove(0);
    // The session's display name, quoted and escaped, in From and in the
    // identity header `[sip] asserted-identity` names.
    let ours = "\"Agent \\\"7\\\" \\\\ Desk\" <sip:1001@pbx.example>";
    assert_eq!(
        header_line(&first, "From").map(|l| l.split(";tag=").next().unwrap_or(l)),
        Some(format!("From: {ours}").as_str()),
        "{first}"
    );
    assert_eq!(
        header_line(&first, "P-Asserted-Identity"),
        Some(format!("P-Asserted-Identity: {ours}").as_str())
    );
    assert_eq!(
        header_line(&first, "User-to-User"),
        Some("User-to-User: 00ff;encoding=hex")
    );
    let challenge = "Proxy-Authenticate: Digest realm=\"pbx\", nonce=\"n1\", qop=\"auth\"\r\n";
    ua.datagram_in(
        t0,
        server(),
        &answer(
            first.as_bytes(),
            "407 Proxy Authentication Required",
            challenge,
        ),
    );
    let out = sent(&mut ua);
    let again = out
        .iter()
        .find(|m| m.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(
        out.iter().any(|m| m.starts_with("ACK ")),
        "the 407 is ACKed: {out:?}"
    );
    assert!(again.contains("CSeq: 2 INVITE"), "{again}");
    assert!(
        again.contains("Proxy-Authorization: Digest username=\"1001\", realm=\"pbx\""),
        "{again}"
    );
    assert!(
        std::iter::from_fn(|| ua.next_event()).all(|e| matches!(e, UaEvent::ServerReachable(_))),
        "the call goes on"
    );
    // A 401 from another hop is answered too, in Authorization.
    let www = challenge.replace("Proxy-Authenticate", "WWW-Authenticate");
    ua.datagram_in(
        t0,
        server(),
        &answer(again.as_bytes(), "401 Unauthorized", &www),
    );
    let third = sent(&mut ua)
        .into_iter()
        .find(|m| m.starts_with("INVITE "))
        .expect("the INVITE again");
    assert!(third.contains("CSeq: 3 INVITE") && third.contains("\r\nAuthorization: Digest"));
    let again = third;
    // Refused again: the call ends with the 407.
    ua.datagram_in(
        t0,
        server(),
        &answer(
            again.as_bytes(),
            "407 Proxy Authentication Required",
            challenge,
        ),
    );
    sent(&mut ua);
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key: "c1".into(),
            event: DialogEvent::Failed { status: Some(407) }
        })
    );
}

/// RFC 3261 §18.1.1: over UDP an INVITE above 1300 bytes goes over TCP
/// (its Via says TCP, no retransmissions); when TCP cannot be had it
/// goes again over UDP with retransmissions. Small requests stay on UDP.
#[test]
fn a_large_request_goes_over_tcp_and_back_to_udp_if_it_must() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
    ua.invite_in(t0, "small", "1001", "2000", "v=0\r\n".into());
    let (_, small) = ua.next_transmit().unwrap();
    assert!(String::from_utf8_lossy(&small).contains("Via: SIP/2.0/UDP "));
    assert_eq!(ua.next_stream_transmit(), None);

    let sdp = format!("v=0\r\n{}", "a=x-filler:0123456789abcdef\r\n".repeat(60));
    ua.invite_in(t0, "large", "1001", "2000", sdp);
    assert_eq!(ua.next_transmit(), None, "nothing large over UDP");
    let (to, large) = ua.next_stream_transmit().unwrap();
    assert_eq!(Some(to), ua.server());
    assert!(large.len() > UDP_REQUEST_LIMIT);
    let text = String::from_utf8_lossy(&large).to_string();
    assert!(text.contains("Via: SIP/2.0/TCP "), "{text}");
    // Reliable: no timer A retransmission.
    ua.timeout_in(t0 + Duration::from_millis(600));
    assert_eq!(ua.next_stream_transmit(), None);
    let again: Vec<_> = std::iter::from_fn(|| ua.next_transmit())
        .map(|(_, b)| String::from_utf8_lossy(&b).to_string())
        .collect();
    assert!(again.iter().all(|m| !m.contains("x-filler")), "{again:?}");
    // No TCP to be had: over UDP, same branch, retransmitted.
    let t1 = t0 + Duration::from_secs(1);
    ua.stream_failed_in(t1);
    let (_, udp) = ua.next_transmit().unwrap();
    let udp = String::from_utf8_lossy(&udp).to_string();
    assert!(udp.contains("Via: SIP/2.0/UDP ") && udp.contains("x-filler"));
    let branch = |m: &str| m.split("branch=").nth(1).map(|b| b[..20].to_string());
    assert_eq!(branch(&udp), branch(&text));
    ua.timeout_in(t1 + Duration::from_millis(500));
    let (_, resent) = ua.next_transmit().unwrap();
    assert_eq!(String::from_utf8_lossy(&resent), udp);
}

/// Our BYE's answer, or its going unanswered, is about the call, not
/// about the server: reachability stays as the keepalive left it.
#[test]
fn our_bye_says_nothing_about_the_server() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
    let (key, tag) = answered_incoming_call(&mut ua, t0, "z9hG4bKin9", "v=0 answer\r\n");
    let ack = format!(
            "ACK sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKack9\r\n\
             From: <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>;tag={tag}\r\n\
             Call-ID: in-1@pbx\r\nCSeq: 7 ACK\r\nContent-Length: 0\r\n\r\n"
        );
    ua.datagram_in(t0, server(), ack.as_bytes());
    ua.hangup_in(t0, &key);
    let out = sent(&mut ua);
    assert!(out.iter().any(|m| m.starts_with("BYE ")), "{out:?}");
    // Nobody answers the BYE: timer F ends its transaction quietly.
    let mut now = t0;
    while let Some(at) = ua.next_wakeup() {
        now = at;
        ua.timeout_in(now);
        sent(&mut ua);
    }
    assert!(now >= t0 + Duration::from_secs(32));
    let events: Vec<_> = std::iter::from_fn(|| ua.next_event()).collect();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, UaEvent::ServerReachable(_))),
        "{events:?}"
    );
    assert_eq!(ua.call_count(), 0);
}

#[test]
fn a_cancelled_incoming_call_gets_487_and_unknown_dialogs_481() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
    ua.datagram_in(t0, server(), &incoming_invite("z9hG4bKin2"));
    sent(&mut ua);
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("an incoming call event");
    };
    let cancel = "CANCEL sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKin2\r\n\
             From: <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>\r\n\
             Call-ID: in-1@pbx\r\nCSeq: 7 CANCEL\r\nContent-Length: 0\r\n\r\n";
    ua.datagram_in(t0, server(), cancel.as_bytes());
    let out = sent(&mut ua);
    assert!(
        out[0].starts_with("SIP/2.0 200") && out[0].contains("CSeq: 7 CANCEL"),
        "{out:?}"
    );
    assert!(
        out[1].starts_with("SIP/2.0 487") && out[1].contains("CSeq: 7 INVITE"),
        "{out:?}"
    );
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key,
            event: DialogEvent::Failed { status: Some(487) }
        })
    );
    let stray = cancel
        .replace("CANCEL sip", "BYE sip")
        .replace(
            "To: <sip:1001@pbx.example>",
            "To: <sip:1001@pbx.example>;tag=nope",
        )
        .replace("CSeq: 7 CANCEL", "CSeq: 9 BYE")
        .replace("z9hG4bKin2", "z9hG4bKstray");
    ua.datagram_in(t0, server(), stray.as_bytes());
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 481"));
}

/// `poll_output` gives the datagrams first, then the events, then when to
/// wake; an empty user agent only names its next wake-up.
#[test]
fn poll_output_gives_transmits_then_events_then_the_timeout() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(3));
    ua.register_in(t0, "s1", "1001", None);
    let UaOutput::Transmit(register) = ua.poll_output() else {
        panic!("the REGISTER first");
    };
    assert_eq!(Some(register.to), ua.server());
    assert_eq!(register.over, Over::Link);
    assert_eq!(
        ua.poll_output(),
        UaOutput::Timeout(Some(t0 + Duration::from_millis(500))),
        "timer E"
    );
    let refused = answer(&register.data, "403 Forbidden", "");
    ua.datagram_in(t0, server(), &refused);
    assert_eq!(
        ua.poll_output(),
        UaOutput::Event(UaEvent::ServerReachable(true))
    );
    assert!(matches!(
        ua.poll_output(),
        UaOutput::Event(UaEvent::Registration { .. })
    ));
    // The transaction lingers (timer K) over UDP, then nothing is left.
    let UaOutput::Timeout(Some(linger)) = ua.poll_output() else {
        panic!("timer K");
    };
    ua.timeout_in(linger);
    assert_eq!(ua.poll_output(), UaOutput::Timeout(None));
}

/// A call between two users of this gateway comes back through the proxy
/// with our own Call-ID: two dialogs share it, and each in-dialog request
/// finds the one its To tag names.
#[test]
fn two_dialogs_with_one_call_id_are_told_apart() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(9));
    ua.invite_in(t0, "out", "1001", "1001", "v=0\r\n".into());
    let invite = String::from_utf8(ua.next_transmit().unwrap().1).unwrap();
    let call_id = invite
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .unwrap()
        .to_string();
    // The proxy brings our INVITE back to us, with its own Via on top.
    let looped = String::from_utf8(incoming_invite("z9hG4bKloop"))
        .unwrap()
        .replace("Call-ID: in-1@pbx", &format!("Call-ID: {call_id}"));
    ua.datagram_in(t0, server(), looped.as_bytes());
    let out = sent(&mut ua);
    assert!(out[0].starts_with("SIP/2.0 100"), "{out:?}");
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("the looped INVITE is an incoming call");
    };
    assert_eq!(ua.call_count(), 2);
    ua.accept_in(t0, &key, "v=0\r\n".into());
    let ok = sent(&mut ua).remove(0);
    let our_tag = ok
        .lines()
        .find_map(|l| l.strip_prefix("To: "))
        .and_then(|to| to.split("tag=").nth(1))
        .unwrap()
        .to_string();
    // A BYE for the outgoing dialog (its To tag is our INVITE's From tag)
    // ends that one only.
    let out_tag = invite
        .lines()
        .find_map(|l| l.strip_prefix("From: "))
        .and_then(|from| from.split("tag=").nth(1))
        .unwrap()
        .to_string();
    let bye_out = format!(
        "BYE sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbye0\r\n\
         From: <sip:1001@pbx.example>;tag=callee\r\nTo: <sip:1001@pbx.example>;tag={out_tag}\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    ua.datagram_in(t0, server(), bye_out.as_bytes());
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key: "out".into(),
            event: DialogEvent::RemoteBye
        })
    );
    assert_eq!(ua.call_count(), 1, "the incoming dialog is still there");
    // The caller's BYE for the incoming dialog ends that one.
    let bye = format!(
        "BYE sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKbye\r\n\
         From: \"Caller\" <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>;tag={our_tag}\r\n\
         Call-ID: {call_id}\r\nCSeq: 8 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    ua.datagram_in(t0, server(), bye.as_bytes());
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key,
            event: DialogEvent::RemoteBye
        })
    );
    assert_eq!(ua.call_count(), 0);
}

/// A 2xx to our INVITE that comes again after its transaction ended gets
/// its ACK again — only for a Call-ID that is exactly ours, not one that
/// merely contains it.
#[test]
fn a_late_2xx_is_acked_again_only_for_its_own_call_id() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(21));
    ua.invite_in(t0, "c1", "1001", "5000", "v=0\r\n".into());
    let invite = ua.next_transmit().unwrap().1;
    let ok = answer(&invite, "200 OK", "Contact: <sip:5000@192.0.2.1:5060>\r\n");
    let ok = String::from_utf8(ok).unwrap().replace(
        "To: <sip:5000@pbx.example>",
        "To: <sip:5000@pbx.example>;tag=far",
    );
    ua.datagram_in(t0, server(), ok.as_bytes());
    let acks = |ua: &mut UserAgent| sent(ua).iter().filter(|m| m.starts_with("ACK ")).count();
    assert_eq!(acks(&mut ua), 1, "the 200 is ACKed");
    ua.datagram_in(t0, server(), ok.as_bytes());
    assert_eq!(acks(&mut ua), 1, "a retransmitted 200: the ACK again");
    let call_id = ok
        .lines()
        .find_map(|l| l.strip_prefix("Call-ID: "))
        .unwrap()
        .to_string();
    let other = ok.replace(&call_id, &format!("x{call_id}"));
    ua.datagram_in(t0, server(), other.as_bytes());
    assert_eq!(acks(&mut ua), 0, "another call's 200 is not ours to ACK");
}

fn timed_cfg(expires_s: u32) -> UaConfig {
    UaConfig {
        session_timer: crate::sip::session_timer::SessionTimerConfig { expires_s },
        ..cfg(None)
    }
}

fn header_line<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.split("\r\n").find(|l| {
        l.to_ascii_lowercase()
            .starts_with(&format!("{}:", name.to_ascii_lowercase()))
    })
}

/// Our call asks for a session timer; a 422 raises it to the Min-SE; the
/// 200 makes us the refresher: an UPDATE at half the interval, and when a
/// refresh goes unanswered the call ends with BYE.
#[test]
fn our_session_timer_is_raised_by_422_refreshed_by_update_and_ends_unanswered() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(timed_cfg(1800), t0, Random::seeded(3));
    ua.invite_in(t0, "c1", "1001", "2000", "v=0\r\n".into());
    let first = sent(&mut ua).remove(0);
    assert_eq!(
        header_line(&first, "Supported"),
        Some("Supported: 100rel, timer, replaces")
    );
    assert_eq!(
        header_line(&first, "Session-Expires"),
        Some("Session-Expires: 1800")
    );
    ua.datagram_in(
        t0,
        server(),
        &answer(
            first.as_bytes(),
            "422 Session Interval Too Small",
            "Min-SE: 3600\r\n",
        ),
    );
    let again = sent(&mut ua)
        .into_iter()
        .find(|m| m.starts_with("INVITE "))
        .expect("the INVITE again");
    assert!(again.contains("CSeq: 2 INVITE"), "{again}");
    assert_eq!(
        header_line(&again, "Session-Expires"),
        Some("Session-Expires: 3600")
    );
    assert_eq!(header_line(&again, "Min-SE"), Some("Min-SE: 3600"));
    let ok = String::from_utf8(answer(
        again.as_bytes(),
        "200 OK",
        "Contact: <sip:2000@192.0.2.1:5060>\r\nAllow: INVITE, ACK, BYE, UPDATE\r\n\
         Require: timer\r\nSession-Expires: 3600;refresher=uac\r\n",
    ))
    .unwrap()
    .replace(
        "To: <sip:2000@pbx.example>",
        "To: <sip:2000@pbx.example>;tag=far",
    );
    ua.datagram_in(t0, server(), ok.as_bytes());
    assert!(sent(&mut ua).iter().any(|m| m.starts_with("ACK ")));
    while ua.next_event().is_some() {}
    ua.timeout_in(t0 + Duration::from_secs(1799));
    assert!(!sent(&mut ua).iter().any(|m| m.starts_with("UPDATE ")));

    // Half the interval: our refresh, by UPDATE (the far end allows it).
    let t1 = t0 + Duration::from_secs(1800);
    ua.timeout_in(t1);
    let update = sent(&mut ua).remove(0);
    assert!(
        update.starts_with("UPDATE sip:2000@192.0.2.1:5060 SIP/2.0"),
        "{update}"
    );
    assert_eq!(
        header_line(&update, "Session-Expires"),
        Some("Session-Expires: 3600;refresher=uac")
    );
    assert!(update.contains(";tag=far") && update.ends_with("Content-Length: 0\r\n\r\n"));
    ua.datagram_in(
        t1,
        server(),
        &answer(
            update.as_bytes(),
            "200 OK",
            "Session-Expires: 3600;refresher=uac\r\n",
        ),
    );
    assert_eq!(ua.next_event(), None);
    ua.timeout_in(t1 + Duration::from_secs(1799));
    assert!(
        sent(&mut ua).is_empty(),
        "the clock started again at the 200"
    );

    // The next refresh goes unanswered: the UPDATE times out (64·T1)
    // and the session is over.
    let t2 = t1 + Duration::from_secs(1800);
    ua.timeout_in(t2);
    assert!(sent(&mut ua)[0].starts_with("UPDATE "));
    let mut now = t2;
    while let Some(at) = ua.next_wakeup() {
        if at > t2 + Duration::from_secs(40) {
            break;
        }
        now = at;
        ua.timeout_in(now);
        if ua.call_count() == 0 {
            break;
        }
    }
    let out = sent(&mut ua);
    assert!(out.iter().any(|m| m.starts_with("BYE ")), "{out:?}");
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key: "c1".into(),
            event: DialogEvent::SessionExpired
        })
    );
    assert_eq!(ua.call_count(), 0);
    assert!(now <= t2 + Duration::from_secs(33));
}

fn incoming_invite_with(branch: &str, extra: &str) -> Vec<u8> {
    let plain = String::from_utf8(incoming_invite(branch)).unwrap();
    plain
        .replacen("Content-Type:", &format!("{extra}Content-Type:"), 1)
        .into_bytes()
}

/// The far end asks for 90 s and refreshes itself: our 200 says so; its
/// refresh starts the clock again; when the next never comes, BYE a third
/// of the interval before its end. An interval below 90 s gets 422.
#[test]
fn the_far_ends_session_timer_is_honoured_and_its_missing_refresh_ends_the_call() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(timed_cfg(1800), t0, Random::seeded(4));
    ua.datagram_in(
        t0,
        server(),
        &incoming_invite_with(
            "z9hG4bKbrief",
            "Supported: timer\r\nSession-Expires: 30\r\n",
        ),
    );
    let refusal = sent(&mut ua).pop().unwrap();
    assert!(refusal.starts_with("SIP/2.0 422"), "{refusal}");
    assert_eq!(header_line(&refusal, "Min-SE"), Some("Min-SE: 90"));
    assert_eq!(ua.next_event(), None, "no call for a refused INVITE");

    let invite = incoming_invite_with(
        "z9hG4bKst1",
        "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n",
    );
    ua.datagram_in(t0, server(), &invite);
    sent(&mut ua);
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("an incoming call");
    };
    ua.accept_in(t0, &key, "v=0\r\no=- 5 1 IN IP4 192.0.2.10\r\n".into());
    let ok = sent(&mut ua).remove(0);
    assert_eq!(
        header_line(&ok, "Session-Expires"),
        Some("Session-Expires: 90;refresher=uac")
    );
    assert_eq!(header_line(&ok, "Require"), Some("Require: timer"));
    let tag = header_line(&ok, "To")
        .and_then(|l| l.split("tag=").nth(1))
        .unwrap()
        .to_string();
    let request = |method: &str, cseq: u32, branch: &str, extra: &str| {
        format!(
            "{method} sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
             From: <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>;tag={tag}\r\n\
             Call-ID: in-1@pbx\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    };
    ua.datagram_in(t0, server(), request("ACK", 7, "z9hG4bKa7", "").as_bytes());

    // Its refresh at 50 s, by UPDATE: the clock starts again.
    let t1 = t0 + Duration::from_secs(50);
    ua.datagram_in(
        t1,
        server(),
        request(
            "UPDATE",
            8,
            "z9hG4bKu8",
            "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n",
        )
        .as_bytes(),
    );
    let ok = sent(&mut ua).remove(0);
    assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
    assert_eq!(
        header_line(&ok, "Session-Expires"),
        Some("Session-Expires: 90;refresher=uac")
    );
    // Nothing at the first deadline any more…
    ua.timeout_in(t0 + Duration::from_secs(60));
    assert_eq!(ua.call_count(), 1);
    // …but none comes by the second: BYE.
    ua.timeout_in(t1 + Duration::from_secs(59));
    assert_eq!(ua.call_count(), 1);
    ua.timeout_in(t1 + Duration::from_secs(60));
    let out = sent(&mut ua);
    assert!(out.iter().any(|m| m.starts_with("BYE ")), "{out:?}");
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key,
            event: DialogEvent::SessionExpired
        })
    );
}

/// A far end without timer support and our interval on: we refresh, by
/// re-INVITE with our SDP unchanged when it does not list UPDATE; a 200
/// without Session-Expires turns the timer off.
#[test]
fn we_refresh_a_far_end_without_timer_support_by_reinvite() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(timed_cfg(600), t0, Random::seeded(5));
    ua.datagram_in(t0, server(), &incoming_invite("z9hG4bKst2"));
    sent(&mut ua);
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("an incoming call");
    };
    let our_sdp = "v=0\r\no=- 5 1 IN IP4 192.0.2.10\r\nm=audio 1 RTP/AVP 0\r\n";
    ua.accept_in(t0, &key, our_sdp.into());
    let ok = sent(&mut ua).remove(0);
    assert_eq!(
        header_line(&ok, "Session-Expires"),
        Some("Session-Expires: 600;refresher=uas")
    );
    assert_eq!(
        header_line(&ok, "Require"),
        None,
        "it did not say it supports timers"
    );
    let t1 = t0 + Duration::from_secs(300);
    ua.timeout_in(t1);
    let out = sent(&mut ua);
    let reinvite = out
        .iter()
        .find(|m| m.starts_with("INVITE "))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(reinvite.starts_with("INVITE sip:2000@192.0.2.1:5060 SIP/2.0"));
    assert_eq!(
        header_line(reinvite, "Session-Expires"),
        Some("Session-Expires: 600;refresher=uac")
    );
    assert!(
        reinvite.ends_with(our_sdp),
        "our SDP, unchanged: {reinvite}"
    );
    ua.datagram_in(t1, server(), &answer(reinvite.as_bytes(), "200 OK", ""));
    assert!(sent(&mut ua).iter().any(|m| m.starts_with("ACK ")));
    assert_eq!(ua.next_event(), None, "a refresh is no hold");
    // Its 200 named no interval: no more refreshes, no expiry.
    assert_eq!(
        ua.next_wakeup()
            .filter(|at| *at > t1 + Duration::from_secs(40)),
        None
    );
    assert_eq!(ua.call_count(), 1);
}

/// RFC 3262 as caller: a reliable 183 with SDP is PRACKed in its early
/// dialog (RAck naming its RSeq and our INVITE; its Contact as target),
/// its resend is not PRACKed twice nor reported twice, and the ACK of the
/// 200 still carries the INVITE's CSeq.
#[test]
fn a_reliable_provisional_is_pracked_once_and_the_ack_keeps_the_invites_cseq() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(6));
    ua.invite_in(t0, "c1", "1001", "2000", "v=0\r\n".into());
    let invite = sent(&mut ua).remove(0);
    assert_eq!(
        header_line(&invite, "Supported"),
        Some("Supported: 100rel, timer, replaces")
    );
    let early = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4000 RTP/AVP 0\r\n";
    let progress = String::from_utf8(answer(
        invite.as_bytes(),
        "183 Session Progress",
        "Contact: <sip:2000@192.0.2.1:5090>\r\nRequire: 100rel\r\nRSeq: 77\r\n\
         Content-Type: application/sdp\r\n",
    ))
    .unwrap()
    .replace(
        "To: <sip:2000@pbx.example>",
        "To: <sip:2000@pbx.example>;tag=far",
    )
    .replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Length: {}\r\n\r\n{early}", early.len()),
    );
    ua.datagram_in(t0, server(), progress.as_bytes());
    let prack = sent(&mut ua).remove(0);
    assert!(
        prack.starts_with("PRACK sip:2000@192.0.2.1:5090 SIP/2.0"),
        "{prack}"
    );
    assert_eq!(header_line(&prack, "RAck"), Some("RAck: 77 1 INVITE"));
    assert!(prack.contains("CSeq: 2 PRACK") && prack.contains(";tag=far"));
    assert_eq!(ua.next_event(), Some(UaEvent::ServerReachable(true)));
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key: "c1".into(),
            event: DialogEvent::Progress {
                status: 183,
                sdp: Some(early.into())
            }
        })
    );
    // The 183 again (our PRACK was slow): nothing new.
    ua.datagram_in(t0, server(), progress.as_bytes());
    assert!(sent(&mut ua).iter().all(|m| !m.starts_with("PRACK")));
    assert_eq!(ua.next_event(), None);
    ua.datagram_in(t0, server(), &answer(prack.as_bytes(), "200 OK", ""));
    // The switch moves its early media by UPDATE (RFC 3311: the early
    // offer/answer is complete): the call answers it.
    let moved = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 4010 RTP/AVP 0\r\n";
    let update = format!(
        "UPDATE sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKup1\r\n\
         From: <sip:2000@pbx.example>;tag=far\r\n{to}\r\n{call_id}\r\nCSeq: 5 UPDATE\r\n\
         Contact: <sip:2000@192.0.2.1:5090>\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{moved}",
        moved.len(),
        to = header_line(&invite, "From").unwrap().replacen("From:", "To:", 1),
        call_id = header_line(&invite, "Call-ID").unwrap(),
    );
    ua.datagram_in(t0, server(), update.as_bytes());
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key: "c1".into(),
            event: DialogEvent::Offer {
                sdp: Some(moved.into())
            }
        })
    );
    ua.handle_input(
        t0,
        UaInput::AnswerOffer {
            key: "c1".into(),
            answer: Ok("v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\nm=audio 2 RTP/AVP 0\r\n".into()),
        },
    );
    let ok = sent(&mut ua).remove(0);
    assert!(
        ok.starts_with("SIP/2.0 200") && ok.contains("CSeq: 5 UPDATE"),
        "{ok}"
    );
    assert!(ok.ends_with("m=audio 2 RTP/AVP 0\r\n"), "{ok}");
    // The answer-less 200 after the early answer.
    let ok = String::from_utf8(answer(
        invite.as_bytes(),
        "200 OK",
        "Contact: <sip:2000@192.0.2.1:5090>\r\n",
    ))
    .unwrap()
    .replace(
        "To: <sip:2000@pbx.example>",
        "To: <sip:2000@pbx.example>;tag=far",
    );
    ua.datagram_in(t0, server(), ok.as_bytes());
    let out = sent(&mut ua);
    let ack = out
        .iter()
        .find(|m| m.starts_with("ACK "))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert!(ack.contains("CSeq: 1 ACK"), "{ack}");
    assert!(std::iter::from_fn(|| ua.next_event()).any(|e| e
        == UaEvent::Call {
            key: "c1".into(),
            event: DialogEvent::Answered { sdp: String::new() }
        }));
}

/// RFC 3262 as callee: an INVITE that requires 100rel gets a reliable 180
/// (RSeq, Require), resent until its PRACK, which gets 200; a PRACK naming
/// another RSeq gets 481. An INVITE requiring an extension we lack gets
/// 420 naming it.
#[test]
fn a_caller_requiring_100rel_gets_a_reliable_180_resent_until_its_prack() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(7));
    ua.datagram_in(
        t0,
        server(),
        &incoming_invite_with("z9hG4bKext", "Require: 100rel, foo\r\n"),
    );
    let refusal = sent(&mut ua).pop().unwrap();
    assert!(refusal.starts_with("SIP/2.0 420"), "{refusal}");
    assert_eq!(
        header_line(&refusal, "Unsupported"),
        Some("Unsupported: foo")
    );
    assert_eq!(ua.next_event(), None);

    ua.datagram_in(
        t0,
        server(),
        &incoming_invite_with("z9hG4bKrel", "Supported: timer\r\nRequire: 100rel\r\n"),
    );
    sent(&mut ua);
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("an incoming call");
    };
    ua.ring_in(t0, &key);
    let ringing = sent(&mut ua).remove(0);
    assert!(ringing.starts_with("SIP/2.0 180"), "{ringing}");
    assert_eq!(header_line(&ringing, "Require"), Some("Require: 100rel"));
    let rseq: u32 = header_line(&ringing, "RSeq")
        .and_then(|l| l.split(':').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .expect("an RSeq");
    assert!(header_line(&ringing, "Contact").is_some());
    let tag = header_line(&ringing, "To")
        .and_then(|l| l.split("tag=").nth(1))
        .unwrap()
        .to_string();
    ua.timeout_in(t0 + Duration::from_millis(500));
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 180"), "resent");
    let prack = |rseq: u32, branch: &str| {
        format!(
            "PRACK sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
             From: \"Caller\" <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>;tag={tag}\r\n\
             Call-ID: in-1@pbx\r\nCSeq: 8 PRACK\r\nRAck: {rseq} 7 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    ua.datagram_in(t0, server(), prack(rseq + 5, "z9hG4bKp0").as_bytes());
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 481"));
    ua.datagram_in(t0, server(), prack(rseq, "z9hG4bKp1").as_bytes());
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
    ua.timeout_in(t0 + Duration::from_secs(10));
    assert!(
        !sent(&mut ua).iter().any(|m| m.starts_with("SIP/2.0 180")),
        "the PRACK stopped the resends"
    );
    assert_eq!(ua.call_count(), 1);
}

/// The RSeq of a reliable provisional.
fn rseq_of(response: &str) -> u32 {
    header_line(response, "RSeq")
        .and_then(|l| l.split(':').nth(1))
        .and_then(|n| n.trim().parse().ok())
        .expect("an RSeq")
}

/// The caller's PRACK for our reliable provisional `rseq` (INVITE CSeq 7)
/// in the early dialog our `to_tag` made.
fn prack_for(to_tag: &str, rseq: u32, cseq: u32) -> Vec<u8> {
    format!(
        "PRACK sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKpr{cseq}\r\n\
         From: \"Caller\" <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>;tag={to_tag}\r\n\
         Call-ID: in-1@pbx\r\nCSeq: {cseq} PRACK\r\nRAck: {rseq} 7 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

fn to_tag_of(response: &str) -> String {
    header_line(response, "To")
        .and_then(|l| l.split("tag=").nth(1))
        .expect("a To tag")
        .to_string()
}

const OUR_EARLY_SDP: &str =
    "v=0\r\no=- 42 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n";

/// Early media from the browser toward a caller requiring 100rel: our 183
/// waits for the PRACK of the reliable 180 (one unacknowledged at a time),
/// then goes reliably with our SDP; once it is PRACKed the caller's UPDATE
/// may offer in the early dialog; our 200 repeats the SDP agreed last.
#[test]
fn our_183_waits_its_turn_and_its_prack_opens_the_early_dialog() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(8));
    ua.datagram_in(
        t0,
        server(),
        &incoming_invite_with("z9hG4bKem", "Require: 100rel\r\n"),
    );
    sent(&mut ua);
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("an incoming call");
    };
    ua.ring_in(t0, &key);
    let ringing = sent(&mut ua).remove(0);
    let (rseq, tag) = (rseq_of(&ringing), to_tag_of(&ringing));
    ua.progress_in(t0, &key, OUR_EARLY_SDP);
    assert!(
        sent(&mut ua).is_empty(),
        "the 183 waits for the 180's PRACK"
    );

    ua.datagram_in(t0, server(), &prack_for(&tag, rseq, 8));
    let out = sent(&mut ua);
    assert!(
        out[0].starts_with("SIP/2.0 200") && out[0].contains("PRACK"),
        "{out:?}"
    );
    let progress = out.get(1).expect("our 183 now");
    assert!(progress.starts_with("SIP/2.0 183"), "{progress}");
    assert_eq!(header_line(progress, "Require"), Some("Require: 100rel"));
    assert_eq!(rseq_of(progress), rseq + 1);
    assert!(progress.ends_with(OUR_EARLY_SDP), "{progress}");
    ua.timeout_in(t0 + Duration::from_millis(500));
    assert!(
        sent(&mut ua)[0].starts_with("SIP/2.0 183"),
        "resent until its PRACK"
    );

    let update = |branch: &str, cseq: u32| {
        let sdp = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.77\r\nt=0 0\r\nm=audio 4100 RTP/AVP 0\r\n";
        format!(
            "UPDATE sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
             From: \"Caller\" <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>;tag={tag}\r\n\
             Call-ID: in-1@pbx\r\nCSeq: {cseq} UPDATE\r\nContact: <sip:2000@192.0.2.1:5060>\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
        .into_bytes()
    };
    ua.datagram_in(t0, server(), &update("z9hG4bKup1", 9));
    assert!(
        sent(&mut ua)[0].starts_with("SIP/2.0 500"),
        "no offer before our 183's answer is acknowledged"
    );
    ua.datagram_in(t0, server(), &prack_for(&tag, rseq + 1, 10));
    let out = sent(&mut ua);
    assert_eq!(
        out.len(),
        1,
        "only the PRACK's 200: nobody answered yet: {out:?}"
    );
    ua.timeout_in(t0 + Duration::from_secs(5));
    assert!(
        !sent(&mut ua).iter().any(|m| m.starts_with("SIP/2.0 183")),
        "the PRACK stopped the resends"
    );

    ua.datagram_in(t0, server(), &update("z9hG4bKup2", 11));
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
    assert!(matches!(
        ua.next_event(),
        Some(UaEvent::Call {
            event: DialogEvent::Offer { sdp: Some(_) },
            ..
        })
    ));
    let moved = OUR_EARLY_SDP.replace("30000", "30002");
    ua.handle_input(
        t0,
        UaInput::AnswerOffer {
            key: key.clone(),
            answer: Ok(moved.clone()),
        },
    );
    let updated = sent(&mut ua).remove(0);
    assert!(
        updated.starts_with("SIP/2.0 200") && updated.contains("UPDATE"),
        "{updated}"
    );
    assert!(updated.contains("m=audio 30002"), "{updated}");

    ua.accept_in(t0, &key, OUR_EARLY_SDP.into());
    let ok = sent(&mut ua).remove(0);
    assert!(
        ok.starts_with("SIP/2.0 200") && ok.contains("INVITE"),
        "{ok}"
    );
    assert!(
        ok.contains("m=audio 30002") && ok.contains("o=- 42 2 "),
        "the SDP agreed last: {ok}"
    );
}

/// A caller without 100rel gets a plain 183 with our SDP, and the 200 at
/// once. One that supports it but never PRACKs our reliable 183 keeps our
/// 200 waiting, then gets a 5xx after 64·T1 (RFC 3262 §3): the call fails.
#[test]
fn our_183_goes_plain_without_100rel_and_an_unpracked_one_ends_the_call() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(9));
    ua.datagram_in(t0, server(), &incoming_invite("z9hG4bKplain"));
    sent(&mut ua);
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("an incoming call");
    };
    ua.progress_in(t0, &key, OUR_EARLY_SDP);
    let progress = sent(&mut ua).remove(0);
    assert!(progress.starts_with("SIP/2.0 183"), "{progress}");
    assert!(
        header_line(&progress, "RSeq").is_none() && header_line(&progress, "Require").is_none()
    );
    assert!(header_line(&progress, "Contact").is_some());
    assert!(progress.ends_with(OUR_EARLY_SDP));
    ua.accept_in(t0, &key, "ignored".into());
    let ok = sent(&mut ua).remove(0);
    assert!(
        ok.starts_with("SIP/2.0 200") && ok.ends_with(OUR_EARLY_SDP),
        "{ok}"
    );

    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(10));
    ua.datagram_in(
        t0,
        server(),
        &incoming_invite_with("z9hG4bKnoprack", "Supported: 100rel\r\n"),
    );
    sent(&mut ua);
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("an incoming call");
    };
    ua.progress_in(t0, &key, OUR_EARLY_SDP);
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 183"));
    ua.accept_in(t0, &key, OUR_EARLY_SDP.into());
    let mut now = t0;
    let mut refusal = None;
    while now < t0 + Duration::from_secs(40) && refusal.is_none() {
        now += Duration::from_millis(250);
        ua.timeout_in(now);
        let out = sent(&mut ua);
        assert!(
            !out.iter().any(|m| m.starts_with("SIP/2.0 200")),
            "no 200 before the 183's PRACK: {out:?}"
        );
        refusal = out.into_iter().find(|m| m.starts_with("SIP/2.0 500"));
    }
    assert!(refusal.is_some(), "a 5xx once the resends give up");
    assert!(now >= t0 + Duration::from_secs(32), "{:?}", now - t0);
    assert_eq!(
        ua.next_event(),
        Some(UaEvent::Call {
            key: key.clone(),
            event: DialogEvent::Failed { status: None }
        })
    );
    assert_eq!(ua.call_count(), 0);
}

/// The far end's in-dialog request of an answered incoming call (its To
/// carries our `tag`).
fn in_dialog_request(method: &str, cseq: u32, tag: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} sip:1001@192.0.2.10:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{method}{cseq}\r\n\
         From: <sip:2000@pbx.example>;tag=c1\r\nTo: <sip:1001@pbx.example>;tag={tag}\r\n\
         Call-ID: in-1@pbx\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn call_event(ua: &mut UserAgent) -> Option<DialogEvent> {
    loop {
        match ua.next_event() {
            Some(UaEvent::Call { event, .. }) => return Some(event),
            Some(UaEvent::ServerReachable(_)) => continue,
            other => panic!("a call event, not {other:?}"),
        }
    }
}

/// The value of a message's first `name` header.
fn header_value<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    header_line(message, name)
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim())
}

/// A blind transfer: our REFER names the target and us, its 202 is
/// "accepted", the NOTIFYs' sipfrags are its progress (each answered 200),
/// and the final one its success; a second REFER waits for none of that.
/// A NOTIFY of a transfer we never asked for gets 481, an unknown event 489.
#[test]
fn a_blind_transfer_follows_the_refers_notifies() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(4));
    let (key, tag) = answered_incoming_call(&mut ua, t0, "z9hG4bKin1", "v=0\r\n");
    let stray = in_dialog_request(
        "NOTIFY",
        8,
        &tag,
        "Event: refer\r\nSubscription-State: active\r\nContent-Type: message/sipfrag\r\n",
        "SIP/2.0 100 Trying\r\n",
    );
    ua.datagram_in(t0, server(), &stray);
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 481"));
    let presence = in_dialog_request("NOTIFY", 9, &tag, "Event: presence\r\n", "");
    ua.datagram_in(t0, server(), &presence);
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 489"));

    ua.handle_input(
        t0,
        UaInput::Transfer {
            key: key.clone(),
            target: TransferTarget::To("5001".into()),
        },
    );
    let refer = sent(&mut ua).remove(0);
    assert!(
        refer.starts_with("REFER sip:2000@192.0.2.1:5060 SIP/2.0"),
        "{refer}"
    );
    assert_eq!(
        header_value(&refer, "Refer-To"),
        Some("<sip:5001@pbx.example>")
    );
    assert_eq!(
        header_value(&refer, "Referred-By"),
        Some("<sip:1001@pbx.example>")
    );
    assert!(header_value(&refer, "Contact").is_some(), "{refer}");
    ua.handle_input(
        t0,
        UaInput::Transfer {
            key: key.clone(),
            target: TransferTarget::To("5002".into()),
        },
    );
    assert!(sent(&mut ua).is_empty(), "one transfer at a time");
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::Transfer(TransferProgress::Failed(None)))
    );
    ua.datagram_in(t0, server(), &answer(refer.as_bytes(), "202 Accepted", ""));
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::Transfer(TransferProgress::Accepted))
    );
    let notify = |cseq: u32, state: &str, frag: &str| {
        in_dialog_request(
            "NOTIFY",
            cseq,
            &tag,
            &format!("Event: refer\r\nSubscription-State: {state}\r\nContent-Type: message/sipfrag;version=2.0\r\n"),
            frag,
        )
    };
    ua.datagram_in(
        t0,
        server(),
        &notify(10, "active;expires=60", "SIP/2.0 180 Ringing\r\n"),
    );
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::Transfer(TransferProgress::Trying(180)))
    );
    ua.datagram_in(
        t0,
        server(),
        &notify(11, "terminated;reason=noresource", "SIP/2.0 200 OK\r\n"),
    );
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::Transfer(TransferProgress::Succeeded))
    );
    ua.datagram_in(
        t0,
        server(),
        &notify(12, "terminated", "SIP/2.0 200 OK\r\n"),
    );
    assert!(
        sent(&mut ua)[0].starts_with("SIP/2.0 481"),
        "the transfer is over"
    );
    assert_eq!(ua.next_event(), None);
}

/// A refused REFER fails the transfer with its status and leaves the call
/// as it was; an attended transfer names the other call's dialog in a
/// Replaces inside Refer-To, tags as its far end sees them; a NOTIFY's
/// failure sipfrag fails it too.
#[test]
fn a_refused_transfer_and_an_attended_one() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(5));
    let (key, tag) = answered_incoming_call(&mut ua, t0, "z9hG4bKin1", "v=0\r\n");
    let target = |to: &str| TransferTarget::To(to.into());
    ua.handle_input(
        t0,
        UaInput::Transfer {
            key: key.clone(),
            target: target("5001"),
        },
    );
    let refer = sent(&mut ua).remove(0);
    ua.datagram_in(t0, server(), &answer(refer.as_bytes(), "603 Declined", ""));
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::Transfer(TransferProgress::Failed(Some(603))))
    );
    assert_eq!(ua.call_count(), 1, "the call goes on");

    // The agent's consultation call, answered by 5001.
    ua.invite_in(t0, "consult", "1001", "5001", "v=0\r\n".into());
    let invite = sent(&mut ua).remove(0);
    let ok = String::from_utf8(answer(
        invite.as_bytes(),
        "200 OK",
        "Contact: <sip:5001@192.0.2.1:5060>\r\n",
    ))
    .unwrap()
    .replace(
        "To: <sip:5001@pbx.example>",
        "To: <sip:5001@pbx.example>;tag=far5",
    );
    ua.datagram_in(t0, server(), ok.as_bytes());
    sent(&mut ua);
    assert!(matches!(
        call_event(&mut ua),
        Some(DialogEvent::Answered { .. })
    ));
    let consult_call_id = header_value(&invite, "Call-ID").unwrap().to_string();
    let consult_tag = header_value(&invite, "From")
        .and_then(|f| f.split("tag=").nth(1))
        .unwrap()
        .to_string();

    ua.handle_input(
        t0,
        UaInput::Transfer {
            key: key.clone(),
            target: TransferTarget::Replacing(key.clone()),
        },
    );
    assert!(sent(&mut ua).is_empty(), "a call cannot replace itself");
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::Transfer(TransferProgress::Failed(None)))
    );
    ua.handle_input(
        t0,
        UaInput::Transfer {
            key: key.clone(),
            target: TransferTarget::Replacing("consult".into()),
        },
    );
    let refer = sent(&mut ua).remove(0);
    let escaped_call_id = consult_call_id.replace('@', "%40");
    assert_eq!(
        header_value(&refer, "Refer-To").map(str::to_string),
        Some(format!(
            "<sip:5001@pbx.example?Replaces={escaped_call_id}%3Bto-tag%3Dfar5%3Bfrom-tag%3D{consult_tag}>"
        ))
    );
    ua.datagram_in(t0, server(), &answer(refer.as_bytes(), "202 Accepted", ""));
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::Transfer(TransferProgress::Accepted))
    );
    let failed = in_dialog_request(
        "NOTIFY",
        8,
        &tag,
        "Event: refer\r\nSubscription-State: terminated\r\n",
        "SIP/2.0 486 Busy Here\r\n",
    );
    ua.datagram_in(t0, server(), &failed);
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::Transfer(TransferProgress::Failed(Some(486))))
    );
}

/// NOTIFY `Event: talk` / `Event: hold` (a switch's remote call control)
/// in a ringing or an answered call's dialog: 200 and the request handed on.
#[test]
fn remote_call_control_notifies_reach_the_call() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(6));
    ua.datagram_in(t0, server(), &incoming_invite("z9hG4bKin1"));
    sent(&mut ua);
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("an incoming call");
    };
    ua.ring_in(t0, &key);
    let ringing = sent(&mut ua).remove(0);
    let tag = header_value(&ringing, "To")
        .and_then(|t| t.split("tag=").nth(1))
        .unwrap()
        .to_string();
    ua.datagram_in(
        t0,
        server(),
        &in_dialog_request("NOTIFY", 8, &tag, "Event: talk\r\n", ""),
    );
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::RemoteControl(RemoteControl::Talk))
    );
    ua.accept_in(t0, &key, "v=0\r\n".into());
    sent(&mut ua);
    ua.datagram_in(
        t0,
        server(),
        &in_dialog_request("NOTIFY", 9, &tag, "Event: hold\r\n", ""),
    );
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::RemoteControl(RemoteControl::Hold))
    );
}

/// The next event that is not about the server's reachability.
fn no_server_event(ua: &mut UserAgent) -> Option<UaEvent> {
    std::iter::from_fn(|| ua.next_event()).find(|e| !matches!(e, UaEvent::ServerReachable(_)))
}

fn refer_cfg() -> UaConfig {
    UaConfig {
        accept_refer: true,
        ..cfg(None)
    }
}

/// The switch's REFER of an answered call: refused with 603 unless
/// `accept-refer`; taken, the call is asked; followed: 202, a NOTIFY 100
/// in the old dialog and our INVITE to the target with Referred-By; the
/// target's 180 and 200 are NOTIFYs, the 200 ends the old dialog with BYE
/// and moves the call.
#[test]
fn a_followed_refer_moves_the_call_to_its_target() {
    let t0 = Instant::now();
    let refer = |tag: &str, cseq: u32| {
        in_dialog_request(
            "REFER",
            cseq,
            tag,
            "Refer-To: <sip:5002@pbx.example>\r\nReferred-By: <sip:2000@pbx.example>\r\nContact: <sip:2000@192.0.2.1:5060>\r\n",
            "",
        )
    };
    let mut off = UserAgent::new(cfg(None), t0, Random::seeded(7));
    let (_, tag) = answered_incoming_call(&mut off, t0, "z9hG4bKin1", "v=0\r\n");
    off.datagram_in(t0, server(), &refer(&tag, 8));
    assert!(sent(&mut off)[0].starts_with("SIP/2.0 603"));

    let mut ua = UserAgent::new(refer_cfg(), t0, Random::seeded(7));
    let (key, tag) = answered_incoming_call(&mut ua, t0, "z9hG4bKin1", "v=0\r\n");
    let bad = in_dialog_request("REFER", 8, &tag, "Refer-To: <tel:+15551234>\r\n", "");
    ua.datagram_in(t0, server(), &bad);
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 400"));
    ua.datagram_in(t0, server(), &refer(&tag, 9));
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::Referred {
            target: "sip:5002@pbx.example".into()
        })
    );
    ua.datagram_in(t0, server(), &refer(&tag, 10));
    assert!(sent(&mut ua)[0].starts_with("SIP/2.0 491"), "one at a time");
    ua.handle_input(
        t0,
        UaInput::FollowRefer {
            key: key.clone(),
            sdp: "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\n".into(),
        },
    );
    let out = sent(&mut ua);
    let find = |start: &str| out.iter().find(|m| m.starts_with(start)).cloned();
    assert!(find("SIP/2.0 202").is_some(), "{out:?}");
    let notify = find("NOTIFY sip:2000@192.0.2.1:5060").unwrap();
    assert_eq!(header_value(&notify, "Event"), Some("refer"));
    assert!(notify.ends_with("SIP/2.0 100 Trying\r\n"), "{notify}");
    assert!(header_value(&notify, "Contact").is_some(), "{notify}");
    assert_eq!(header_value(&notify, "Session-Expires"), None);
    let invite = &find("INVITE").unwrap();
    assert!(
        invite.starts_with("INVITE sip:5002@pbx.example SIP/2.0"),
        "{invite}"
    );
    assert_eq!(
        header_value(invite, "Referred-By"),
        Some("<sip:2000@pbx.example>")
    );
    let reply = |status: &str| {
        String::from_utf8(answer(
            invite.as_bytes(),
            status,
            "Contact: <sip:5002@192.0.2.1:5060>\r\n",
        ))
        .unwrap()
        .replace(
            "To: <sip:5002@pbx.example>",
            "To: <sip:5002@pbx.example>;tag=t5002",
        )
    };
    ua.datagram_in(t0, server(), reply("180 Ringing").as_bytes());
    let out = sent(&mut ua);
    assert!(
        out.iter()
            .any(|m| m.starts_with("NOTIFY") && m.ends_with("SIP/2.0 180 Ringing\r\n")),
        "{out:?}"
    );
    assert_eq!(
        no_server_event(&mut ua),
        None,
        "progress is the switch's to hear"
    );
    let ok = reply("200 OK").replace(
        "Content-Length: 0\r\n\r\n",
        "Content-Length: 5\r\n\r\nv=0\r\n",
    );
    ua.datagram_in(t0, server(), ok.as_bytes());
    let out = sent(&mut ua);
    assert!(
        out.iter()
            .any(|m| m.starts_with("ACK sip:5002@192.0.2.1:5060")),
        "{out:?}"
    );
    assert!(
        out.iter().any(|m| m.starts_with("NOTIFY")
            && m.contains("Subscription-State: terminated")
            && m.ends_with("SIP/2.0 200 OK\r\n")),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|m| m.starts_with("BYE sip:2000@192.0.2.1:5060")),
        "{out:?}"
    );
    assert_eq!(
        call_event(&mut ua),
        Some(DialogEvent::Replaced {
            sdp: "v=0\r\n".into()
        })
    );
    assert_eq!(ua.call_count(), 1, "the new dialog is the call's");
    ua.hangup_in(t0, &key);
    assert!(sent(&mut ua)[0].starts_with("BYE sip:5002@192.0.2.1:5060"));
}

/// A followed REFER whose target refuses: the NOTIFY says so and the call
/// stays with the old dialog; had the switch hung that up meanwhile, the
/// call is over.
#[test]
fn a_refers_failed_call_leaves_the_call_where_it_was() {
    let t0 = Instant::now();
    for hung_up in [false, true] {
        let mut ua = UserAgent::new(refer_cfg(), t0, Random::seeded(8));
        let (key, tag) = answered_incoming_call(&mut ua, t0, "z9hG4bKin1", "v=0\r\n");
        let refer = in_dialog_request("REFER", 8, &tag, "Refer-To: sip:5002@pbx.example\r\n", "");
        ua.datagram_in(t0, server(), &refer);
        sent(&mut ua);
        call_event(&mut ua);
        ua.handle_input(
            t0,
            UaInput::FollowRefer {
                key: key.clone(),
                sdp: "v=0\r\n".into(),
            },
        );
        let invite = sent(&mut ua)
            .into_iter()
            .find(|m| m.starts_with("INVITE"))
            .unwrap();
        if hung_up {
            ua.datagram_in(t0, server(), &in_dialog_request("BYE", 9, &tag, "", ""));
            assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
            assert_eq!(no_server_event(&mut ua), None, "the call has moved on");
        }
        ua.datagram_in(
            t0,
            server(),
            &answer(invite.as_bytes(), "486 Busy Here", ""),
        );
        let out = sent(&mut ua);
        if hung_up {
            assert_eq!(call_event(&mut ua), Some(DialogEvent::RemoteBye));
            assert_eq!(ua.call_count(), 0);
        } else {
            assert!(
                out.iter()
                    .any(|m| m.starts_with("NOTIFY") && m.ends_with("SIP/2.0 486 Busy Here\r\n")),
                "{out:?}"
            );
            assert_eq!(no_server_event(&mut ua), None);
            assert_eq!(ua.call_count(), 1);
            // The old dialog is the call's again.
            ua.datagram_in(t0, server(), &in_dialog_request("BYE", 9, &tag, "", ""));
            assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
            assert_eq!(
                no_server_event(&mut ua),
                Some(UaEvent::Call {
                    key: key.clone(),
                    event: DialogEvent::RemoteBye
                })
            );
        }
    }
}

/// An INVITE with Replaces naming an answered call of ours takes it over:
/// its offer goes to that call, the call's answer goes in our 200, the old
/// dialog gets BYE and the new one is the call's; one naming no dialog of
/// ours gets 481.
#[test]
fn an_invite_with_replaces_takes_the_call_over() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(9));
    let (key, tag) = answered_incoming_call(&mut ua, t0, "z9hG4bKin1", "v=0\r\n");
    let replacing = |branch: &str, replaces: &str| {
        String::from_utf8(incoming_invite(branch))
            .unwrap()
            .replace("tag=c1", "tag=n2")
            .replace(
                "Call-ID: in-1@pbx",
                &format!("Call-ID: new-2@pbx\r\nReplaces: {replaces}"),
            )
    };
    ua.datagram_in(
        t0,
        server(),
        replacing("z9hG4bKr0", "in-1@pbx;to-tag=nope;from-tag=c1").as_bytes(),
    );
    assert!(sent(&mut ua).iter().any(|m| m.starts_with("SIP/2.0 481")));
    let invite = replacing("z9hG4bKr1", &format!("in-1@pbx;to-tag={tag};from-tag=c1"));
    ua.datagram_in(t0, server(), invite.as_bytes());
    assert!(sent(&mut ua).iter().any(|m| m.starts_with("SIP/2.0 100")));
    assert!(
        matches!(
            call_event(&mut ua),
            Some(DialogEvent::Offer { sdp: Some(_) })
        ),
        "the offer goes to the call it replaces"
    );
    ua.handle_input(
        t0,
        UaInput::AnswerOffer {
            key: key.clone(),
            answer: Ok("v=0\r\n".into()),
        },
    );
    let out = sent(&mut ua);
    assert!(
        out.iter()
            .any(|m| m.starts_with("SIP/2.0 200") && m.contains("Call-ID: new-2@pbx")),
        "{out:?}"
    );
    assert!(
        out.iter()
            .any(|m| m.starts_with("BYE") && m.contains("Call-ID: in-1@pbx")),
        "{out:?}"
    );
    assert_eq!(ua.call_count(), 1);
    ua.hangup_in(t0, &key);
    let bye = sent(&mut ua).remove(0);
    assert!(
        bye.starts_with("BYE") && bye.contains("Call-ID: new-2@pbx"),
        "{bye}"
    );
}

/// Two servers, a keepalive to each: while the first answers it takes the
/// registration and the calls; once its ping goes unanswered the
/// registration is made again at the second (same Call-ID, no second
/// `Registered` event) and a new call goes there, while the call begun on
/// the first keeps sending there. The first coming back does not take
/// anything back.
#[test]
fn a_dead_server_moves_registrations_and_new_calls_to_a_live_one() {
    let t0 = Instant::now();
    let backup: SocketAddr = "192.0.2.2:5060".parse().unwrap();
    let mut c = cfg(Some(Duration::from_secs(5)));
    c.servers.push(backup);
    c.trusted = TrustedSources::new(&[server().ip(), backup.ip()], &[]);
    let mut ua = UserAgent::new(c, t0, Random::seeded(7));
    ua.timeout_in(t0);
    let pings: Vec<Datagram> = std::iter::from_fn(|| ua.next_transmit()).collect();
    assert_eq!(
        pings.iter().map(|(to, _)| *to).collect::<Vec<_>>(),
        [server(), backup],
        "each server is probed"
    );
    for (to, ping) in &pings {
        ua.datagram_in(t0, *to, &answer(ping, "200 OK", ""));
    }
    ua.register_in(t0, "s1", "1001", None);
    let (to, register) = ua.next_transmit().unwrap();
    assert_eq!(to, server(), "the first server while it answers");
    ua.datagram_in(
        t0,
        server(),
        &answer(&register, "200 OK", "Expires: 300\r\n"),
    );
    ua.invite_in(t0, "old", "1001", "5000", "v=0\r\n".into());
    let (to, invite) = ua.next_transmit().unwrap();
    assert_eq!(to, server());
    ua.datagram_in(
        t0,
        server(),
        &answer(&invite, "200 OK", "Contact: <sip:5000@192.0.2.1>\r\n"),
    );
    let _ack = ua.next_transmit().unwrap();
    while ua.next_event().is_some() {}

    // The first stops answering: its ping times out (timer F).
    let t1 = t0 + Duration::from_secs(5);
    ua.timeout_in(t1);
    let mut now = t1;
    let mut moved = None;
    while now < t1 + Duration::from_secs(40) {
        while let Some((to, data)) = ua.next_transmit() {
            if to == backup && data.starts_with(b"OPTIONS") {
                ua.datagram_in(now, backup, &answer(&data, "200 OK", ""));
            }
            if data.starts_with(b"REGISTER") {
                moved = Some((to, data));
            }
        }
        if moved.is_some() {
            break;
        }
        now = ua.next_wakeup().unwrap();
        ua.timeout_in(now);
    }
    let (to, again) = moved.expect("the registration moved");
    assert_eq!(to, backup);
    let call_id = |d: &[u8]| {
        String::from_utf8_lossy(d)
            .lines()
            .find(|l| l.starts_with("Call-ID"))
            .map(String::from)
    };
    assert_eq!(call_id(&again), call_id(&register), "the same registration");
    let events: Vec<UaEvent> = std::iter::from_fn(|| ua.next_event()).collect();
    assert!(
        events.contains(&UaEvent::FailedOver {
            from: server(),
            to: backup
        }),
        "{events:?}"
    );
    assert!(events.contains(&UaEvent::ServerUp {
        server: server(),
        up: false
    }));
    assert_eq!(ua.server(), Some(backup));
    ua.datagram_in(now, backup, &answer(&again, "200 OK", "Expires: 300\r\n"));
    assert!(
        !std::iter::from_fn(|| ua.next_event()).any(|e| matches!(
            e,
            UaEvent::Registration {
                event: RegistrationEvent::Registered { .. },
                ..
            }
        )),
        "registered all along, as the session sees it"
    );
    assert_eq!(ua.registered_count(), 1);

    // A new call goes to the live server; the old call's BYE to its own.
    ua.invite_in(now, "new", "1001", "5001", "v=0\r\n".into());
    let (to, _) = ua.next_transmit().unwrap();
    assert_eq!(to, backup);
    ua.hangup_in(now, "old");
    let (to, bye) = ua.next_transmit().unwrap();
    assert!(bye.starts_with(b"BYE"));
    assert_eq!(to, server(), "a dialog stays with its server");

    // The first answers again: it is up, but the backup stays in use.
    ua.datagram_in(now, server(), &answer(&bye, "200 OK", ""));
    assert_eq!(ua.server(), Some(backup));
}

/// A call for a user whose session another node of the cluster holds: 302
/// with that node in the Contact; the caller's ACK ends it, and nothing of
/// the call is left.
#[test]
fn an_incoming_call_is_redirected_with_a_contact() {
    let t0 = Instant::now();
    let mut ua = UserAgent::new(cfg(None), t0, Random::seeded(1));
    ua.datagram_in(t0, server(), &incoming_invite("z9hG4bKredir"));
    let _trying = sent(&mut ua);
    let Some(UaEvent::Incoming { key, .. }) = ua.next_event() else {
        panic!("an incoming call event");
    };
    ua.handle_input(
        t0,
        UaInput::Redirect {
            key,
            contact: "sip:1001@192.0.2.20:5060".into(),
        },
    );
    let out = sent(&mut ua);
    assert!(out[0].starts_with("SIP/2.0 302"), "{out:?}");
    assert!(
        out[0].contains("Contact: <sip:1001@192.0.2.20:5060>"),
        "{out:?}"
    );
    assert!(out[0].contains("tag="), "a final answer has a To tag");
    assert_eq!(ua.call_count(), 0);
}
