//! Transactions with virtual time: every timer path runs in microseconds.

use std::time::{Duration, Instant};

use super::*;
use crate::sip::message::parse_datagram;

fn request(method: &str) -> rsip::Request {
    let text = [
        format!("{method} sip:1001@pbx.example SIP/2.0"),
        "Via: SIP/2.0/UDP 192.0.2.5:5070;branch=z9hG4bKtx1;rport".into(),
        "Max-Forwards: 70".into(),
        "From: <sip:gw@gw.example>;tag=gwtag".into(),
        "To: <sip:1001@pbx.example>".into(),
        "Call-ID: call-1@gw.example".into(),
        format!("CSeq: 7 {method}"),
        "Route: <sip:proxy.example;lr>".into(),
        "Content-Length: 0".into(),
        String::new(),
        String::new(),
    ]
    .join("\r\n");
    match parse_datagram(text.as_bytes()).unwrap() {
        rsip::SipMessage::Request(r) => r,
        _ => unreachable!(),
    }
}

fn response(req: &rsip::Request, code: u16) -> rsip::Response {
    let mut r = response_to(req, code);
    if code > 100 {
        // The UAS adds its To tag.
        for h in r.headers.iter_mut() {
            if let rsip::Header::To(to) = h {
                *to = rsip::headers::To::from(format!("{};tag=uas1", to.value()));
            }
        }
    }
    r
}

fn drain_client(t: &mut ClientTransaction) -> Vec<Output> {
    std::iter::from_fn(|| match t.poll_output() {
        Output::Timeout(_) => None,
        output => Some(output),
    })
    .collect()
}

fn drain_server(t: &mut ServerTransaction) -> Vec<Output> {
    std::iter::from_fn(|| match t.poll_output() {
        Output::Timeout(_) => None,
        output => Some(output),
    })
    .collect()
}

fn transmits(outputs: &[Output]) -> usize {
    outputs
        .iter()
        .filter(|o| matches!(o, Output::Transmit(_)))
        .count()
}

/// Runs the client's timers until `until`, returning what it sent.
fn run_client(t: &mut ClientTransaction, until: Instant) -> Vec<Output> {
    let mut out = Vec::new();
    while let Some(at) = t.poll_timeout() {
        if at > until {
            break;
        }
        t.handle_timeout(at);
        out.extend(drain_client(t));
    }
    out
}

#[test]
fn lost_invite_is_retransmitted_then_times_out_408() {
    let t0 = Instant::now();
    let cfg = TimerConfig::default();
    let mut t = ClientTransaction::new(request("INVITE"), false, cfg, t0);
    assert_eq!(transmits(&drain_client(&mut t)), 1);
    // Timer A doubles: sent again at 0.5, 1.5, 3.5, 7.5, 15.5 and 31.5 s, before B at 32 s.
    let out = run_client(&mut t, t0 + Duration::from_millis(31_900));
    assert_eq!(transmits(&out), 6);
    let out = run_client(&mut t, t0 + Duration::from_secs(33));
    assert!(
        out.contains(&Output::TimedOut),
        "timer B → 408 to the caller"
    );
    assert_eq!(t.state(), ClientState::Terminated);
    assert_eq!(t.poll_timeout(), None);
}

#[test]
fn reliable_transport_does_not_retransmit() {
    let t0 = Instant::now();
    let mut t = ClientTransaction::new(request("INVITE"), true, TimerConfig::default(), t0);
    drain_client(&mut t);
    let out = run_client(&mut t, t0 + Duration::from_secs(40));
    assert_eq!(transmits(&out), 0);
    assert!(out.contains(&Output::TimedOut));
}

