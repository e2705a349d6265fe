//! SIP calls both ways between the API and SIPp user agents (Debian's
//! sip-tester), over UDP and TCP. Outgoing: a UAS that answers and hangs up, one that rings until we
//! cancel, one that is busy, and SIPp's own UAS hung up by us. Incoming:
//! SIPp's UAC answered through the API, a caller that cancels, a browser
//! that rejects, and a user with no session. Each checks the events the
//! browser would get, SIPp's verdict, and that the call's ports came back.

mod common;

use std::time::Duration;

use common::sipp::{SipTest, Transport};
use common::ApiSession;
use serde_json::{json, Value};

const OFFER: &str = include_str!("fixtures/sdp/chromium-offer.sdp");

#[tokio::test]
async fn the_far_end_answers_and_hangs_up() {
    let t = SipTest::toward("uas-answer-bye.xml");
    let mut s = ApiSession::open(&t.gw).await;
    let cid = s.call("5000", OFFER).await;
    let ringing = s.wait_for("call.ringing").await;
    assert_eq!(ringing["call"], cid.as_str());
    let answered = s.wait_for("call.answered").await;
    let sdp = answered["sdp"].as_str().unwrap();
    assert!(
        sdp.contains("a=rtpmap:0 PCMU/8000"),
        "the browser gets the far end's codec: {sdp}"
    );
    assert!(sdp.contains("a=ice-lite"));
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup");
    t.finish().await;
}

#[tokio::test]
async fn hanging_up_while_it_rings_cancels() {
    let t = SipTest::toward("uas-ring-cancel.xml");
    let mut s = ApiSession::open(&t.gw).await;
    let cid = s.call("5000", OFFER).await;
    s.wait_for("call.ringing").await;
    s.hang_up(&cid).await;
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "hangup");
    t.finish().await;
}

#[tokio::test]
async fn a_busy_far_end_is_rejected() {
    let t = SipTest::toward("uas-busy.xml");
    let mut s = ApiSession::open(&t.gw).await;
    s.call("sip:5000@127.0.0.1", OFFER).await;
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "rejected");
    assert_eq!(ended["sip_status"], 486);
    t.finish().await;
}

#[tokio::test]
async fn we_hang_up_an_answered_call_with_bye() {
    let t = SipTest::toward("uas");
    let mut s = ApiSession::open(&t.gw).await;
    let cid = s.call("5000", OFFER).await;
    s.wait_for("call.answered").await;
    s.hang_up(&cid).await;
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "hangup");
    t.finish().await;
}

