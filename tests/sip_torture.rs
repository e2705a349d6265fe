//! Torture messages in the manner of RFC 4475, written for this project:
//! each valid one is parsed and its fields read right; each invalid one is
//! refused with a 400 naming the problem (or dropped when no answer can be
//! addressed). Nothing panics. Run through the endpoint, as a datagram
//! from the network would be.

use std::net::SocketAddr;
use std::time::Instant;

use rsip::prelude::*;
use webrtc_sip_gateway::random::Random;
use webrtc_sip_gateway::sip::endpoint::Endpoint;
use webrtc_sip_gateway::sip::message::{parse_datagram, uri_user};
use webrtc_sip_gateway::sip::transaction::TimerConfig;

fn peer() -> SocketAddr {
    "198.51.100.9:5060".parse().unwrap()
}

/// The endpoint's answers to `message` (status lines only).
fn answers(message: &[u8]) -> Vec<String> {
    let mut endpoint = Endpoint::new(TimerConfig::default(), Random::seeded(1));
    endpoint
        .handle_datagram(Instant::now(), peer(), message)
        .into_iter()
        .map(|(to, bytes)| {
            assert_eq!(to, peer(), "answers go back to the sender");
            String::from_utf8_lossy(&bytes)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

/// The messages, by name (after the RFC 4475 cases they imitate).
fn cases() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("wsinv", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nvia  :   SIP/2.0/UDP 198.51.100.9:5060 ;\n  branch=z9hG4bKws1\nmax-Forwards : 70\nTO:\n <sip:gw@192.0.2.10>\nfrom   : \"A caller\"  <sip:a@198.51.100.9> ; tag = t1\ncall-id: ws.1@198.51.100.9\ncSeq: 8\n   OPTIONS\ncontent-LENGTH: 0\n\n")),
        ("intmeth", crlf("!interest-Meth0d_*+`.%'~ sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKim1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t2\nTo: <sip:gw@192.0.2.10>\nCall-ID: im.1\nCSeq: 3 !interest-Meth0d_*+`.%'~\nContent-Length: 0\n\n")),
        ("esc01", crlf("OPTIONS sip:sips%3Auser%40example.org@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKes1\nMax-Forwards: 70\nFrom: <sip:a%20b@198.51.100.9>;tag=t3\nTo: <sip:gw@192.0.2.10>\nCall-ID: es.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("escnull", crlf("OPTIONS sip:null%00null@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKen1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t4\nTo: <sip:null%00null@192.0.2.10>\nCall-ID: en.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("lwsdisp", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKld1\nMax-Forwards: 70\nFrom: caller<sip:a@198.51.100.9>;tag=t5\nTo: <sip:gw@192.0.2.10>\nCall-ID: ld.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("longdisp", crlf(&format!("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKlo1\nMax-Forwards: 70\nFrom: \"{}\" <sip:a@198.51.100.9>;tag=t6\nTo: <sip:gw@192.0.2.10>\nCall-ID: lo.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n", "x".repeat(3000)))),
        ("clerr", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKcl1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t7\nTo: <sip:gw@192.0.2.10>\nCall-ID: cl.1\nCSeq: 1 OPTIONS\nContent-Length: 9999\n\nshort")),
        ("ncl", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKnc1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t8\nTo: <sip:gw@192.0.2.10>\nCall-ID: nc.1\nCSeq: 1 OPTIONS\nContent-Length: -5\n\n")),
        ("scalar", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKsc1\nMax-Forwards: 300\nFrom: <sip:a@198.51.100.9>;tag=t9\nTo: <sip:gw@192.0.2.10>\nCall-ID: sc.1\nCSeq: 36893488147419103232 OPTIONS\nContent-Length: 0\n\n")),
        ("badvers", crlf("OPTIONS sip:gw@192.0.2.10 SIP/7.0\nVia: SIP/7.0/UDP 198.51.100.9;branch=z9hG4bKbv1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t10\nTo: <sip:gw@192.0.2.10>\nCall-ID: bv.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("mismatch", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKmm1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t11\nTo: <sip:gw@192.0.2.10>\nCall-ID: mm.1\nCSeq: 1 INVITE\nContent-Length: 0\n\n")),
        ("insuf", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKin1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t12\nTo: <sip:gw@192.0.2.10>\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("quotbal", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKqb1\nMax-Forwards: 70\nFrom: \"never closed <sip:a@198.51.100.9>;tag=t13\nTo: <sip:gw@192.0.2.10>\nCall-ID: qb.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("ltgtruri", crlf("OPTIONS <sip:gw@192.0.2.10> SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKlg1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t14\nTo: <sip:gw@192.0.2.10>\nCall-ID: lg.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("trws", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0 \nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKtw1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t15\nTo: <sip:gw@192.0.2.10>\nCall-ID: tw.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("dblcl", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKdc1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t16\nTo: <sip:gw@192.0.2.10>\nCall-ID: dc.1\nCSeq: 1 OPTIONS\nContent-Length: 0\nl: 4\n\nbody")),
        ("noreason", crlf("SIP/2.0 200 \nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKnr1\nFrom: <sip:gw@192.0.2.10>;tag=t17\nTo: <sip:a@198.51.100.9>;tag=r1\nCall-ID: nr.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("utf8reason", crlf("SIP/2.0 200 Très bien — 好\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKur1\nFrom: <sip:gw@192.0.2.10>;tag=t18\nTo: <sip:a@198.51.100.9>;tag=r2\nCall-ID: ur.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("binary", b"OPTIONS sip:gw@192.0.2.10 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKbn1\r\nFrom: \xff\xfe<sip:a@x>;tag=1\r\n\r\n".to_vec()),
        ("unknownscheme", crlf("OPTIONS nobody:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKus1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t19\nTo: <sip:gw@192.0.2.10>\nCall-ID: us.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("badmaxfwd", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKmf1\nMax-Forwards: ten\nFrom: <sip:a@198.51.100.9>;tag=t21\nTo: <sip:gw@192.0.2.10>\nCall-ID: mf.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("unclosedlt", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKul1\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9;tag=t22\nTo: <sip:gw@192.0.2.10>\nCall-ID: ul.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
        ("multiVia", crlf("OPTIONS sip:gw@192.0.2.10 SIP/2.0\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKmv1, SIP/2.0/TCP 203.0.113.4;branch=z9hG4bKmv0\nv: SIP/2.0/UDP 203.0.113.5;branch=z9hG4bKmvx\nMax-Forwards: 70\nFrom: <sip:a@198.51.100.9>;tag=t20\nTo: <sip:gw@192.0.2.10>\nCall-ID: mv.1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")),
    ]
}

fn case(name: &str) -> Vec<u8> {
    cases()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, m)| m)
        .unwrap_or_else(|| panic!("no case {name}"))
}

fn request(name: &str) -> rsip::Request {
    match parse_datagram(&case(name)) {
        Ok(rsip::SipMessage::Request(r)) => r,
        other => panic!("{name}: {other:?}"),
    }
}

/// Every case gets the answer it should, and none panics.
#[test]
fn each_message_gets_its_answer() {
    let expected: &[(&str, &[&str])] = &[
        ("wsinv", &["SIP/2.0 200 OK"]),
        ("intmeth", &["SIP/2.0 501 Not Implemented"]),
        ("esc01", &["SIP/2.0 200 OK"]),
        ("escnull", &["SIP/2.0 200 OK"]),
        ("lwsdisp", &["SIP/2.0 200 OK"]),
        ("longdisp", &["SIP/2.0 200 OK"]),
        (
            "clerr",
            &["SIP/2.0 400 Bad Request - Body Shorter Than Content-Length"],
        ),
        ("ncl", &["SIP/2.0 400 Bad Request - Invalid Content-Length"]),
        // Max-Forwards 300 and a CSeq past 2^32: the first fault is named.
        (
            "scalar",
            &["SIP/2.0 400 Bad Request - Malformed Max-Forwards Header"],
        ),
        ("badvers", &["SIP/2.0 505 Version Not Supported"]),
        (
            "mismatch",
            &["SIP/2.0 400 Bad Request - CSeq Method Differs From The Request Method"],
        ),
        (
            "insuf",
            &["SIP/2.0 400 Bad Request - Missing Call-ID Header"],
        ),
        (
            "quotbal",
            &["SIP/2.0 400 Bad Request - Malformed From (unbalanced quotes)"],
        ),
        (
            "ltgtruri",
            &["SIP/2.0 400 Bad Request - Malformed Request-URI (in angle brackets)"],
        ),
        (
            "trws",
            &["SIP/2.0 400 Bad Request - Malformed Request-Line"],
        ),
        (
            "dblcl",
            &["SIP/2.0 400 Bad Request - Invalid Content-Length"],
        ),
        // Responses belong to client transactions: never answered.
        ("noreason", &[]),
        ("utf8reason", &[]),
        // Not text: nowhere to address an answer; dropped and counted.
        ("binary", &[]),
        ("unknownscheme", &["SIP/2.0 416 Unsupported URI Scheme"]),
        ("multiVia", &["SIP/2.0 200 OK"]),
        (
            "badmaxfwd",
            &["SIP/2.0 400 Bad Request - Malformed Max-Forwards Header"],
        ),
        (
            "unclosedlt",
            &["SIP/2.0 400 Bad Request - Malformed From (unclosed <)"],
        ),
    ];
    let all = cases();
    assert_eq!(all.len(), expected.len());
    for (name, message) in all {
        let want = expected
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, w)| *w)
            .unwrap_or_else(|| panic!("no expectation for {name}"));
        assert_eq!(answers(&message), want, "{name}");
    }
}

/// Valid messages are read right, not just accepted.
#[test]
fn valid_messages_are_read_right() {
    let r = request("wsinv");
    assert_eq!(r.cseq_header().unwrap().typed().unwrap().seq, 8);
    assert_eq!(r.method, rsip::Method::Options);
    let via = r.via_header().unwrap().typed().unwrap();
    assert_eq!(
        via.branch().map(|b| b.to_string()).as_deref(),
        Some("z9hG4bKws1")
    );
    let from = r.from_header().unwrap().typed().unwrap();
    assert_eq!(from.tag().map(|t| t.to_string()).as_deref(), Some("t1"));
    // rsip keeps the quotes of a quoted display name.
    assert_eq!(
        from.display_name.as_deref().map(|d| d.trim_matches('"')),
        Some("A caller")
    );
    assert_eq!(
        r.to_header().unwrap().typed().unwrap().uri.to_string(),
        "sip:gw@192.0.2.10"
    );

    // Escaped users compare unescaped (rsip alone puts this one in the host).
    let r = request("esc01");
    assert_eq!(uri_user(&r.uri).as_deref(), Some("sips:user@example.org"));
    let from = r.from_header().unwrap().typed().unwrap();
    assert_eq!(uri_user(&from.uri).as_deref(), Some("a b"));
    let r = request("escnull");
    assert_eq!(uri_user(&r.uri).as_deref(), Some("null\0null"));

    let r = request("lwsdisp");
    let from = r.from_header().unwrap().typed().unwrap();
    assert_eq!(from.uri.to_string(), "sip:a@198.51.100.9");

    let r = request("longdisp");
    let from = r.from_header().unwrap().typed().unwrap();
    assert_eq!(
        from.display_name.map(|d| d.trim_matches('"').len()),
        Some(3000)
    );

    let r = request("multiVia");
    let top = r.via_header().unwrap().typed().unwrap();
    assert_eq!(
        top.branch().map(|b| b.to_string()).as_deref(),
        Some("z9hG4bKmv1")
    );
}

/// RFC 4475's own bytes (tests/fixtures/rfc4475): the valid messages are
/// answered as well-formed requests (never 400), their fields read right.
#[test]
fn rfc4475_valid_messages_are_taken_as_well_formed() {
    let fixture = |name: &str| {
        std::fs::read(format!(
            "{}/tests/fixtures/rfc4475/{name}.sip",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    // §3.1.1.1: folding, LWS around colons, a mix of short and long forms.
    let wsinv = fixture("wsinv");
    // The endpoint alone serves no INVITE: 501 after the 100, not 400.
    let answered = answers(&wsinv);
    assert!(
        answered.len() == 2 && answered[1].starts_with("SIP/2.0 501"),
        "{answered:?}"
    );
    let Ok(rsip::SipMessage::Request(r)) = parse_datagram(&wsinv) else {
        panic!("wsinv does not parse");
    };
    assert_eq!(r.method, rsip::Method::Invite);
    assert_eq!(
        r.call_id_header().unwrap().value(),
        "wsinv.ndaksdj@192.0.2.1"
    );
    let cseq = r.cseq_header().unwrap().typed().unwrap();
    assert_eq!((cseq.seq, cseq.method), (9, rsip::Method::Invite));
    assert_eq!(r.body.len(), 150);
    // §3.1.1.9: a `;` parameter inside the Request-URI's user part.
    let semiuri = fixture("semiuri");
    assert_eq!(answers(&semiuri), ["SIP/2.0 200 OK"]);
    let Ok(rsip::SipMessage::Request(r)) = parse_datagram(&semiuri) else {
        panic!("semiuri does not parse");
    };
    assert_eq!(uri_user(&r.uri).as_deref(), Some("user;par=u@example.net"));
    // §3.4: RFC 2543 style, no branch: a transaction all the same, so its
    // retransmission is absorbed rather than handled twice.
    let inv2543 = fixture("inv2543");
    let mut endpoint = Endpoint::new(TimerConfig::default(), Random::seeded(1));
    let first = endpoint.handle_datagram(Instant::now(), peer(), &inv2543);
    assert!(
        first
            .last()
            .is_some_and(|(_, b)| b.starts_with(b"SIP/2.0 501")),
        "{first:?}"
    );
    let again = endpoint.handle_datagram(Instant::now(), peer(), &inv2543);
    assert_eq!(
        again.last().map(|(_, b)| b.clone()),
        first.last().map(|(_, b)| b.clone())
    );
    assert_eq!(endpoint.counters.retransmissions_absorbed, 1);
}

fn rfc4475(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/rfc4475/{name}.sip",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Every message of RFC 4475 §3.1 (valid and invalid syntax) and §3.4,
/// byte for byte, through the endpoint. The valid ones are answered as
/// well-formed — the endpoint alone serves OPTIONS and answers other
/// methods 501, never 400; responses are never answered. The invalid ones
/// get the status the RFC names (400 naming the fault, 505 for another
/// version, 501 for an unknown method). Where the RFC lets an element be
/// liberal instead (§3.1.2.12 an odd Date time zone, §3.1.2.13 a REGISTER,
/// which we do not serve, §3.1.2.14 spaces around an addr-spec), we are,
/// and the message is answered as a valid one.
#[test]
fn rfc4475_each_message_gets_the_status_the_rfc_names() {
    let not_served_invite: &[&str] = &["SIP/2.0 100 Trying", "SIP/2.0 501 Not Implemented"];
    let not_served: &[&str] = &["SIP/2.0 501 Not Implemented"];
    let ok: &[&str] = &["SIP/2.0 200 OK"];
    let expected: &[(&str, &[&str])] = &[
        // §3.1.1 valid messages.
        ("wsinv", not_served_invite),
        ("intmeth", not_served),
        ("esc01", not_served_invite),
        ("escnull", not_served),
        ("esc02", not_served),
        ("lwsdisp", ok),
        ("longreq", not_served_invite),
        ("dblreq", not_served),
        ("semiuri", ok),
        ("transports", ok),
        ("mpart01", not_served),
        ("unreason", &[]),
        ("noreason", &[]),
        // §3.1.2 invalid messages.
        ("badinv01", &["SIP/2.0 400 Bad Request - Malformed Via (empty parameter or value)"]),
        ("clerr", &["SIP/2.0 400 Bad Request - Body Shorter Than Content-Length"]),
        ("ncl", &["SIP/2.0 400 Bad Request - Invalid Content-Length"]),
        ("scalar02", &["SIP/2.0 400 Bad Request - Malformed Max-Forwards Header"]),
        ("scalarlg", &[]),
        ("quotbal", &["SIP/2.0 400 Bad Request - Malformed To (unbalanced quotes)"]),
        ("ltgtruri", &["SIP/2.0 400 Bad Request - Malformed Request-URI (in angle brackets)"]),
        ("lwsruri", &["SIP/2.0 400 Bad Request - Malformed Request-Line"]),
        ("lwsstart", &["SIP/2.0 400 Bad Request - Malformed Request-Line"]),
        ("trws", &["SIP/2.0 400 Bad Request - Malformed Request-Line"]),
        ("escruri", &["SIP/2.0 400 Bad Request - Malformed Request-URI (holds URI headers)"]),
        ("baddate", not_served_invite),
        ("regbadct", not_served),
        ("badaspec", ok),
        (
            "baddn",
            &["SIP/2.0 400 Bad Request - Malformed From (unquoted display name with non-token characters)"],
        ),
        ("badvers", &["SIP/2.0 505 Version Not Supported"]),
        ("mismatch01", &["SIP/2.0 400 Bad Request - CSeq Method Differs From The Request Method"]),
        ("mismatch02", &["SIP/2.0 501 Not Implemented"]),
        ("bigcode", &[]),
        // §3.4 backward compatibility.
        ("inv2543", not_served_invite),
    ];
    let on_disk = std::fs::read_dir(format!(
        "{}/tests/fixtures/rfc4475",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .filter(|e| {
        e.as_ref()
            .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sip"))
    })
    .count();
    assert_eq!(on_disk, expected.len(), "every fixture has its expectation");
    for (name, want) in expected {
        assert_eq!(answers(&rfc4475(name)), *want, "{name}");
    }
}

/// The valid messages of RFC 4475 §3.1.1 are read right, not only taken.
#[test]
fn rfc4475_valid_messages_are_read_right() {
    let request = |name: &str| match parse_datagram(&rfc4475(name)) {
        Ok(rsip::SipMessage::Request(r)) => r,
        other => panic!("{name}: {other:?}"),
    };
    let r = request("esc01");
    assert_eq!(uri_user(&r.uri).as_deref(), Some("sips:user@example.com"));
    let r = request("escnull");
    let to = r.to_header().unwrap().typed().unwrap();
    assert_eq!(uri_user(&to.uri).as_deref(), Some("null-\0-null"));
    let r = request("longreq");
    let to = r.to_header().unwrap().typed().unwrap();
    assert!(to.display_name.is_some_and(|d| d.len() > 100));
    let from = r.from_header().unwrap().typed().unwrap();
    assert!(uri_user(&from.uri).is_some_and(|u| u.starts_with("amazinglylong")));
    // Each of the 34 Via lines, long and compact, any case, LWS before ':'.
    let vias = r
        .headers
        .iter()
        .filter(|h| matches!(h, rsip::Header::Via(_)))
        .count();
    assert_eq!(vias, 34);
    let r = request("transports");
    assert_eq!(
        r.via_header()
            .unwrap()
            .typed()
            .unwrap()
            .transport
            .to_string(),
        "UDP"
    );
    let r = request("mpart01");
    assert!(
        r.body.ends_with(b"--7a9cbec02ceef655--\r\n"),
        "the whole multipart body: {} bytes",
        r.body.len()
    );
    let dblreq = rfc4475("dblreq");
    let Ok(rsip::SipMessage::Request(r)) = parse_datagram(&dblreq) else {
        panic!("dblreq");
    };
    // Content-Length 0: the second request in the datagram is ignored (§18.3).
    assert!(r.body.is_empty());
    for name in ["unreason", "noreason"] {
        assert!(
            matches!(
                parse_datagram(&rfc4475(name)),
                Ok(rsip::SipMessage::Response(_))
            ),
            "{name} is a response"
        );
    }
}
