//! SIP digest authentication, client side (RFC 3261 §22, RFC 2617, RFC 8760):
//! reading a `WWW-Authenticate`/`Proxy-Authenticate` challenge and writing
//! the `Authorization`/`Proxy-Authorization` answer, with MD5 or SHA-256 and
//! `qop=auth` (nc, cnonce) when the server offers it.
//!
//! The challenge is parsed here rather than through rsip's typed header:
//! rsip 0.4 keeps `algorithm` to a fixed list and drops unknown parameters,
//! and a challenge is a short `auth-param` list that is simple to read
//! exactly. SHA-256 is aws-lc-rs; MD5 is RustCrypto's `md-5` (aws-lc-rs has
//! no MD5).

use aws_lc_rs::digest::{digest, SHA256};
use md5::{Digest as _, Md5};

/// In order of strength: where a server offers several (RFC 8760 §2.3,
/// one challenge per algorithm), the strongest is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    fn hash_hex(self, text: &str) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(text.as_bytes())),
            Algorithm::Sha256 => hex::encode(digest(&SHA256, text.as_bytes())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("the challenge is not a Digest challenge")]
    NotDigest,
    #[error("the challenge has no {0}")]
    Missing(&'static str),
    #[error("the challenge asks for algorithm {0}, which is not supported (MD5 and SHA-256 are)")]
    UnsupportedAlgorithm(String),
    #[error("the challenge offers qop {0:?} only; auth is supported")]
    UnsupportedQop(String),
    #[error("the challenge does not parse: {0}")]
    Syntax(&'static str),
}

/// A server's challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The server offered `qop=auth`.
    pub qop_auth: bool,
    /// The nonce was stale: retry with the new one without asking the user.
    pub stale: bool,
}

/// `name=value, name="quoted value", …` after the scheme.
fn auth_params(text: &str) -> Result<Vec<(String, String)>, DigestError> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once('=')
            .ok_or(DigestError::Syntax("a parameter has no '='"))?;
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or(DigestError::Syntax("a quoted value is not closed"))?;
            (value, &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((name, value));
        rest = tail.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(out)
}

/// The digest challenge of a 401 (`WWW-Authenticate`) or 407
/// (`Proxy-Authenticate`) response, with the header our answer goes in
/// (`Authorization` or `Proxy-Authorization`): of several, the one with
/// the strongest algorithm we support (SHA-256 before MD5; the first of
/// equals). None for other responses or when no challenge is readable.
pub fn challenge_of(response: &rsip::Response) -> Option<(Challenge, &'static str)> {
    let (asked_by, answer_in) = match response.status_code.code() {
        401 => ("www-authenticate", "Authorization"),
        407 => ("proxy-authenticate", "Proxy-Authorization"),
        _ => return None,
    };
    let mut best: Option<Challenge> = None;
    for value in super::message::header_values(&response.headers, asked_by) {
        let Ok(challenge) = Challenge::parse(&value) else {
            continue;
        };
        if best
            .as_ref()
            .is_none_or(|b| challenge.algorithm > b.algorithm)
        {
            best = Some(challenge);
        }
    }
    Some((best?, answer_in))
}

/// Challenges with `stale=true` answered in a row at most: a server that
/// calls every nonce stale would otherwise keep us sending forever.
pub const MAX_STALE_RETRIES: u32 = 3;