/// The session's display name (quotes and all) and, with `[sip]
/// asserted-identity = "pai"`, a P-Asserted-Identity naming the agent go
/// out in the INVITE; SIPp's scenario checks both.
#[tokio::test]
async fn our_invite_names_the_agent_in_from_and_p_asserted_identity() {
    let t = SipTest::toward_over(
        "uas-caller-id.xml",
        Transport::Udp,
        "asserted-identity = \"pai\"\n",
    );
    let body = json!({"user": "1001", "display_name": "Agent \"Smith\""});
    let mut s = ApiSession::create_from(&t.gw, &body).await.unwrap();
    // Call data the rules do not allow is refused, naming it; no INVITE goes.
    for (headers, named) in [
        (json!({"Diversion": "<sip:x@y>"}), "Diversion"),
        (
            json!({"X-Ticket": "T-1\r\nVia: SIP/2.0/UDP evil"}),
            "X-Ticket",
        ),
    ] {
        let (status, body) = s
            .post(
                "/calls",
                json!({"to": "5000", "sdp": OFFER, "headers": headers}),
            )
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("bad_header")),
            "{body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(named),
            "{body}"
        );
    }
    let headers = json!({"X-Ticket": "T-1", "User-to-User": ["00ff;encoding=hex"]});
    let (status, body) = s
        .post(
            "/calls",
            json!({"to": "5000", "sdp": OFFER, "headers": headers}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    s.wait_for("call.answered").await;
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup");
    t.finish().await;
}

/// The switch's call data reaches the page in `call.incoming`'s `headers`
/// (X- headers and User-to-User, not its Subject); the page's own goes in
/// our 200 (SIPp checks X-Agent-Id and User-to-User), after a refused
/// answer changed nothing.
#[tokio::test]
async fn the_switchs_call_data_reaches_the_page_and_the_pages_reaches_the_switch() {
    let mut t = SipTest::gateway(Transport::Udp, "");
    let (mut s, incoming) = ring_the_browser(&mut t, "uac-call-data.xml", Transport::Udp).await;
    let cid = incoming["call"].as_str().unwrap().to_string();
    assert_eq!(
        incoming["headers"],
        json!({
            "User-to-User": ["04a1b2c3;encoding=hex;purpose=isdn-uui"],
            "X-Customer-Id": ["4711"],
            "X-Queue": ["sales"],
            "x-queue": ["vip"],
        }),
        "{incoming}"
    );
    let answer = |headers: Value| json!({"sdp": browser_answer(), "headers": headers});
    let (status, body) = s
        .post(
            &format!("/calls/{cid}/answer"),
            answer(json!({"Contact": "<sip:evil@x>"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_header")),
        "{body}"
    );
    let (_, view) = s.get(&format!("/calls/{cid}")).await;
    assert_eq!(view["state"], "incoming", "{view}");
    let (status, body) = s
        .post(
            &format!("/calls/{cid}/answer"),
            answer(json!({"X-Agent-Id": "7", "User-to-User": "00ff;encoding=hex"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup");
    t.finish().await;
}

/// A switch's auto-answer INVITE (Call-Info answer-after=1) says so in
/// `call.incoming`; the gateway itself still waits for the page's answer.
#[tokio::test]
async fn an_auto_answer_invite_says_so_to_the_page() {
    let mut t = SipTest::gateway(Transport::Udp, "");
    let (mut s, incoming) = ring_the_browser(&mut t, "uac-auto-answer.xml", Transport::Udp).await;
    let cid = incoming["call"].as_str().unwrap().to_string();
    assert_eq!(incoming["auto_answer"], json!({"after_s": 1}), "{incoming}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, view) = s.get(&format!("/calls/{cid}")).await;
    assert_eq!(
        view["state"], "incoming",
        "the page answers, not the gateway: {view}"
    );
    answer_as_the_browser(&s, &cid).await;
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup");
    t.finish().await;
}

/// Remote call control (`tests/sipp/uac-remote-control.xml`): the
/// switch's NOTIFY talk on the ringing call is `call.answer_requested` for
/// the page, which answers; NOTIFY hold then holds the call (our
/// re-INVITE sendonly, `call.held` by local) and NOTIFY talk resumes it.
#[tokio::test]
async fn a_switch_answers_holds_and_resumes_the_agents_call_remotely() {
    // The switch is the gateway's SIP server: our re-INVITEs go to it.
    let port = Transport::Udp.free_port();
    let mut t = SipTest::gateway_with_calling_server(port, "");
    let mut s = ApiSession::open(&t.gw).await;
    t.call_in_as_server("uac-remote-control.xml", port, &[]);
    let incoming = s.wait_for("call.incoming").await;
    let cid = incoming["call"].as_str().unwrap().to_string();
    let requested = s.wait_for("call.answer_requested").await;
    assert_eq!(requested["call"], cid.as_str());
    answer_as_the_browser(&s, &cid).await;
    let held = s.wait_for("call.held").await;
    assert_eq!(held["by"], "local", "{held}");
    let resumed = s.wait_for("call.resumed").await;
    assert_eq!(resumed["by"], "local", "{resumed}");
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup");
    t.finish().await;
}

/// Call `cid`'s view once its SIP media is at `address` (within 10 s;
/// the last view seen otherwise).
async fn media_moves_to(s: &ApiSession, cid: &str, address: &str) -> Value {
    let mut view = Value::Null;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        view = s.get(&format!("/calls/{cid}")).await.1;
        if view["sip_media"] == address {
            break;
        }
    }
    view
}

/// The switch hands the agent's call on by REFER
/// (`tests/sipp/uac-refer.xml`, with `[sip] accept-refer = true`): the
/// gateway calls the target itself with Referred-By (SIPp's out-of-call
/// scenario answers for 5002 with media elsewhere), reports by NOTIFY,
/// hangs the old dialog up and moves the call's media to the target
/// without a word to the browser; the target's BYE ends the call. Without
/// the option the REFER gets 603 (unit-tested).
#[tokio::test]
async fn a_switchs_refer_moves_the_agents_call_to_its_target() {
    let port = Transport::Udp.free_port();
    let mut t = SipTest::gateway_with_calling_server(port, "accept-refer = true\n");
    let mut s = ApiSession::open(&t.gw).await;
    let target = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/sipp/uas-refer-target.xml"
    );
    t.call_in_as_server(
        "uac-refer.xml",
        port,
        &["-oocsf", target, "-key", "tone_port", "6199"],
    );
    let incoming = s.wait_for("call.incoming").await;
    let cid = incoming["call"].as_str().unwrap().to_string();
    answer_as_the_browser(&s, &cid).await;
    let moved = media_moves_to(&s, &cid, "127.0.0.1:6199").await;
    assert_eq!(
        moved["state"], "answered",
        "the call moved to the target: {moved}"
    );
    let ended = s.wait_for("call.ended").await;
    assert_eq!(
        ended["reason"], "remote_hangup",
        "the target hung up: {ended}"
    );
    t.finish().await;
}

/// An INVITE with Replaces from the switch (`tests/sipp/uac-replaces.xml`)
/// takes the agent's answered call over: our 200 with a tag of its own,
/// a BYE of the replaced dialog (SIPp checks both), and the call's media at
/// the new dialog's address; its BYE ends the call.
#[tokio::test]
async fn a_switchs_invite_with_replaces_takes_the_agents_call_over() {
    let port = Transport::Udp.free_port();
    let mut t = SipTest::gateway_with_calling_server(port, "");
    let mut s = ApiSession::open(&t.gw).await;
    t.call_in_as_server("uac-replaces.xml", port, &["-key", "tone_port", "6198"]);
    let incoming = s.wait_for("call.incoming").await;
    let cid = incoming["call"].as_str().unwrap().to_string();
    answer_as_the_browser(&s, &cid).await;
    let moved = media_moves_to(&s, &cid, "127.0.0.1:6198").await;
    assert_eq!(moved["state"], "answered", "the call moved: {moved}");
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup", "{ended}");
    t.finish().await;
}

/// A switch sends the digits it collects as SIP INFO, both forms
/// (`tests/sipp/uas-sends-info-dtmf.xml`): each gets 200 (SIPp checks) and
/// becomes `call.dtmf` for the browser, in order.
#[tokio::test]
async fn a_switchs_info_dtmf_reaches_the_browser_in_both_forms() {
    let t = SipTest::toward("uas-sends-info-dtmf.xml");
    let mut s = ApiSession::open(&t.gw).await;
    s.call("5000", OFFER).await;
    s.wait_for("call.answered").await;
    let mut digits = String::new();
    for _ in 0..3 {
        digits.push_str(
            s.wait_for("call.dtmf").await["digit"]
                .as_str()
                .unwrap_or("?"),
        );
    }
    assert_eq!(digits, "4#9");
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup");
    t.finish().await;
}

/// UDP sockets bound to 127.0.0.5 on this host (/proc/net/udp writes an
/// IPv4 address as the hex of its bytes in host order: 0500007F on x86).
fn sockets_on_127_0_0_5() -> usize {
    let hex = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 5]));
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|line| {
            line.split_whitespace()
                .nth(1)
                .is_some_and(|local| local.starts_with(&format!("{hex}:")))
        })
        .count()
}

/// `[sip] media-address` is what our offer carries (c= and o=), and the
/// SIP leg's sockets are bound to it, so media leaves from it; they are
/// gone after the call.
#[tokio::test]
async fn the_sip_leg_uses_the_configured_media_address() {
    let t = SipTest::toward_over(
        "uas-media-address.xml",
        Transport::Udp,
        "media-address = \"127.0.0.5\"\n",
    );
    let mut s = ApiSession::open(&t.gw).await;
    let cid = s.call("5000", OFFER).await;
    s.wait_for("call.answered").await;
    assert_eq!(sockets_on_127_0_0_5(), 2, "the call's RTP and RTCP sockets");
    s.hang_up(&cid).await;
    s.wait_for("call.ended").await;
    t.finish().await;
    assert_eq!(sockets_on_127_0_0_5(), 0, "closed with the call");
}

/// A session for user 1001, then SIPp's `scenario` calls it over
/// `transport`: the session and its `call.incoming`.
async fn ring_the_browser(
    t: &mut SipTest,
    scenario: &str,
    transport: Transport,
) -> (ApiSession, Value) {
    let mut s = ApiSession::open(&t.gw).await;
    t.call_in(scenario, transport);
    let incoming = s.wait_for("call.incoming").await;
    (s, incoming)
}

/// A browser's answer to our offer: the fixture's ICE, fingerprint and
/// codecs (PCMU among them), as Chromium would answer with setup:active.
fn browser_answer() -> String {
    OFFER.replace("a=setup:actpass", "a=setup:active")
}

/// The browser's early media on incoming call `cid` with [`browser_answer`]:
/// the status and body of `…/progress`.
async fn progress_as_the_browser(s: &ApiSession, cid: &str) -> (u16, Value) {
    s.post(
        &format!("/calls/{cid}/progress"),
        json!({"sdp": browser_answer()}),
    )
    .await
}

/// Answers incoming call `cid` with [`browser_answer`]; it must be taken.
async fn answer_as_the_browser(s: &ApiSession, cid: &str) {
    let (status, body) = s
        .post(
            &format!("/calls/{cid}/answer"),
            json!({"sdp": browser_answer()}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn an_incoming_call_answered_by_the_browser() {
    let mut t = SipTest::gateway(Transport::Udp, "");
    let (mut s, incoming) = ring_the_browser(&mut t, "uac", Transport::Udp).await;
    let cid = incoming["call"].as_str().unwrap().to_string();
    assert_eq!(incoming["to"], "1001");
    assert_eq!(incoming["from"], "sipp");
    // SIPp's From is `sipp <sip:sipp@…>`, and it asserts nothing.
    assert_eq!(incoming["display_name"], "sipp", "{incoming}");
    assert_eq!(incoming["auto_answer"], Value::Null, "{incoming}");
    assert_eq!(incoming["identity"]["asserted"], false, "{incoming}");
    assert_eq!(incoming["identity"]["display_name"], "sipp");
    assert!(
        incoming["identity"]["uri"]
            .as_str()
            .is_some_and(|u| u.starts_with("sip:sipp@127.0.0.1")),
        "{incoming}"
    );
    let offer = incoming["sdp"].as_str().unwrap();
    assert!(
        offer.contains("a=ice-lite") && offer.contains("a=fingerprint:sha-256"),
        "{offer}"
    );
    assert!(
        offer.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "DTLS and SDES both offered"
    );
    assert!(offer.contains("a=rtpmap:0 PCMU/8000"));
    // A bad answer is refused and changes nothing.
    let (status, body) = s
        .post(
            &format!("/calls/{cid}/answer"),
            json!({"sdp": "v=0\r\nnonsense"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_sdp"))
    );
    answer_as_the_browser(&s, &cid).await;
    let answered = s.wait_for("call.answered").await;
    assert!(
        answered.get("sdp").is_none(),
        "no SDP for an incoming call's answer"
    );
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup");
    t.finish().await;
}

#[tokio::test]
async fn the_caller_cancels_while_the_browser_rings() {
    let mut t = SipTest::gateway(Transport::Udp, "");
    let mut s = ApiSession::open(&t.gw).await;
    t.call_in("uac-cancel.xml", Transport::Udp);
    s.wait_for("call.incoming").await;
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "cancelled");
    assert_eq!(ended["sip_status"], 487);
    t.finish().await;
}

#[tokio::test]
async fn the_browser_rejects_an_incoming_call() {
    let mut t = SipTest::gateway(Transport::Udp, "");
    let (mut s, incoming) = ring_the_browser(&mut t, "uac-486.xml", Transport::Udp).await;
    let cid = incoming["call"].as_str().unwrap().to_string();
    let (status, body) = s
        .post(&format!("/calls/{cid}/reject"), json!({"status": 999}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_status"))
    );
    let (status, _) = s.post(&format!("/calls/{cid}/reject"), json!({})).await;
    assert_eq!(status, 200);
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "rejected");
    assert_eq!(ended["sip_status"], 486);
    t.finish().await;
}

#[tokio::test]
async fn a_call_for_a_user_never_seen_gets_480_as_an_offline_one_does() {
    // The same answer as for a user whose session ended (no user oracle).
    let mut t = SipTest::gateway(Transport::Udp, "");
    t.call_in("uac-480.xml", Transport::Udp);
    t.finish().await;
}

#[tokio::test]
async fn the_far_end_holds_and_resumes() {
    let t = SipTest::toward("uas-reinvite-hold.xml");
    let mut s = ApiSession::open(&t.gw).await;
    let cid = s.call("5000", OFFER).await;
    s.wait_for("call.answered").await;
    let held = s.wait_for("call.held").await;
    assert_eq!(
        (held["call"].as_str(), held["by"].as_str()),
        (Some(cid.as_str()), Some("remote"))
    );
    let resumed = s.wait_for("call.resumed").await;
    assert_eq!(resumed["by"], "remote");
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup");
    t.finish().await;
}

#[tokio::test]
async fn we_hold_and_resume_the_far_end() {
    let t = SipTest::toward("uas-accept-hold.xml");
    let mut s = ApiSession::open(&t.gw).await;
    let cid = s.call("5000", OFFER).await;
    s.wait_for("call.answered").await;
    let (status, body) = s.post(&format!("/calls/{cid}/hold"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let held = s.wait_for("call.held").await;
    assert_eq!(held["by"], "local");
    let (status, body) = s.post(&format!("/calls/{cid}/resume"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let resumed = s.wait_for("call.resumed").await;
    assert_eq!(resumed["by"], "local");
    s.hang_up(&cid).await;
    assert_eq!(s.wait_for("call.ended").await["reason"], "hangup");
    t.finish().await;
}

/// A blind transfer from the agent (`tests/sipp/uas-blind-transfer.xml`):
/// the switch declines the first REFER (603: `call.transfer` failed, the
/// call goes on) and takes the second (202), reporting the target's
/// progress by NOTIFY; its 200 sipfrag ends our call as transferred with a
/// BYE. Bad requests are refused before any REFER goes out.
#[tokio::test]
async fn the_agent_transfers_a_call_blind() {
    let t = SipTest::toward("uas-blind-transfer.xml");
    let mut s = ApiSession::open(&t.gw).await;
    let cid = s.call("5000", OFFER).await;
    let transfer = format!("/calls/{cid}/transfer");
    s.wait_for("call.answered").await;
    for (body, code) in [
        (json!({}), "invalid_transfer"),
        (json!({"to": "5001", "replaces": "x"}), "invalid_transfer"),
        (json!({"replaces": cid}), "invalid_transfer"),
        (json!({"replaces": "no-such-call"}), "invalid_transfer"),
        (json!({"to": "50 01"}), "invalid_destination"),
        (
            json!({"to": "sip:5001@elsewhere.example"}),
            "destination_not_allowed",
        ),
    ] {
        let (status, answer) = s.post(&transfer, body.clone()).await;
        assert!(status == 400 || status == 403, "{body}: {status} {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
    }
    let (status, body) = s.post(&transfer, json!({"to": "5001"})).await;
    assert_eq!(status, 202, "{body}");
    let failed = s.wait_for("call.transfer").await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["sip_status"], 603);
    let (status, body) = s.post(&transfer, json!({"to": "5001"})).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = s.post(&transfer, json!({"to": "5001"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "transfer_in_progress");
    let accepted = s.wait_for("call.transfer").await;
    assert_eq!(accepted["state"], "accepted", "{accepted}");
    let trying = s.wait_for("call.transfer").await;
    assert_eq!(trying["state"], "trying", "{trying}");
    assert_eq!(trying["sip_status"], 100);
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "transferred", "{ended}");
    t.finish().await;
}

/// An attended transfer (`tests/sipp/uas-attended-transfer.xml`): the
/// agent's call to 5000 and its consultation with 5001 are joined by a
/// REFER in the first naming the second's dialog in Replaces (SIPp checks
/// it); on the switch's success both calls end as transferred, with a BYE
/// each.
#[tokio::test]
async fn the_agent_joins_two_calls_by_an_attended_transfer() {
    let t = SipTest::toward_calls("uas-attended-transfer.xml", 2);
    let mut s = ApiSession::open(&t.gw).await;
    let customer = s.call("5000", OFFER).await;
    s.wait_for("call.answered").await;
    let consultation = s.call("5001", OFFER).await;
    s.wait_for("call.answered").await;
    let (status, body) = s
        .post(
            &format!("/calls/{customer}/transfer"),
            json!({"replaces": consultation}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let accepted = s.wait_for("call.transfer").await;
    assert_eq!(accepted["state"], "accepted", "{accepted}");
    let mut ended = Vec::new();
    for _ in 0..2 {
        let e = s.wait_for("call.ended").await;
        assert_eq!(e["reason"], "transferred", "{e}");
        ended.push(e["call"].as_str().unwrap_or("").to_string());
    }
    ended.sort();
    let mut both = vec![customer, consultation];
    both.sort();
    assert_eq!(ended, both);
    t.finish().await;
}

/// The far end negotiated no telephone-event: DTMF from the API goes as SIP
/// INFO (application/dtmf-relay), which the SIPp scenario checks.
#[tokio::test]
async fn dtmf_goes_as_sip_info_without_telephone_event() {
    let t = SipTest::toward("uas-info-dtmf.xml");
    let mut s = ApiSession::open(&t.gw).await;
    let cid = s.call("5000", OFFER).await;
    s.wait_for("call.answered").await;
    let (status, body) = s
        .post(&format!("/calls/{cid}/dtmf"), json!({"digits": "x"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_dtmf"))
    );
    let (status, body) = s
        .post(&format!("/calls/{cid}/dtmf"), json!({"digits": "7"}))
        .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.hang_up(&cid).await;
    assert_eq!(s.wait_for("call.ended").await["reason"], "hangup");
    t.finish().await;
}

/// Over UDP an unanswered INVITE is retransmitted on timer A; SIPp sees
/// the retransmissions, and the final 486 is ACKed once.
#[tokio::test]
async fn sipp_sees_our_invite_retransmissions() {
    let mut t = SipTest::toward("uas-slow.xml");
    let mut s = ApiSession::open(&t.gw).await;
    s.call("5000", OFFER).await;
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["sip_status"], 486);
    let out = t.peer_output();
    common::assert_sipp_passed(&out);
    let screen = String::from_utf8_lossy(&out.stdout);
    // The INVITE row of SIPp's final screen: messages, then retransmissions.
    let row = screen
        .lines()
        .find(|l| l.contains("--") && l.split_whitespace().any(|w| w == "INVITE"))
        .unwrap_or_else(|| panic!("no INVITE row in SIPp's screen:\n{screen}"));
    let numbers: Vec<u64> = row
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        numbers.len() >= 2 && numbers[0] == 1 && numbers[1] >= 2,
        "one INVITE, retransmitted at least twice: {row}"
    );
    t.finish().await;
}

/// A call over TCP: INVITE, 200, ACK and our BYE on one connection (SIPp's
/// own UAS), and the far end's BYE coming back over it too.
#[tokio::test]
async fn calls_over_tcp() {
    let t = SipTest::toward_over("uas", Transport::Tcp, "");
    let mut s = ApiSession::open(&t.gw).await;
    let cid = s.call("5000", OFFER).await;
    s.wait_for("call.answered").await;
    s.hang_up(&cid).await;
    assert_eq!(s.wait_for("call.ended").await["reason"], "hangup");
    t.finish().await;

    let t = SipTest::toward_over("uas-answer-bye.xml", Transport::Tcp, "");
    let mut s = ApiSession::open(&t.gw).await;
    s.call("5000", OFFER).await;
    s.wait_for("call.answered").await;
    assert_eq!(s.wait_for("call.ended").await["reason"], "remote_hangup");
    t.finish().await;
}

/// A user whose session ended is temporarily unavailable (480), not unknown.
#[tokio::test]
async fn a_call_for_a_user_whose_session_ended_gets_480() {
    let mut t = SipTest::gateway(Transport::Udp, "");
    let s = ApiSession::open(&t.gw).await;
    common::delete_session(&t.gw.api(), &s.created).await;
    t.call_in("uac-480.xml", Transport::Udp);
    t.finish().await;
}

/// `[sip] srtp = "required"`: the INVITE offers RTP/SAVP with two SDES keys
/// (SIPp checks them); a far end that answers plain RTP gets a BYE, and the
/// browser learns why (488).
#[tokio::test]
async fn required_srtp_hangs_up_on_a_plain_answer() {
    an_unusable_answer_ends_the_call("uas-plain-to-srtp.xml", None).await;
}

/// Calls SIPp's `scenario` with `[sip] srtp = "required"`: its answer is
/// one the gateway cannot use, so the call ends with 488 (and the log says
/// `why`, when given).
async fn an_unusable_answer_ends_the_call(scenario: &str, why: Option<&str>) {
    let t = SipTest::toward_over(scenario, Transport::Udp, "srtp = \"required\"\n");
    let mut s = ApiSession::open(&t.gw).await;
    s.call("5000", OFFER).await;
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["sip_status"], 488, "{ended}");
    if let Some(why) = why {
        assert!(
            t.gw.log_shows(why, Duration::from_secs(5)),
            "the log says {why:?}"
        );
    }
    t.finish().await;
}

/// An SDES answer that hands our own offered key back (both directions
/// under one key) is refused like an unusable answer: ACK, BYE, and the
/// browser is told.
#[tokio::test]
async fn an_answer_repeating_our_sdes_key_is_refused() {
    an_unusable_answer_ends_the_call("uas-echoed-key.xml", Some("repeats the key")).await;
}

/// `[sip] srtp = "required"`: an incoming offer without keys gets 488 and
/// the browser hears nothing of it.
#[tokio::test]
async fn required_srtp_refuses_a_plain_offer() {
    let mut t = SipTest::gateway(Transport::Udp, "srtp = \"required\"\n");
    let s = ApiSession::open(&t.gw).await;
    t.call_in("uac-rtp-488.xml", Transport::Udp);
    common::assert_sipp_passed(&t.peer_output());
    assert_eq!(s.events(0).await, Vec::<Value>::new());
    t.finish().await;
}

/// `[sip] srtp = "off"`: an incoming RTP/SAVP offer gets 488.
#[tokio::test]
async fn srtp_off_refuses_a_savp_offer() {
    let mut t = SipTest::gateway(Transport::Udp, "");
    let _s = ApiSession::open(&t.gw).await;
    t.call_in("uac-savp-488.xml", Transport::Udp);
    t.finish().await;
}

/// With `[sip] transport = "tcp"` a caller may open its own connection to
/// the gateway's SIP port: the call comes in over it, our answers and the
/// caller's BYE go over it, and the connection is let go at the end.
#[tokio::test]
async fn a_caller_connects_to_us_over_tcp() {
    let mut t = SipTest::gateway(Transport::Tcp, "");
    let (mut s, incoming) = ring_the_browser(&mut t, "uac", Transport::Tcp).await;
    let cid = incoming["call"].as_str().unwrap().to_string();
    answer_as_the_browser(&s, &cid).await;
    s.wait_for("call.answered").await;
    assert_eq!(s.wait_for("call.ended").await["reason"], "remote_hangup");
    let gw = t.finish().await;
    assert!(gw.log().contains("SIP over TCP: connection accepted"));
}

/// The SIP port takes at most 32 connections from one address and 256 in
/// all: the next is closed at once (and counted), and a place freed is
/// taken again.
#[tokio::test]
async fn the_sip_port_caps_its_connections() {
    use tokio::io::AsyncReadExt;
    let t = SipTest::gateway(Transport::Tcp, "trusted-sources = [\"127.0.0.0/8\"]\n");
    let from = |host: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, host], 0)))
            .unwrap();
        socket.connect(t.gw.sip).await.unwrap()
    };
    let closed_at_once = |mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    };
    let refused = "gateway_sip_refused_total{reason=\"too_many_connections\"}";
    // 32 from one address; the 33rd is refused.
    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(from(1).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        closed_at_once(from(1).await).await,
        "the 33rd from one address"
    );
    assert_eq!(t.gw.metric(refused).await, 1.0);
    // 256 in all, from 8 addresses.
    for host in 2..=8 {
        for _ in 0..32 {
            held.push(from(host).await);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(closed_at_once(from(9).await).await, "the 257th connection");
    assert_eq!(t.gw.metric(refused).await, 2.0);
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !closed_at_once(from(9).await).await,
        "a freed place is taken again"
    );
    assert!(t.gw.log().contains("too many connections"));
}

/// The session timer cases take a minute each (90 s is the shortest
/// interval RFC 4028 allows): they run side by side, each with its own
/// gateway and SIPp. (A switch refreshing its call to the browser is a
/// browser test, with the audio heard throughout: tests/browser_calls.rs.)
#[tokio::test]
async fn session_timers_with_switches() {
    tokio::join!(
        a_switchs_session_timer_floor_and_our_refresh(),
        a_refresh_that_never_comes_ends_the_call(),
    );
}

/// No browser media in these calls (the answer is a fixture): the RTP
/// timeout is put past the session timers' minute.
const LONG_CALL: &str = "[media]\nrtp-timeout-s = 600\nconsent-timeout-s = 600\n";

/// Session timers (RFC 4028) with `session-expires-s = 90` toward a
/// switch that demands at least 120 s: its 422 makes us ask again with its
/// Min-SE, its 200 makes us the refresher, and our UPDATE at 60 s keeps
/// the call up until the switch hangs up (SIPp checks each header).
async fn a_switchs_session_timer_floor_and_our_refresh() {
    let t = SipTest::toward_for(
        "uas-session-timer-422.xml",
        90,
        &format!("session-expires-s = 90\n{LONG_CALL}"),
    );
    let mut s = ApiSession::open(&t.gw).await;
    s.call("5000", OFFER).await;
    s.wait_for("call.answered").await;
    let ended = s
        .wait_for_within("call.ended", Duration::from_secs(80))
        .await;
    assert_eq!(ended["reason"], "remote_hangup", "{ended}");
    t.finish().await;
}

/// A switch that took the refresh duty and never refreshes: we end the
/// call with BYE at 60 s of its 90 (SIPp checks the BYE comes), and the
/// browser hears why.
async fn a_refresh_that_never_comes_ends_the_call() {
    let t = SipTest::toward_for("uas-session-timer-silent.xml", 90, LONG_CALL);
    let mut s = ApiSession::open(&t.gw).await;
    s.call("5000", OFFER).await;
    s.wait_for("call.answered").await;
    let answered_at = std::time::Instant::now();
    let ended = s
        .wait_for_within("call.ended", Duration::from_secs(80))
        .await;
    assert_eq!(ended["reason"], "session_expired", "{ended}");
    let after = answered_at.elapsed();
    assert!(
        after >= Duration::from_secs(55),
        "not before the interval's last third: {after:?}"
    );
    t.finish().await;
}

/// A switch that requires 100rel calls the browser: our 180 is reliable
/// (SIPp checks Require and RSeq and PRACKs it), the PRACK gets its 200,
/// and the browser's answer then completes the call.
/// Early media toward a caller is off unless `[sip] early-media` says so:
/// `…/progress` is refused by name and changes nothing (the call still
/// rings and is answered as usual); an answer without SDP is refused too.
#[tokio::test]
async fn early_media_toward_a_caller_needs_the_option() {
    let mut t = SipTest::gateway(Transport::Udp, "");
    let (mut s, incoming) = ring_the_browser(&mut t, "uac", Transport::Udp).await;
    let cid = incoming["call"].as_str().unwrap().to_string();
    let (status, body) = progress_as_the_browser(&s, &cid).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("early_media_disabled")),
        "{body}"
    );
    let (status, body) = s.post(&format!("/calls/{cid}/answer"), json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_sdp")),
        "{body}"
    );
    let (_, view) = s.get(&format!("/calls/{cid}")).await;
    assert_eq!(view["state"], "incoming", "{view}");
    answer_as_the_browser(&s, &cid).await;
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup");
    t.finish().await;
}

/// With `[sip] early-media = true` the browser's `…/progress` gives a
/// caller that requires 100rel a reliable 183 with our SDP — after the
/// PRACK of our reliable 180, which SIPp holds back 1.2 s — and the call
/// is in early media until `…/answer` (an empty body) sends the 200.
#[tokio::test]
async fn a_caller_requiring_100rel_gets_our_early_media_after_the_180s_prack() {
    let mut t = SipTest::gateway(Transport::Udp, "early-media = true\n");
    let (mut s, incoming) = ring_the_browser(&mut t, "uac-100rel-early.xml", Transport::Udp).await;
    let cid = incoming["call"].as_str().unwrap().to_string();
    // The switch's From names the queue; the caller it asserts is who calls.
    assert_eq!(incoming["display_name"], "Queue \"Sales\"", "{incoming}");
    assert_eq!(
        incoming["identity"],
        json!({"uri": "sip:+15551234567@127.0.0.1;user=phone", "display_name": "Jane Doe", "asserted": true}),
        "{incoming}"
    );
    let (status, body) = progress_as_the_browser(&s, &cid).await;
    assert_eq!(status, 200, "{body}");
    let (_, view) = s.get(&format!("/calls/{cid}")).await;
    assert_eq!(view["state"], "early_media", "{view}");
    let (status, body) = progress_as_the_browser(&s, &cid).await;
    assert_eq!(status, 409, "once is enough: {body}");
    // Time for both PRACKs before the answer.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = s.post_empty(&format!("/calls/{cid}/answer")).await;
    assert_eq!(status, 200, "{body}");
    let answered = s.wait_for("call.answered").await;
    assert!(answered.get("sdp").is_none(), "{answered}");
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup", "{ended}");
    t.finish().await;
}

#[tokio::test]
async fn a_caller_requiring_reliable_provisionals_gets_a_pracked_180() {
    let mut t = SipTest::gateway(Transport::Udp, "");
    let (mut s, incoming) = ring_the_browser(&mut t, "uac-100rel.xml", Transport::Udp).await;
    let cid = incoming["call"].as_str().unwrap().to_string();
    // Time for the 180 and its PRACK before the answer.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    answer_as_the_browser(&s, &cid).await;
    let ended = s.wait_for("call.ended").await;
    assert_eq!(ended["reason"], "remote_hangup", "{ended}");
    t.finish().await;
}
