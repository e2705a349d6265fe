//! A browser leg's control side, sans-IO: the STUN and DTLS datagrams the
//! relay hands over go through the ICE-lite agent and the DTLS endpoint; out
//! come datagrams to send, the selected browser address, the SRTP keys, or
//! the reason the leg failed. A driver (the call's task) feeds it and applies
//! the results to the relay.
//!
//! Every datagram comes with the local address it was sent to, and every
//! reply goes back from that address (on the pair it came on): a browser
//! checks that a response comes from where it sent the request, and a host
//! with several addresses would otherwise answer from the routing table's
//! choice.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::dtls::{DtlsError, DtlsIdentity, DtlsInput, DtlsLeg, DtlsOutput, SrtpKeys};
use super::ice::{IceEvent, IceInput, IceLiteAgent, Pair};
use crate::media::rtp::{classify, WebPacketKind};
use crate::sdp::{Fingerprint, IceCredentials};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebLegEvent {
    /// Send this datagram from the leg's socket, to `to`, leaving from our
    /// address `from` (None: the kernel's choice).
    Transmit {
        to: SocketAddr,
        from: Option<IpAddr>,
        data: Vec<u8>,
    },
    /// Media goes to and comes from this pair's browser address and leaves
    /// from its local one: the pair the browser nominated, or before that
    /// the authenticated one DTLS completed on (SDES: that passed the first
    /// check). RFC 8445 §12.1 lets media flow on a valid pair before
    /// nomination; browsers nominate some 50 ms after their first
    /// successful check.
    Selected(Pair),
    /// DTLS finished with the browser verified: SRTP keys for the relay.
    Keys(SrtpKeys),
    /// The leg failed (`fingerprint_mismatch`, handshake error).
    Failed(DtlsError),
    /// ICE consent lost: the media path is gone.
    MediaTimeout,
    /// Nothing more now: wake the leg at this instant (None: only a packet
    /// wakes it).
    Timeout(Option<Instant>),
}

/// What the leg is told: a datagram from the browser, or the time.
#[derive(Debug, Clone, Copy)]
pub enum WebLegInput<'a> {
    /// A STUN or DTLS datagram from the browser's `from`, sent to our
    /// address `to`; `bridged_from`: the browser's TCP address when `from`
    /// is our loopback socket for its ICE-TCP connection.
    Packet {
        from: SocketAddr,
        to: Option<IpAddr>,
        data: &'a [u8],
        bridged_from: Option<SocketAddr>,
    },
    /// The instant [`WebLegEvent::Timeout`] named has come.
    Timeout,
}

pub struct WebLeg {
    ice: IceLiteAgent,
    /// The DTLS handshake; `None` for an SDES leg, and once the browser's
    /// media shows the handshake is over ([`WebLeg::media_authenticated`]).
    /// Boxed, so that its 3.5 KiB go with it.
    dtls: Option<Box<DtlsLeg>>,
    /// Keyed by SDES: no DTLS ever runs.
    sdes: bool,
    /// Where DTLS goes when we are the active side or answer a flight.
    dtls_peer: Option<Pair>,
    events: VecDeque<WebLegEvent>,
    keys_reported: bool,
    failed: bool,
    media_pair: Option<Pair>,
    /// An ICE restart is under way: the first pair that passes a check with
    /// the new credentials carries the media at once (the browser sends on
    /// it before it nominates; waiting would drop seconds of audio).
    restarting: bool,
}

impl WebLeg {
    /// A leg keyed by DTLS (`dtls_active`: we send the ClientHello).
    pub fn with_dtls(
        local: IceCredentials,
        remote: IceCredentials,
        consent_timeout: std::time::Duration,
        identity: &DtlsIdentity,
        peer_fingerprint: Fingerprint,
        dtls_active: bool,
        now: Instant,
    ) -> Result<Self, DtlsError> {
        Ok(WebLeg {
            ice: IceLiteAgent::new(local, remote, consent_timeout, now),
            dtls: Some(Box::new(DtlsLeg::new(
                identity,
                peer_fingerprint,
                dtls_active,
                now,
            )?)),
            sdes: false,
            dtls_peer: None,
            events: VecDeque::new(),
            keys_reported: false,
            failed: false,
            media_pair: None,
            restarting: false,
        })
    }