#[test]
fn provisional_stops_timer_a_and_final_error_is_acked() {
    let t0 = Instant::now();
    let req = request("INVITE");
    let mut t = ClientTransaction::new(req.clone(), false, TimerConfig::default(), t0);
    drain_client(&mut t);
    t.handle_response(t0 + Duration::from_millis(100), response(&req, 180));
    assert_eq!(t.state(), ClientState::Proceeding);
    let out = drain_client(&mut t);
    assert!(matches!(&out[..], [Output::Response(r)] if r.status_code.code() == 180));
    assert_eq!(
        transmits(&run_client(&mut t, t0 + Duration::from_secs(20))),
        0,
        "no A after 1xx"
    );
    // 486: ACK inside the transaction, response to the TU.
    let busy = response(&req, 486);
    t.handle_response(t0 + Duration::from_secs(21), busy.clone());
    let out = drain_client(&mut t);
    let Output::Transmit(ack) = &out[0] else {
        panic!("ACK first: {out:?}")
    };
    let ack = match parse_datagram(ack).unwrap() {
        rsip::SipMessage::Request(a) => a,
        _ => panic!("ACK is a request"),
    };
    assert_eq!(ack.method, rsip::Method::Ack);
    assert_eq!(ack.uri, req.uri);
    assert_eq!(ack.cseq_header().unwrap().typed().unwrap().seq, 7);
    assert!(ack.to_header().unwrap().value().contains("tag=uas1"));
    assert_eq!(ack.via_header().unwrap(), req.via_header().unwrap());
    assert!(
        ack.headers
            .iter()
            .any(|h| matches!(h, rsip::Header::Route(_))),
        "route set kept"
    );
    assert!(matches!(&out[1], Output::Response(r) if r.status_code.code() == 486));
    // The 486 again (our ACK was lost): ACK again, not passed up again.
    t.handle_response(t0 + Duration::from_secs(22), busy);
    let out = drain_client(&mut t);
    assert_eq!(out.len(), 1);
    assert!(matches!(&out[0], Output::Transmit(_)));
    // Timer D ends it.
    let out = run_client(&mut t, t0 + Duration::from_secs(60));
    assert_eq!(out, vec![Output::Terminated]);
}

#[test]
fn invite_2xx_goes_to_the_tu_and_ends_the_transaction() {
    let t0 = Instant::now();
    let req = request("INVITE");
    let mut t = ClientTransaction::new(req.clone(), false, TimerConfig::default(), t0);
    drain_client(&mut t);
    t.handle_response(t0, response(&req, 200));
    let out = drain_client(&mut t);
    assert!(matches!(&out[0], Output::Response(r) if r.status_code.code() == 200));
    assert_eq!(out[1], Output::Terminated);
    assert_eq!(
        transmits(&out),
        0,
        "the 2xx ACK is end to end, not the transaction's"
    );
}

#[test]
fn cancel_racing_200_ok() {
    // The TU sent CANCEL (its own non-INVITE transaction) while the 200 OK
    // was on the way: the INVITE transaction hands the 200 up (the TU then
    // ACKs and BYEs), and the CANCEL gets its own final response.
    let t0 = Instant::now();
    let invite = request("INVITE");
    let mut inv = ClientTransaction::new(invite.clone(), false, TimerConfig::default(), t0);
    inv.handle_response(t0, response(&invite, 180));
    let cancel = request("CANCEL");
    let mut can = ClientTransaction::new(cancel.clone(), false, TimerConfig::default(), t0);
    inv.handle_response(t0 + Duration::from_millis(5), response(&invite, 200));
    can.handle_response(t0 + Duration::from_millis(6), response(&cancel, 481));
    let inv_out = drain_client(&mut inv);
    assert!(inv_out
        .iter()
        .any(|o| matches!(o, Output::Response(r) if r.status_code.code() == 200)));
    assert_eq!(inv.state(), ClientState::Terminated);
    let can_out = drain_client(&mut can);
    assert!(can_out
        .iter()
        .any(|o| matches!(o, Output::Response(r) if r.status_code.code() == 481)));
}

#[test]
fn non_invite_timers_e_and_f() {
    let t0 = Instant::now();
    let req = request("OPTIONS");
    let mut t = ClientTransaction::new(req.clone(), false, TimerConfig::default(), t0);
    drain_client(&mut t);
    // E: 0.5, 1, 2, 4, 4, 4 … capped at T2, until F at 32 s: 0.5+1+2+4*7 = 31.5 → 10 retransmits.
    let out = run_client(&mut t, t0 + Duration::from_millis(31_900));
    assert_eq!(transmits(&out), 10);
    let out = run_client(&mut t, t0 + Duration::from_secs(33));
    assert!(out.contains(&Output::TimedOut), "timer F");

    // A 1xx then a final: K lingers T4, absorbing retransmitted finals silently.
    let mut t = ClientTransaction::new(req.clone(), false, TimerConfig::default(), t0);
    drain_client(&mut t);
    t.handle_response(t0, response(&req, 100));
    t.handle_response(t0, response(&req, 200));
    assert_eq!(t.state(), ClientState::Completed);
    t.handle_response(t0, response(&req, 200));
    let out = drain_client(&mut t);
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Response(_)))
            .count(),
        2
    );
    let out = run_client(&mut t, t0 + Duration::from_secs(6));
    assert_eq!(out, vec![Output::Terminated]);
}

