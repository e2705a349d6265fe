//! DTMF toward the SIP side (RFC 4733): when the next inserted packet of
//! each call is due, and sending it in the call's SIP-bound stream.

use super::worker::Worker;
use crate::media::stats::DropCause;

impl Worker {
    pub(super) fn next_dtmf(&self, now: std::time::Instant) -> Option<std::time::Instant> {
        self.dtmf_slots
            .iter()
            .filter_map(|&slot| {
                self.slots[slot]
                    .as_ref()?
                    .sip_out
                    .dtmf
                    .as_ref()?
                    .next_wakeup(now)
            })
            .min()
    }

    /// Sends the DTMF packets that are due, in each call's SIP-bound stream.
    pub(super) fn send_dtmf(&mut self, now: std::time::Instant) {
        let slots = &mut self.slots;
        self.dtmf_slots.retain(|&slot| {
            let Some(call) = slots.get_mut(slot).and_then(Option::as_mut) else {
                return false;
            };
            let Some((pt, _)) = call.map.sip_telephone_event() else {
                return false;
            };
            loop {
                let timestamp = call.sip_out.timestamp_at(now);
                let Some(packet) = call
                    .sip_out
                    .dtmf
                    .as_mut()
                    .and_then(|d| d.poll(now, timestamp))
                else {
                    break;
                };
                let seq = call.sip_out.inserted_seq();
                let mut buf = [0u8; 64];
                buf[0] = 0x80;
                buf[1] = (u8::from(packet.marker) << 7) | pt;
                buf[2..4].copy_from_slice(&seq.to_be_bytes());
                buf[4..8].copy_from_slice(&packet.timestamp.to_be_bytes());
                buf[8..12].copy_from_slice(&call.sip_out.ssrc.to_be_bytes());
                buf[12..16].copy_from_slice(&packet.payload);
                let len = match call.sip.srtp.as_deref_mut() {
                    Some((_, out)) => match out.protect_rtp(&mut buf, 16) {
                        Ok(n) => n,
                        Err(_) => continue,
                    },
                    None => 16,
                };
                match call
                    .sip
                    .rtp
                    .send_to(&buf[..len], call.sip.rtp_destination())
                {
                    Ok(_) => call.stats.sip.sent(len),
                    Err(_) => call.stats.sip.dropped(DropCause::Overload),
                }
            }
            call.sip_out.dtmf.as_ref().is_some_and(|d| !d.is_idle())
        });
    }
}
