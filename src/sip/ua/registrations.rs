//! Each browser user's registration: started and ended by command, its
//! answers from its client transactions, its refresh from its wake-up.

use std::time::Instant;

use super::{Owner, UaEvent, UserAgent, Wakeup};
use crate::sip::registration::{Registration, RegistrationEvent};

impl UserAgent {
    pub(super) fn register(
        &mut self,
        now: Instant,
        id: &str,
        user: &str,
        password: Option<String>,
    ) {
        let mut reg = Registration::new(
            user,
            password,
            self.cfg.identity.clone(),
            self.cfg.register_expires,
            self.random.fork(),
        );
        let request = reg.start();
        self.registrations.insert(id.to_string(), reg);
        self.send(now, request, Owner::Registration(id.to_string()));
        self.note_registration(id);
    }

    pub(super) fn unregister(&mut self, now: Instant, id: &str) {
        let request = self.registrations.get_mut(id).and_then(|r| r.unregister());
        // A REGISTER still in flight answers into a finished registration.
        self.drop_clients(|owner| !matches!(owner, Owner::Registration(o) if o == id));
        match request {
            Some(request) => self.send(now, request, Owner::Registration(id.to_string())),
            None => {
                self.registrations.remove(id);
            }
        }
        self.note_registration(id);
    }

    /// The registration's refresh is due.
    pub(super) fn registration_due(&mut self, now: Instant, id: &str) {
        let refresh = self
            .registrations
            .get_mut(id)
            .and_then(|r| r.handle_timeout(now));
        if let Some(request) = refresh {
            self.send(now, request, Owner::Registration(id.to_string()));
        }
        self.note_registration(id);
    }

    /// A final response (or none in time) to a REGISTER of `id`.
    pub(super) fn registration_final(
        &mut self,
        now: Instant,
        id: &str,
        response: Option<rsip::Response>,
    ) {
        if response.is_some() {
            self.set_reachable(true);
        }
        let Some(reg) = self.registrations.get_mut(id) else {
            return;
        };
        let (next, event) = reg.handle_final(now, response.as_ref());
        let done = reg.is_done();
        if let Some(request) = next {
            self.send(now, request, Owner::Registration(id.to_string()));
        }
        if let Some(event) = event {
            if matches!(event, RegistrationEvent::Failed { .. }) {
                self.counters.registrations_failed += 1;
            }
            self.events.push_back(UaEvent::Registration {
                id: id.to_string(),
                event,
            });
        }
        if done {
            self.registrations.remove(id);
        }
        self.note_registration(id);
    }

    /// The registration's next wake-up into the table (none once it is gone).
    pub(super) fn note_registration(&mut self, id: &str) {
        let next = self
            .registrations
            .get(id)
            .and_then(Registration::poll_timeout);
        self.wakeups.set(Wakeup::Registration(id.to_string()), next);
    }
}
