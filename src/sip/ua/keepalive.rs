//! The OPTIONS keepalive: a ping to the server every interval; its answers
//! (or their absence) say whether the server is reachable, for `/readyz`.

use std::time::Instant;

use super::{Owner, UaEvent, UserAgent, Wakeup};
use crate::sip::identity::Identity;
use crate::sip::message::own_request;

impl UserAgent {
    /// The ping is due: send it, and wake for the next.
    pub(super) fn keepalive_due(&mut self, now: Instant) {
        let (Some(at), Some(interval)) = (self.next_keepalive, self.cfg.keepalive) else {
            return;
        };
        if now < at {
            self.wakeups.set(Wakeup::Keepalive, Some(at));
            return;
        }
        self.next_keepalive = Some(now + interval);
        self.wakeups.set(Wakeup::Keepalive, self.next_keepalive);
        let ping = self.options_request();
        self.send(now, ping, Owner::Keepalive);
    }

    /// The server answered something (true) or a ping went unanswered.
    pub(super) fn set_reachable(&mut self, reachable: bool) {
        if self.reachable != Some(reachable) {
            self.reachable = Some(reachable);
            self.events.push_back(UaEvent::ServerReachable(reachable));
        }
    }

    fn options_request(&mut self) -> rsip::Request {
        let Identity { domain, local, .. } = &self.cfg.identity;
        let via = self.cfg.identity.via_transport();
        let via_params = self.cfg.identity.via_params();
        let text = format!(
            "OPTIONS sip:{domain} SIP/2.0\r\n\
             Via: SIP/2.0/{via} {local};branch=z9hG4bK{branch}{via_params}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:gateway@{domain}>;tag={tag}\r\n\
             To: <sip:{domain}>\r\n\
             Call-ID: {call_id}@webrtc-sip-gateway\r\n\
             CSeq: 1 OPTIONS\r\n\
             Accept: application/sdp\r\n\
             User-Agent: webrtc-sip-gateway/{version}\r\n\
             Content-Length: 0\r\n\r\n",
            branch = self.random.hex(12),
            tag = self.random.hex(12),
            call_id = self.random.hex(12),
            version = env!("CARGO_PKG_VERSION"),
        );
        own_request(&text, rsip::Method::Options)
    }
}
