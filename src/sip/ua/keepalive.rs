//! The OPTIONS keepalive: a ping to each server every interval; their
//! answers (or their absence) say which servers are up. When the server in
//! use is down and another is up, registrations move there (each one's
//! REGISTER sent again) and new calls go there; calls in progress stay with
//! the server their dialog began on. The server in use stays until it is
//! found down — a primary that comes back is not taken back at once, so a
//! flapping server does not have every agent re-register each time.

use std::net::SocketAddr;
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
        for i in 0..self.cfg.servers.len() {
            let ping = self.options_request();
            self.send(now, ping, Owner::Keepalive(i));
        }
    }

    /// `server` answered a request (true) or let one go unanswered. Returns
    /// whether that moved us to another server.
    pub(super) fn server_answered(&mut self, now: Instant, server: SocketAddr, up: bool) -> bool {
        let Some(i) = self.cfg.servers.iter().position(|s| *s == server) else {
            return false;
        };
        if self.server_up[i] != Some(up) {
            self.server_up[i] = Some(up);
            self.note_server_up(server, up);
        }
        let moved = self.fail_over(now);
        let current_up = self.server_up[self.current] == Some(true);
        if i == self.current || moved {
            self.set_reachable(current_up);
        }
        moved
    }

    /// Moves to the first server found up when the one in use is found
    /// down; its registrations go along. True if it moved.
    fn fail_over(&mut self, now: Instant) -> bool {
        if self.server_up.get(self.current) != Some(&Some(false)) {
            return false;
        }
        let Some(next) = self.server_up.iter().position(|up| *up == Some(true)) else {
            return false;
        };
        let (from, to) = (self.cfg.servers[self.current], self.cfg.servers[next]);
        self.current = next;
        self.events.push_back(UaEvent::FailedOver { from, to });
        // What the old server was asked for registrations is dropped;
        // each asks the new one.
        self.drop_clients(|owner| !matches!(owner, Owner::Registration(_)));
        let ids: Vec<String> = self.registrations.keys().cloned().collect();
        for id in ids {
            if let Some(request) = self.registrations.get_mut(&id).and_then(|r| r.restart()) {
                self.send(now, request, Owner::Registration(id.clone()));
            }
            self.note_registration(&id);
        }
        true
    }

    /// Each server's state is news only when there are several; with
    /// one, [`UaEvent::ServerReachable`] says it all.
    fn note_server_up(&mut self, server: SocketAddr, up: bool) {
        if self.cfg.servers.len() > 1 {
            self.events.push_back(UaEvent::ServerUp { server, up });
        }
    }

    /// The server in use answered something (true) or a ping to it went
    /// unanswered.
    pub(super) fn set_reachable(&mut self, reachable: bool) {
        if let Some(seen) = self.server_up.get_mut(self.current) {
            if *seen != Some(reachable) {
                *seen = Some(reachable);
                let server = self.cfg.servers[self.current];
                self.note_server_up(server, reachable);
            }
        }
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