    /// A leg keyed by SDES: only ICE runs here.
    pub fn with_sdes(
        local: IceCredentials,
        remote: IceCredentials,
        consent_timeout: std::time::Duration,
        now: Instant,
    ) -> Self {
        WebLeg {
            ice: IceLiteAgent::new(local, remote, consent_timeout, now),
            dtls: None,
            sdes: true,
            dtls_peer: None,
            events: VecDeque::new(),
            keys_reported: false,
            failed: false,
            media_pair: None,
            restarting: false,
        }
    }

    /// An ICE restart from the browser's new offer: new credentials both
    /// ways; DTLS and the SRTP keys go on as they are (RFC 8842 §4: the
    /// fingerprint is unchanged, so the association is).
    pub fn restart_ice(&mut self, local: IceCredentials, remote: IceCredentials) {
        self.ice.restart(local, remote);
        self.restarting = true;
    }

    /// A new DTLS association with the browser's new certificate
    /// (`peer_fingerprint`; it comes with an ICE restart): a fresh
    /// handshake, whose keys are reported as the first ones were. Media
    /// goes on with the old keys until then (on a path that broke, none).
    pub fn restart_dtls(
        &mut self,
        identity: &DtlsIdentity,
        peer_fingerprint: Fingerprint,
        dtls_active: bool,
        now: Instant,
    ) -> Result<(), DtlsError> {
        self.dtls = Some(Box::new(DtlsLeg::new(
            identity,
            peer_fingerprint,
            dtls_active,
            now,
        )?));
        self.keys_reported = false;
        self.failed = false;
        self.dtls_peer = None;
        Ok(())
    }

    /// The browser's SRTP authenticates with the keys this leg's DTLS
    /// exported, so the browser has our last flight: the handshake is over
    /// on both sides, and nothing of it is needed again (a DTLS 1.2 server
    /// keeps its last flight only to answer the client's retransmission of
    /// its own). The handshake's state goes — flight buffers, record keys,
    /// transcript: some 7 KiB a call — and DTLS datagrams after it (an
    /// alert at hang-up) are ignored. Before the keys it changes nothing.
    pub fn media_authenticated(&mut self) {
        if self.keys_reported {
            self.dtls = None;
        }
    }

    pub fn handle_input(&mut self, now: Instant, input: WebLegInput<'_>) {
        match input {
            WebLegInput::Packet {
                from,
                to,
                data,
                bridged_from,
            } => self.handle_packet(now, from, to, data, bridged_from),
            WebLegInput::Timeout => self.handle_timeout(now),
        }
    }

    /// What to do next, in order; [`WebLegEvent::Timeout`] once nothing is left.
    pub fn poll_output(&mut self) -> WebLegEvent {
        self.events
            .pop_front()
            .unwrap_or_else(|| WebLegEvent::Timeout(self.next_timeout()))
    }

