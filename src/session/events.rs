//! The events a session's long-poll returns (`docs/api.md`, "Events").

use serde::Serialize;

/// One queued event with its sequence number.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub seq: u64,
    #[serde(flatten)]
    pub event: SessionEvent,
}

/// Who calls an incoming call, and whom: the From's user, the Request-URI's
/// user, the From's display name (null when none) and the caller's identity.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct IncomingCaller {
    pub from: String,
    pub to: String,
    pub display_name: Option<String>,
    pub identity: CallerIdentity,
    /// The switch's call data: the INVITE's headers that `[sip]
    /// incoming-header-prefixes` and `incoming-headers` pass, by name.
    pub headers: std::collections::BTreeMap<String, Vec<String>>,
    /// The switch asks for the call to be answered without the agent
    /// (Call-Info answer-after, Alert-Info auto-answer, Answer-Mode: Auto).
    pub auto_answer: Option<AutoAnswer>,
}

/// When an incoming call asks to be answered by itself.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct AutoAnswer {
    pub after_s: u32,
}

/// The identity of an incoming call's caller: what the switch asserted
/// (P-Asserted-Identity) or, when it asserted nothing, the From.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct CallerIdentity {
    pub uri: String,
    pub display_name: Option<String>,
    pub asserted: bool,
}

/// Event types and their fields, serialized with `"type"` as the tag.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "type")]
pub enum SessionEvent {
    #[serde(rename = "call.incoming")]
    CallIncoming {
        call: String,
        #[serde(flatten)]
        caller: IncomingCaller,
        sdp: String,
    },
    #[serde(rename = "call.ringing")]
    CallRinging { call: String },
    #[serde(rename = "call.early_media")]
    CallEarlyMedia { call: String, sdp: String },
    #[serde(rename = "call.answered")]
    CallAnswered {
        call: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        sdp: Option<String>,
    },
    #[serde(rename = "call.held")]
    CallHeld { call: String, by: String },
    #[serde(rename = "call.resumed")]
    CallResumed { call: String, by: String },
    #[serde(rename = "call.dtmf")]
    CallDtmf { call: String, digit: String },
    /// How the browser's transfer goes: `accepted`, `trying` (the
    /// target's provisional status), `failed` (with the status when one
    /// came). Success ends the call with reason `transferred`.
    #[serde(rename = "call.transfer")]
    CallTransfer {
        call: String,
        state: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        sip_status: Option<u16>,
    },
    /// The switch asks for the ringing call to be answered (NOTIFY
    /// `Event: talk`); the page answers it, or not.
    #[serde(rename = "call.answer_requested")]
    CallAnswerRequested { call: String },
    #[serde(rename = "call.ended")]
    CallEnded {
        call: String,
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        sip_status: Option<u16>,
    },
    #[serde(rename = "session.ended")]
    SessionEnded { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape() {
        let e = EventRecord {
            seq: 7,
            event: SessionEvent::CallEnded {
                call: "c1".into(),
                reason: "remote_hangup".into(),
                sip_status: None,
            },
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"seq": 7, "type": "call.ended", "call": "c1", "reason": "remote_hangup"})
        );
    }
}