#[test]
fn server_invite_absorbs_retransmissions_and_waits_for_ack() {
    let t0 = Instant::now();
    let req = request("INVITE");
    let mut s = ServerTransaction::new(req.clone(), false, TimerConfig::default());
    let out = drain_server(&mut s);
    assert_eq!(transmits(&out), 1, "100 Trying at once");
    assert!(matches!(out.last(), Some(Output::Request(_))));
    // A retransmitted INVITE is answered with the last response, not passed up.
    s.handle_request(t0, &req);
    let out = drain_server(&mut s);
    assert_eq!(out.len(), 1);
    assert!(
        matches!(&out[0], Output::Transmit(b) if String::from_utf8_lossy(b).starts_with("SIP/2.0 100"))
    );
    // 486 is retransmitted with G until the ACK; H gives up.
    s.send_response(t0, response(&req, 486));
    assert_eq!(transmits(&drain_server(&mut s)), 1);
    let mut sent = 0;
    let mut now = t0;
    while let Some(at) = s.poll_timeout() {
        if at > t0 + Duration::from_secs(10) {
            break;
        }
        now = at;
        s.handle_timeout(now);
        sent += transmits(&drain_server(&mut s));
    }
    assert!(sent >= 4, "G: 0.5, 1, 2, 4 s … ({sent})");
    // The ACK confirms; timer I absorbs further ACKs, then it ends.
    let ack = request("ACK");
    s.handle_request(now, &ack);
    assert_eq!(s.state(), ServerState::Confirmed);
    s.handle_request(now, &ack);
    assert!(drain_server(&mut s).is_empty());
    s.handle_timeout(now + Duration::from_secs(5));
    assert_eq!(drain_server(&mut s), vec![Output::Terminated]);

    // Without an ACK, timer H reports it.
    let mut s = ServerTransaction::new(req.clone(), false, TimerConfig::default());
    s.send_response(t0, response(&req, 603));
    drain_server(&mut s);
    let mut outs = Vec::new();
    while let Some(at) = s.poll_timeout() {
        s.handle_timeout(at);
        outs.extend(drain_server(&mut s));
    }
    assert!(outs.contains(&Output::NoAck));
    assert_eq!(s.state(), ServerState::Terminated);
}

#[test]
fn server_non_invite_lingers_with_timer_j() {
    let t0 = Instant::now();
    let req = request("OPTIONS");
    let mut s = ServerTransaction::new(req.clone(), false, TimerConfig::default());
    let out = drain_server(&mut s);
    assert_eq!(transmits(&out), 0, "no 100 for non-INVITE");
    s.send_response(t0, response(&req, 200));
    drain_server(&mut s);
    // A lost 200: the request comes again and the same 200 goes back.
    s.handle_request(t0 + Duration::from_secs(1), &req);
    assert_eq!(transmits(&drain_server(&mut s)), 1);
    s.handle_timeout(t0 + Duration::from_secs(31));
    assert!(drain_server(&mut s).is_empty());
    s.handle_timeout(t0 + Duration::from_secs(32));
    assert_eq!(drain_server(&mut s), vec![Output::Terminated]);
}

#[test]
fn configurable_t1() {
    let t0 = Instant::now();
    let cfg = TimerConfig {
        t1: Duration::from_millis(100),
        ..TimerConfig::default()
    };
    let mut t = ClientTransaction::new(request("INVITE"), false, cfg, t0);
    drain_client(&mut t);
    assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_millis(100)));
    let out = run_client(&mut t, t0 + Duration::from_millis(6_500));
    assert!(out.contains(&Output::TimedOut), "B = 64·T1 = 6.4 s");
}

/// An INVITE's server transaction says 100 Trying once, when it begins: a
/// 100 from the transaction user adds nothing on the wire.
#[test]
fn one_100_trying_per_invite() {
    let t0 = Instant::now();
    let invite = request("INVITE");
    let mut s = ServerTransaction::new(invite.clone(), false, TimerConfig::default());
    s.handle_input(t0, ServerInput::Respond(response_to(&invite, 100)));
    let out = drain_server(&mut s);
    assert_eq!(transmits(&out), 1, "{out:?}");
    s.handle_input(t0, ServerInput::Respond(response(&invite, 180)));
    assert_eq!(transmits(&drain_server(&mut s)), 1, "a 180 still goes out");
}