    /// A datagram from the browser's `from`, sent to our address `to`.
    fn handle_packet(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: Option<IpAddr>,
        data: &[u8],
        bridged_from: Option<SocketAddr>,
    ) {
        if self.failed {
            return;
        }
        let pair = Pair {
            remote: from,
            local: to,
        };
        match classify(data) {
            WebPacketKind::Stun => {
                // A datagram that is no Binding request is dropped.
                let stun = IceInput::Stun {
                    pair,
                    data,
                    bridged_from,
                };
                let _ = self.ice.handle_input(now, stun);
                self.take_ice_events();
                // SDES keys are known already: media may use the first valid pair.
                if self.sdes && self.media_pair.is_none() && self.ice.is_validated(from) {
                    self.use_for_media(pair);
                }
                // The first check with an ICE restart's new credentials.
                if self.restarting && !self.ice.restart_pending() && self.ice.is_validated(from) {
                    self.restarting = false;
                    if self.keys_reported || self.sdes {
                        self.use_for_media(pair);
                    }
                }
            }
            WebPacketKind::Dtls => {
                // DTLS only from an address that passed an ICE check.
                if !self.ice.is_validated(from) {
                    return;
                }
                self.dtls_peer = Some(pair);
                if let Some(dtls) = self.dtls.as_mut() {
                    let result = dtls.handle_input(now, DtlsInput::Packet(data));
                    self.after_dtls(result);
                }
            }
            _ => {}
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.failed {
            return;
        }
        let _ = self.ice.handle_input(now, IceInput::Timeout);
        self.take_ice_events();
        if let Some(dtls) = self.dtls.as_mut() {
            if dtls.next_timeout().is_some_and(|t| now >= t) {
                let result = dtls.handle_input(now, DtlsInput::Timeout);
                self.after_dtls(result);
            }
        }
    }

    /// When the leg next needs [`WebLegInput::Timeout`] (its owner asks
    /// without draining the outputs).
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.failed {
            return None;
        }
        let dtls = self.dtls.as_deref().and_then(DtlsLeg::next_timeout);
        [self.ice.next_timeout(), dtls].into_iter().flatten().min()
    }

    fn use_for_media(&mut self, pair: Pair) {
        if self.media_pair != Some(pair) {
            self.media_pair = Some(pair);
            self.events.push_back(WebLegEvent::Selected(pair));
        }
    }

    fn take_ice_events(&mut self) {
        let mut selected = false;
        loop {
            match self.ice.poll_output() {
                IceEvent::Timeout(_) => break,
                IceEvent::Transmit { pair, data } => self.events.push_back(WebLegEvent::Transmit {
                    to: pair.remote,
                    from: pair.local,
                    data,
                }),
                IceEvent::Selected(pair) => {
                    if self.dtls_peer.is_none() {
                        self.dtls_peer = Some(pair);
                    }
                    selected = true;
                    self.use_for_media(pair);
                }
                IceEvent::ConsentLost => self.events.push_back(WebLegEvent::MediaTimeout),
            }
        }
        // As the active side, our first flight waited for an address.
        if selected {
            self.after_dtls(Ok(()));
        }
    }