impl Challenge {
    /// Reads a `WWW-Authenticate`/`Proxy-Authenticate` header value.
    pub fn parse(value: &str) -> Result<Challenge, DigestError> {
        let value = value.trim();
        let (scheme, params) = value.split_once(char::is_whitespace).unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(DigestError::NotDigest);
        }
        let params = auth_params(params)?;
        let get = |name: &str| {
            params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("md5") => Algorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("sha-256") => Algorithm::Sha256,
            Some(a) => return Err(DigestError::UnsupportedAlgorithm(a)),
        };
        let qop_auth = match get("qop") {
            None => false,
            Some(q) => {
                if q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")) {
                    true
                } else {
                    return Err(DigestError::UnsupportedQop(q));
                }
            }
        };
        Ok(Challenge {
            realm: get("realm").ok_or(DigestError::Missing("realm"))?,
            nonce: get("nonce").ok_or(DigestError::Missing("nonce"))?,
            opaque: get("opaque"),
            algorithm,
            qop_auth,
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The credentials header value answering this challenge for `method`
    /// on `uri`. `cnonce` must be fresh random text; `nc` counts the uses of
    /// this nonce (1 for the first).
    pub fn respond(
        &self,
        method: &str,
        uri: &str,
        username: &str,
        password: &str,
        cnonce: &str,
        nc: u32,
    ) -> String {
        let alg = self.algorithm;
        let ha1 = alg.hash_hex(&format!("{username}:{}:{password}", self.realm));
        let ha2 = alg.hash_hex(&format!("{method}:{uri}"));
        let nc_text = format!("{nc:08x}");
        let response = if self.qop_auth {
            alg.hash_hex(&format!(
                "{ha1}:{}:{nc_text}:{cnonce}:auth:{ha2}",
                self.nonce
            ))
        } else {
            alg.hash_hex(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{response}\", algorithm={}",
            quote(username),
            quote(&self.realm),
            quote(&self.nonce),
            quote(uri),
            alg.name()
        );
        if self.qop_auth {
            out.push_str(&format!(
                ", qop=auth, nc={nc_text}, cnonce=\"{}\"",
                quote(cnonce)
            ));
        }
        if let Some(opaque) = &self.opaque {
            out.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
        }
        out
    }
}

/// Answering a server's digest challenges to one request kind (a
/// registration's REGISTERs, a call's INVITE), shared by registrations and
/// dialogs: the credentials, the challenge being answered and the header
/// the answer goes in, how often its nonce has been used (`nc`), and when
/// to give up — a second challenge of the same kind (our answer was
/// refused) unless it says the nonce was only stale, a third challenge of
/// any kind, more than [`MAX_STALE_RETRIES`] stale ones in a row, or a
/// challenge for another realm than the first one's (the realm is pinned:
/// a password is never offered to a realm it was not first asked for).
#[derive(Debug, Default)]
pub struct DigestAuth {
    credentials: Option<(String, String)>,
    current: Option<(Challenge, &'static str)>,
    nonce_uses: u32,
    /// Challenges answered since the last success.
    answered: u32,
    /// Stale challenges answered since the last success.
    stale_answered: u32,
    /// The realm of the first challenge, with the header it came in.
    realm: Option<(String, &'static str)>,
}

impl DigestAuth {
    /// With `user` and `password` (None: every challenge ends it).
    pub fn new(user: &str, password: Option<String>) -> Self {
        DigestAuth {
            credentials: password.map(|p| (user.to_string(), p)),
            ..DigestAuth::default()
        }
    }

    /// The user and password challenges are answered with, if any.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str()))
    }

    pub fn set_credentials(&mut self, user: &str, password: String) {
        self.credentials = Some((user.to_string(), password));
    }

    /// A 401 or 407: whether to send the request again with an answer
    /// ([`DigestAuth::authorization`] writes it).
    pub fn take_challenge(&mut self, response: &rsip::Response) -> bool {
        if self.credentials.is_none() {
            return false;
        }
        let Some((challenge, answer_in)) = challenge_of(response) else {
            return false;
        };
        // A proxy and the registrar may each have a realm of their own:
        // pinned per header kind.
        match &self.realm {
            Some((realm, kind)) if *kind == answer_in && *realm != challenge.realm => {
                return false;
            }
            None => self.realm = Some((challenge.realm.clone(), answer_in)),
            Some(_) => {}
        }
        let same_kind_again = self
            .current
            .as_ref()
            .is_some_and(|(_, kind)| *kind == answer_in);
        if challenge.stale {
            if self.stale_answered >= MAX_STALE_RETRIES {
                return false;
            }
            self.stale_answered += 1;
        } else if self.answered > 0 && (same_kind_again || self.answered >= 2) {
            return false;
        }
        self.answered += 1;
        self.nonce_uses = 0;
        self.current = Some((challenge, answer_in));
        true
    }

    /// The request was accepted: a later challenge is answered afresh.
    pub fn succeeded(&mut self) {
        self.answered = 0;
        self.stale_answered = 0;
    }

    /// The header (name and value) answering the current challenge for
    /// `method` on `uri`, counting one more use of its nonce; None before
    /// any challenge.
    pub fn authorization(
        &mut self,
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> Option<(&'static str, String)> {
        let ((challenge, answer_in), (user, password)) =
            (self.current.as_ref()?, self.credentials.as_ref()?);
        self.nonce_uses += 1;
        let value = challenge.respond(method, uri, user, password, cnonce, self.nonce_uses);
        Some((answer_in, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7616 §3.9.1: the same request answered with MD5 and SHA-256.
    #[test]
    fn rfc7616_examples() {
        let challenge = |alg: &str| {
            format!(
                "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm={alg}, \
                 nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
                 opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""
            )
        };
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        for (alg, expected) in [
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ] {
            let c = Challenge::parse(&challenge(alg)).unwrap();
            assert!(c.qop_auth);
            let answer = c.respond(
                "GET",
                "/dir/index.html",
                "Mufasa",
                "Circle of Life",
                cnonce,
                1,
            );
            assert!(
                answer.contains(&format!("response=\"{expected}\"")),
                "{alg}: {answer}"
            );
            assert!(answer.contains("nc=00000001"));
            assert!(answer.contains(&format!("algorithm={alg}")));
            assert!(answer.contains("opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""));
        }
    }

    /// RFC 2617 §3.5 (MD5, qop=auth).
    #[test]
    fn rfc2617_example() {
        let c = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .unwrap();
        let answer = c.respond(
            "GET",
            "/dir/index.html",
            "Mufasa",
            "Circle Of Life",
            "0a4f113b",
            1,
        );
        assert!(
            answer.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{answer}"
        );
    }

    #[test]
    fn without_qop_and_refusals() {
        let c = Challenge::parse("digest realm=asterisk,nonce=\"abc\", stale=TRUE").unwrap();
        assert_eq!(c.realm, "asterisk");
        assert!(!c.qop_auth && c.stale);
        assert_eq!(c.algorithm, Algorithm::Md5);
        let answer = c.respond("REGISTER", "sip:example.com", "1001", "pw", "x", 1);
        assert!(!answer.contains("qop"), "{answer}");
        // HA1 = MD5(1001:asterisk:pw), HA2 = MD5(REGISTER:sip:example.com)
        let ha1 = hex::encode(Md5::digest(b"1001:asterisk:pw"));
        let ha2 = hex::encode(Md5::digest(b"REGISTER:sip:example.com"));
        let expected = hex::encode(Md5::digest(format!("{ha1}:abc:{ha2}").as_bytes()));
        assert!(answer.contains(&expected));
        assert_eq!(
            Challenge::parse("Basic realm=\"x\""),
            Err(DigestError::NotDigest)
        );
        assert!(matches!(
            Challenge::parse("Digest realm=\"x\", nonce=\"n\", algorithm=SHA-512-256"),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert_eq!(
            Challenge::parse("Digest nonce=\"n\""),
            Err(DigestError::Missing("realm"))
        );
        assert!(matches!(
            Challenge::parse("Digest realm=\"x, nonce=\"n\""),
            Err(DigestError::Syntax(_)) | Err(DigestError::Missing(_))
        ));
        assert!(matches!(
            Challenge::parse("Digest realm=\"x\", nonce=\"n\", qop=\"auth-int\""),
            Err(DigestError::UnsupportedQop(_))
        ));
    }

    fn challenged(status: u16, stale: bool) -> rsip::Response {
        let (code, header) = if status == 401 {
            ("401 Unauthorized", "WWW-Authenticate")
        } else {
            ("407 Proxy Authentication Required", "Proxy-Authenticate")
        };
        let text = format!(
            "SIP/2.0 {code}\r\nVia: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKa\r\n\
             From: <sip:1001@pbx>;tag=a\r\nTo: <sip:1001@pbx>;tag=b\r\nCall-ID: c\r\n\
             CSeq: 1 REGISTER\r\n{header}: Digest realm=\"r\", nonce=\"n{status}\", qop=\"auth\"{}\r\n\
             Content-Length: 0\r\n\r\n",
            if stale { ", stale=true" } else { "" }
        );
        match crate::sip::message::parse_datagram(text.as_bytes()).unwrap() {
            rsip::SipMessage::Response(r) => r,
            rsip::SipMessage::Request(_) => unreachable!("a response"),
        }
    }

    #[test]
    fn one_retry_policy_for_registrations_and_calls() {
        // No password: nothing to answer with.
        assert!(!DigestAuth::new("1001", None).take_challenge(&challenged(401, false)));
        let mut auth = DigestAuth::new("1001", Some("pw".into()));
        assert_eq!(
            auth.authorization("REGISTER", "sip:pbx", "c"),
            None,
            "before any challenge"
        );
        assert!(auth.take_challenge(&challenged(401, false)));
        let (name, first) = auth.authorization("REGISTER", "sip:pbx", "c").unwrap();
        assert_eq!(name, "Authorization");
        assert!(first.contains("nc=00000001"), "{first}");
        let (_, again) = auth.authorization("REGISTER", "sip:pbx", "c").unwrap();
        assert!(
            again.contains("nc=00000002"),
            "the nonce's uses are counted"
        );
        // A registrar behind a proxy: 407 after 401 is answered too.
        assert!(auth.take_challenge(&challenged(407, false)));
        assert_eq!(
            auth.authorization("INVITE", "sip:x", "c").unwrap().0,
            "Proxy-Authorization"
        );
        // A third challenge gives up, unless the nonce was only stale.
        assert!(!auth.take_challenge(&challenged(401, false)));
        assert!(auth.take_challenge(&challenged(401, true)));
        // Our answer refused (the same kind again): give up; after a success, answer afresh.
        let mut auth = DigestAuth::new("1001", Some("wrong".into()));
        assert!(auth.take_challenge(&challenged(401, false)));
        assert!(!auth.take_challenge(&challenged(401, false)));
        auth.succeeded();
        assert!(auth.take_challenge(&challenged(401, false)));
    }

    fn response_with(headers: &str) -> rsip::Response {
        let text = format!(
            "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 192.0.2.10:5070;branch=z9hG4bKa\r\n\
             From: <sip:1001@pbx>;tag=a\r\nTo: <sip:1001@pbx>;tag=b\r\nCall-ID: c\r\n\
             CSeq: 1 REGISTER\r\n{headers}Content-Length: 0\r\n\r\n"
        );
        match crate::sip::message::parse_datagram(text.as_bytes()).unwrap() {
            rsip::SipMessage::Response(r) => r,
            rsip::SipMessage::Request(_) => unreachable!("a response"),
        }
    }

    #[test]
    fn the_strongest_offered_algorithm_is_answered() {
        let both = response_with(
            "WWW-Authenticate: Digest realm=\"r\", nonce=\"m\", algorithm=MD5\r\n\
             WWW-Authenticate: Digest realm=\"r\", nonce=\"s\", algorithm=SHA-256\r\n",
        );
        let (challenge, _) = challenge_of(&both).unwrap();
        assert_eq!(
            (challenge.algorithm, challenge.nonce.as_str()),
            (Algorithm::Sha256, "s")
        );
        // One we cannot answer is passed over, not fatal.
        let unknown_first = response_with(
            "WWW-Authenticate: Digest realm=\"r\", nonce=\"x\", algorithm=SHA-512-256\r\n\
             WWW-Authenticate: Digest realm=\"r\", nonce=\"m\"\r\n",
        );
        let (challenge, _) = challenge_of(&unknown_first).unwrap();
        assert_eq!(challenge.algorithm, Algorithm::Md5);
        let only_unknown = response_with(
            "WWW-Authenticate: Digest realm=\"r\", nonce=\"x\", algorithm=SHA-512-256\r\n",
        );
        assert!(challenge_of(&only_unknown).is_none());
    }

    #[test]
    fn stale_retries_are_bounded_and_the_realm_is_pinned() {
        let mut auth = DigestAuth::new("1001", Some("pw".into()));
        assert!(auth.take_challenge(&challenged(401, false)));
        for _ in 0..MAX_STALE_RETRIES {
            assert!(auth.take_challenge(&challenged(401, true)));
        }
        assert!(
            !auth.take_challenge(&challenged(401, true)),
            "stale for ever"
        );
        auth.succeeded();
        assert!(
            auth.take_challenge(&challenged(401, true)),
            "counted afresh"
        );

        // Another realm for the same header, even as "stale": refused.
        let mut auth = DigestAuth::new("1001", Some("pw".into()));
        assert!(auth.take_challenge(&challenged(401, false)));
        auth.succeeded();
        let elsewhere =
            response_with("WWW-Authenticate: Digest realm=\"evil\", nonce=\"e\", stale=true\r\n");
        assert!(!auth.take_challenge(&elsewhere));
        assert!(
            auth.take_challenge(&challenged(401, false)),
            "the pinned realm still is"
        );
    }
}
