//! Over UDP, a request larger than 1300 bytes goes over a TCP connection
//! to the server instead (RFC 3261 §18.1.1: the path MTU is unknown), its
//! Via saying TCP; when that connection cannot be had, each such request
//! goes again over UDP in a fresh transaction (§18.1.1 allows it).

use std::time::Instant;

use rsip::prelude::*;

use super::UserAgent;
use crate::sip::transaction::ClientTransaction;

/// Over UDP, requests larger than this go over TCP.
pub const UDP_REQUEST_LIMIT: usize = 1300;

/// `request` with the transport of its top Via set to `transport`.
fn with_via_transport(mut request: rsip::Request, transport: &str) -> rsip::Request {
    if let Some(rsip::Header::Via(via)) = request
        .headers
        .iter_mut()
        .find(|h| matches!(h, rsip::Header::Via(_)))
    {
        let value = via.value().to_string();
        if let Some((_, rest)) = value.split_once(' ') {
            *via = rsip::headers::Via::new(format!("SIP/2.0/{transport} {rest}"));
        }
    }
    request
}

impl UserAgent {
    /// The request as it goes (over TCP when too large for UDP) and whether
    /// its transport is reliable.
    pub(super) fn route_for_size(
        &mut self,
        key: &str,
        request: rsip::Request,
    ) -> (rsip::Request, bool) {
        let too_large = !self.cfg.identity.reliable()
            && request.to_string().len() > UDP_REQUEST_LIMIT
            && request.method != rsip::Method::Ack;
        if too_large {
            self.over_stream.insert(key.to_string());
            (with_via_transport(request, "TCP"), true)
        } else {
            let reliable = self.cfg.identity.reliable();
            (request, reliable)
        }
    }

    pub(super) fn stream_failed(&mut self, now: Instant) {
        for key in std::mem::take(&mut self.over_stream) {
            let Some((tx, owner)) = self.clients.remove(&key) else {
                continue;
            };
            let request = with_via_transport(tx.request().clone(), "UDP");
            let tx = ClientTransaction::new(request, false, self.cfg.timers, now);
            self.clients.insert(key.clone(), (tx, owner));
            self.drain_client(now, &key);
        }
    }
}