    fn after_dtls(&mut self, result: Result<(), DtlsError>) {
        let Some(dtls) = self.dtls.as_mut() else {
            return;
        };
        if let Some(pair) = self.dtls_peer.or(self.ice.selected()) {
            while let DtlsOutput::Transmit(data) = dtls.poll_output() {
                self.events.push_back(WebLegEvent::Transmit {
                    to: pair.remote,
                    from: pair.local,
                    data,
                });
            }
        }
        match result {
            Err(e) => {
                self.failed = true;
                self.events.push_back(WebLegEvent::Failed(e));
            }
            Ok(()) => {
                if !self.keys_reported {
                    if let Some(keys) = dtls.keys() {
                        self.keys_reported = true;
                        self.events.push_back(WebLegEvent::Keys(keys.clone()));
                        if let (None, Some(peer)) = (self.media_pair, self.dtls_peer) {
                            self.use_for_media(peer);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webrtc::stun::{self, Builder};
    use std::time::Duration;

    const GATEWAY_PWD: &str = "gateway-password-24chars";

    fn creds(ufrag: &str, pwd: &str) -> IceCredentials {
        IceCredentials {
            ufrag: ufrag.into(),
            pwd: pwd.into(),
        }
    }

    fn browser() -> SocketAddr {
        "192.0.2.7:50000".parse().unwrap()
    }

    /// The browser's nominating check, signed with our password.
    fn nominating_check() -> Vec<u8> {
        Builder::new(stun::BINDING_REQUEST, [7; 12])
            .attribute(stun::ATTR_USERNAME, b"gwuf:brwz")
            .attribute(stun::ATTR_USE_CANDIDATE, &[])
            .attribute(stun::ATTR_PRIORITY, &[0x6e, 0, 0x1e, 0xff])
            .attribute(stun::ATTR_ICE_CONTROLLING, &[1; 8])
            .message_integrity(GATEWAY_PWD.as_bytes())
            .fingerprint()
    }

    fn packet(data: &[u8]) -> WebLegInput<'_> {
        WebLegInput::Packet {
            from: browser(),
            to: None,
            data,
            bridged_from: None,
        }
    }

    /// The leg's events until it waits: the DTLS datagrams it sends, and
    /// whether it gave keys or failed.
    fn drain(leg: &mut WebLeg) -> (Vec<Vec<u8>>, bool, bool) {
        let (mut dtls, mut keyed, mut failed) = (Vec::new(), false, false);
        loop {
            match leg.poll_output() {
                WebLegEvent::Timeout(_) => return (dtls, keyed, failed),
                WebLegEvent::Transmit { data, .. } if classify(&data) == WebPacketKind::Dtls => {
                    dtls.push(data)
                }
                WebLegEvent::Keys(_) => keyed = true,
                WebLegEvent::Failed(_) => failed = true,
                _ => {}
            }
        }
    }

    /// A DTLS leg with our test credentials, the passive side (as toward a
    /// browser offering actpass), expecting the peer's `fingerprint`.
    fn passive_leg(ours: &DtlsIdentity, fingerprint: &Fingerprint, now: Instant) -> WebLeg {
        WebLeg::with_dtls(
            creds("gwuf", GATEWAY_PWD),
            creds("brwz", "browser-password-24char"),
            Duration::from_secs(30),
            ours,
            fingerprint.clone(),
            false,
            now,
        )
        .unwrap()
    }

    /// A leg (the passive DTLS side, as toward a browser offering actpass)
    /// and a browser's DTLS client, checked by ICE; the browser's last
    /// flight is returned with them once the leg has its keys.
    fn keyed_leg(now: Instant) -> (WebLeg, Vec<Vec<u8>>) {
        let (ours, theirs) = (
            DtlsIdentity::generate().unwrap(),
            DtlsIdentity::generate().unwrap(),
        );
        let mut leg = passive_leg(&ours, &theirs.fingerprint, now);
        leg.handle_input(now, packet(&nominating_check()));
        drain(&mut leg);
        let (_, last_flight) = handshake(&mut leg, &ours, &theirs, now);
        (leg, last_flight)
    }

    /// A browser with certificate `theirs` runs its DTLS handshake (as the
    /// client) with `leg`, whose certificate is `ours`, to its end: the
    /// leg's keys and the browser's last flight.
    fn handshake(
        leg: &mut WebLeg,
        ours: &DtlsIdentity,
        theirs: &DtlsIdentity,
        now: Instant,
    ) -> (SrtpKeys, Vec<Vec<u8>>) {
        let mut client = DtlsLeg::new(theirs, ours.fingerprint.clone(), true, now).unwrap();
        let _ = client.handle_input(now, DtlsInput::Timeout);
        for _ in 0..20 {
            let mut flight = Vec::new();
            while let DtlsOutput::Transmit(data) = client.poll_output() {
                flight.push(data);
            }
            let mut keys = None;
            for data in &flight {
                leg.handle_input(now, packet(data));
                loop {
                    match leg.poll_output() {
                        WebLegEvent::Timeout(_) => break,
                        WebLegEvent::Transmit { data, .. }
                            if classify(&data) == WebPacketKind::Dtls =>
                        {
                            client.handle_input(now, DtlsInput::Packet(&data)).unwrap();
                        }
                        WebLegEvent::Keys(k) => keys = Some(k),
                        WebLegEvent::Failed(e) => panic!("the handshake failed: {e}"),
                        _ => {}
                    }
                }
            }
            if let Some(keys) = keys {
                return (keys, flight);
            }
        }
        panic!("no keys after the handshake");
    }

    /// A browser's new peer connection (a new certificate) gets a new DTLS
    /// association on the same leg: the old certificate is refused on it,
    /// and the new one's handshake completes with new keys.
    #[test]
    fn a_new_certificate_gets_a_new_association_and_new_keys() {
        let now = Instant::now();
        let (ours, first, second) = (
            DtlsIdentity::generate().unwrap(),
            DtlsIdentity::generate().unwrap(),
            DtlsIdentity::generate().unwrap(),
        );
        let mut leg = passive_leg(&ours, &first.fingerprint, now);
        leg.handle_input(now, packet(&nominating_check()));
        drain(&mut leg);
        let (old_keys, _) = handshake(&mut leg, &ours, &first, now);
        leg.media_authenticated();
        assert!(leg.dtls.is_none());

        // The old certificate on the new association: refused.
        leg.restart_dtls(&ours, second.fingerprint.clone(), false, now)
            .unwrap();
        let mut stale = DtlsLeg::new(&first, ours.fingerprint.clone(), true, now).unwrap();
        let _ = stale.handle_input(now, DtlsInput::Timeout);
        let mut failed = false;
        for _ in 0..20 {
            let mut flight = Vec::new();
            while let DtlsOutput::Transmit(data) = stale.poll_output() {
                flight.push(data);
            }
            for data in &flight {
                leg.handle_input(now, packet(data));
                let (replies, keyed, f) = drain(&mut leg);
                assert!(!keyed, "keys for the old certificate");
                failed |= f;
                for r in replies {
                    let _ = stale.handle_input(now, DtlsInput::Packet(&r));
                }
            }
            if failed || flight.is_empty() {
                break;
            }
        }
        assert!(failed, "the old certificate is refused");

        // The new certificate (a restart clears the failure).
        leg.restart_dtls(&ours, second.fingerprint.clone(), false, now)
            .unwrap();
        let (new_keys, _) = handshake(&mut leg, &ours, &second, now);
        assert_ne!(new_keys, old_keys);
    }

    #[test]
    fn the_handshake_is_kept_until_the_browsers_media_authenticates() {
        let now = Instant::now();
        let (mut leg, last_flight) = keyed_leg(now);
        // The browser did not hear our last flight and sends its own again:
        // it is answered, since nothing says the browser is done.
        for data in &last_flight {
            leg.handle_input(now, packet(data));
        }
        let (replies, keyed, failed) = drain(&mut leg);
        assert!(!replies.is_empty(), "our last flight again");
        assert!(!keyed && !failed);
        assert!(leg.dtls.is_some());

        // Its SRTP authenticates: the handshake state goes, and DTLS after
        // it gets no answer and fails nothing.
        leg.media_authenticated();
        assert!(leg.dtls.is_none());
        for data in &last_flight {
            leg.handle_input(now, packet(data));
        }
        let (replies, keyed, failed) = drain(&mut leg);
        assert!(replies.is_empty() && !keyed && !failed);
        // ICE goes on: consent checks are still answered.
        leg.handle_input(now, packet(&nominating_check()));
        let answered = std::iter::from_fn(|| match leg.poll_output() {
            WebLegEvent::Timeout(_) => None,
            event => Some(event),
        })
        .any(|e| matches!(e, WebLegEvent::Transmit { data, .. } if classify(&data) == WebPacketKind::Stun));
        assert!(answered);
    }

    #[test]
    fn media_before_the_keys_leaves_the_handshake_alone() {
        let now = Instant::now();
        let id = DtlsIdentity::generate().unwrap();
        let mut leg = passive_leg(&id, &id.fingerprint, now);
        leg.media_authenticated();
        assert!(leg.dtls.is_some());
    }
}
