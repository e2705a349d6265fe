//! Where an incoming SIP call goes: the policy, apart from its delivery.
//!
//! A call for a user goes to that user's newest session (the browser tab
//! they opened last); a user whose session ended is temporarily away (480),
//! and one this gateway never saw is not found (404).

use crate::session::{SessionId, UserLookup};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingRoute {
    ToSession(SessionId),
    Refuse { status: u16, why: &'static str },
}

/// The route for a call whose Request-URI user was looked up as `lookup`.
pub fn route_incoming(lookup: UserLookup) -> IncomingRoute {
    match lookup {
        UserLookup::Session(id) => IncomingRoute::ToSession(id),
        UserLookup::Gone => IncomingRoute::Refuse {
            status: 480,
            why: "the user's session ended",
        },
        UserLookup::Unknown => IncomingRoute::Refuse {
            status: 404,
            why: "nobody of that name is here",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_gets_the_call_and_the_absent_are_told_apart() {
        let id: SessionId = "s1".to_string();
        assert_eq!(
            route_incoming(UserLookup::Session(id.clone())),
            IncomingRoute::ToSession(id)
        );
        assert!(matches!(
            route_incoming(UserLookup::Gone),
            IncomingRoute::Refuse { status: 480, .. }
        ));
        assert!(matches!(
            route_incoming(UserLookup::Unknown),
            IncomingRoute::Refuse { status: 404, .. }
        ));
    }
}
