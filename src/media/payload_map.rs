//! Payload-type mapping between a call's legs, with each type's clock rate
//! and the telephone-event types: what negotiation hands the relay.

use crate::media::transcode::TranscodeSpec;

/// Payload-type mapping between the legs: `to_sip[web_pt]`, `to_web[sip_pt]`;
/// 255 means "not negotiated: drop". Each mapped type has its clock rate.
#[derive(Clone)]
pub struct PayloadMap {
    pub(crate) to_sip: [u8; 128],
    pub(crate) to_web: [u8; 128],
    /// Clock rate by payload type on each side.
    pub(crate) web_clock: [u32; 128],
    pub(crate) sip_clock: [u32; 128],
    /// The telephone-event types (RFC 4733), if negotiated.
    pub(crate) web_event: Option<u8>,
    pub(crate) sip_event: Option<u8>,
    /// The audio types the relay transcodes between, when the legs share
    /// no codec; None: audio passes through as it is.
    pub(crate) transcode: Option<TranscodeSpec>,
}

impl PayloadMap {
    pub(crate) const NONE: u8 = 255;

    /// From `(web_pt, sip_pt, clock_rate)` triples.
    pub fn new(pairs: &[(u8, u8, u32)]) -> Self {
        let mut map = PayloadMap {
            to_sip: [Self::NONE; 128],
            to_web: [Self::NONE; 128],
            web_clock: [0; 128],
            sip_clock: [0; 128],
            web_event: None,
            sip_event: None,
            transcode: None,
        };
        for &(web, sip, clock) in pairs {
            if web < 128 && sip < 128 {
                map.to_sip[usize::from(web)] = sip;
                map.to_web[usize::from(sip)] = web;
                map.web_clock[usize::from(web)] = clock;
                map.sip_clock[usize::from(sip)] = clock;
            }
        }
        map
    }

    /// Audio transcoded between the browser's Opus (`spec.web_pt`, 48 kHz
    /// clock) and the SIP side's codec (`spec.sip_pt` at its clock).
    pub fn transcoded(spec: TranscodeSpec) -> Self {
        let mut map = Self::new(&[]);
        let (web, sip) = (usize::from(spec.web_pt), usize::from(spec.sip_pt));
        if web < 128 && sip < 128 {
            map.to_sip[web] = spec.sip_pt;
            map.to_web[sip] = spec.web_pt;
            map.web_clock[web] = crate::media::transcode::OPUS_CLOCK;
            map.sip_clock[sip] = spec.sip_codec.rtp_clock();
            map.transcode = Some(spec);
        }
        map
    }

    /// What the call transcodes, if it does.
    pub fn transcode(&self) -> Option<TranscodeSpec> {
        self.transcode
    }

    /// Adds the telephone-event mapping; the clock rates may differ (the
    /// relay rescales event durations between them).
    pub fn with_telephone_event(
        mut self,
        web_pt: u8,
        web_clock: u32,
        sip_pt: u8,
        sip_clock: u32,
    ) -> Self {
        if web_pt < 128 && sip_pt < 128 {
            self.to_sip[usize::from(web_pt)] = sip_pt;
            self.to_web[usize::from(sip_pt)] = web_pt;
            self.web_clock[usize::from(web_pt)] = web_clock;
            self.sip_clock[usize::from(sip_pt)] = sip_clock;
            self.web_event = Some(web_pt);
            self.sip_event = Some(sip_pt);
        }
        self
    }

    /// The SIP side's telephone-event type and clock rate.
    pub fn sip_telephone_event(&self) -> Option<(u8, u32)> {
        self.sip_event
            .map(|pt| (pt, self.sip_clock[usize::from(pt)]))
    }
}
