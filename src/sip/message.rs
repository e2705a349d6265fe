//! SIP messages on the wire: limits, compact header forms, Content-Length,
//! then `rsip` for the typed message.
//!
//! rsip 0.4 leaves compact header names (`v:`, `f:`, `t:`, `i:`, `m:`, `l:`…)
//! untyped, so its accessors miss them; RFC 3261 §7.3.3 requires accepting
//! them, so header names are normalised to their long forms before rsip sees
//! the message. Every refusal names the problem, usable as a 400 reason phrase.
//! rsip 0.4 also reads a user part holding `%` escapes as part of the host:
//! [`uri_user`] finds the user either way.

use rsip::prelude::*;

/// Largest message accepted (RFC 3261 allows more; no call needs it).
pub const MAX_MESSAGE_BYTES: usize = 65_536;
/// Most header lines accepted in one message.
pub const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipParseError {
    #[error("Message Too Large")]
    TooLarge,
    #[error("Too Many Headers")]
    TooManyHeaders,
    #[error("Incomplete Header Section")]
    NoHeaderEnd,
    #[error("Invalid Content-Length")]
    BadContentLength,
    #[error("Body Shorter Than Content-Length")]
    ShortBody,
    #[error("Missing {0} Header")]
    MissingHeader(&'static str),
    #[error("Malformed {0}")]
    Malformed(String),
    #[error("Multiple {0} Headers")]
    Repeated(&'static str),
    #[error("CSeq Method Differs From The Request Method")]
    CseqMismatch,
    #[error("Version Not Supported")]
    Version,
    #[error("Unsupported URI Scheme")]
    UriScheme,
    /// A well-formed method we do not know (rsip carries only its list).
    #[error("Not Implemented")]
    UnknownMethod,
}

impl SipParseError {
    /// The status of the response answering a request refused for this.
    pub fn status(&self) -> u16 {
        match self {
            SipParseError::Version => 505,
            SipParseError::UriScheme => 416,
            SipParseError::UnknownMethod => 501,
            _ => 400,
        }
    }

    /// The reason phrase of that response, naming the problem.
    pub fn reason_phrase(&self) -> String {
        match self.status() {
            400 => format!("Bad Request - {self}"),
            _ => self.to_string(),
        }
    }
}

/// RFC 3261 `token` characters.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(is_token_byte)
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Checks the start line before rsip reads it, so that each fault gets its
/// own answer: a bad shape 400, another SIP version 505, a URI scheme we do
/// not take 416, an extension method 501 (rsip would call it malformed).
fn check_start_line(line: &str) -> Result<(), SipParseError> {
    if let Some(rest) = line.strip_prefix("SIP/") {
        let mut parts = rest.splitn(3, ' ');
        if parts.next() != Some("2.0") {
            return Err(SipParseError::Version);
        }
        let code = parts.next().unwrap_or("");
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SipParseError::Malformed("Status-Line".into()));
        }
        return Ok(());
    }
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, uri, version] = parts[..] else {
        return Err(SipParseError::Malformed("Request-Line".into()));
    };
    if !is_token(method) || uri.is_empty() {
        return Err(SipParseError::Malformed("Request-Line".into()));
    }
    if version != "SIP/2.0" {
        return Err(if version.starts_with("SIP/") {
            SipParseError::Version
        } else {
            SipParseError::Malformed("Request-Line".into())
        });
    }
    let Some((scheme, _)) = uri.split_once(':') else {
        return Err(SipParseError::Malformed("Request-URI".into()));
    };
    if scheme.starts_with('<') {
        return Err(SipParseError::Malformed(
            "Request-URI (in angle brackets)".into(),
        ));
    }
    if !["sip", "sips", "tel"]
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
    {
        return Err(SipParseError::UriScheme);
    }
    // RFC 3261 §19.1.1: URI headers are not allowed in a Request-URI.
    // They follow the host; a `?` in the user part (before the last `@`)
    // is a plain character there.
    let after_user = uri.rfind('@').map_or(0, |at| at + 1);
    if uri[after_user..].contains('?') {
        return Err(SipParseError::Malformed(
            "Request-URI (holds URI headers)".into(),
        ));
    }
    if !rsip::Method::all().iter().any(|m| m.to_string() == method) {
        return Err(SipParseError::UnknownMethod);
    }
    Ok(())
}

/// Headers whose values carry `;param=value` lists: whitespace around `;`
/// and `=` (allowed by RFC 3261's SEMI and EQUAL) is removed for rsip.
const PARAM_HEADERS: [&str; 8] = [
    "via",
    "from",
    "to",
    "contact",
    "route",
    "record-route",
    "content-type",
    "event",
];

/// Where a scan of a header value stands with respect to quoted strings
/// (RFC 3261 `quoted-string`, with `\\` escapes inside).
#[derive(Default)]
struct Quotes {
    quoted: bool,
    escaped: bool,
}

impl Quotes {
    /// Takes the next character; true when it belongs to a quoted string
    /// (its closing quote included), false for an opening quote and
    /// everything outside.
    fn inside(&mut self, c: char) -> bool {
        if !self.quoted {
            self.quoted = c == '"';
            return false;
        }
        match (self.escaped, c) {
            (false, '\\') => self.escaped = true,
            (false, '"') => self.quoted = false,
            _ => self.escaped = false,
        }
        true
    }
}

/// `value` without whitespace around `;`, `=` and `,` outside quoted strings;
/// an unbalanced quote is an error.
fn tighten(name: &str, value: &str) -> Result<String, SipParseError> {
    let mut out = String::with_capacity(value.len());
    let mut quotes = Quotes::default();
    for c in value.chars() {
        if quotes.inside(c) || c == '"' {
            out.push(c);
            continue;
        }
        match c {
            ';' | '=' | ',' => {
                while out.ends_with([' ', '\t']) {
                    out.pop();
                }
                out.push(c);
            }
            ' ' | '\t' if out.ends_with([';', '=']) => {}
            _ => out.push(c),
        }
    }
    if quotes.quoted {
        return Err(SipParseError::Malformed(format!(
            "{name} (unbalanced quotes)"
        )));
    }
    if has_empty_element(&out) {
        return Err(SipParseError::Malformed(format!(
            "{name} (empty parameter or value)"
        )));
    }
    Ok(out)
}

/// Whether a tightened value has an empty `;` parameter or `,` element
/// outside quotes (`host;;`, `a,,b`, a trailing `;`): RFC 3261's grammar
/// has none, and RFC 4475 §3.1.2.1 calls such separators malformed.
fn has_empty_element(value: &str) -> bool {
    if value.trim().is_empty() {
        // An empty value is another fault, named where the header is read.
        return false;
    }
    let mut quotes = Quotes::default();
    // The separator seen last with nothing after it yet (',' at the start).
    let mut open_separator = Some(',');
    for c in value.chars() {
        if quotes.inside(c) {
            continue;
        }
        match c {
            ';' | ',' if open_separator.is_some() => return true,
            ';' | ',' => open_separator = Some(c),
            ' ' | '\t' => {}
            _ => open_separator = None,
        }
    }
    open_separator.is_some()
}

/// A Request-Line whose `sip:`/`sips:` URI has a user part holding `;`
/// parameters (RFC 4475 §3.1.1.9, `sip:user;par=u%40example.net@host`),
/// with those `;` escaped as `%3B`: the parser crate would read the first
/// `;` as the start of the URI's parameters and fail. The user part then
/// reads as written once unescaped (`user;par=u@example.net`).
fn escape_request_uri_user(start_line: &str) -> std::borrow::Cow<'_, str> {
    let mut parts = start_line.splitn(3, ' ');
    let (Some(method), Some(uri), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return start_line.into();
    };
    let Some(scheme_end) = ["sip:", "sips:"]
        .iter()
        .find(|s| uri.len() >= s.len() && uri[..s.len()].eq_ignore_ascii_case(s))
        .map(|s| s.len())
    else {
        return start_line.into();
    };
    // The user part ends at the last '@' before any headers ('?').
    let before_headers = uri.find('?').unwrap_or(uri.len());
    let Some(at) = uri[..before_headers].rfind('@') else {
        return start_line.into();
    };
    let user = &uri[scheme_end..at];
    if !user.contains(';') {
        return start_line.into();
    }
    format!(
        "{method} {}{}{} {version}",
        &uri[..scheme_end],
        user.replace(';', "%3B"),
        &uri[at..]
    )
    .into()
}

/// A Via value with the LWS RFC 3261 §7.3.1 allows around the `/` of each
/// sent-protocol (`SIP / 2.0 / UDP`) taken out and the run of LWS before
/// the sent-by cut to one space, as the parser crate expects it. Each
/// comma-separated value is done on its own; nothing inside parameters
/// changes (no `/` may appear before the sent-by's parameters).
fn tighten_sent_protocol(value: &str) -> String {
    value
        .split(',')
        .map(|one| {
            let (protocol_and_host, params) = match one.find(';') {
                Some(at) => one.split_at(at),
                None => (one, ""),
            };
            let words: Vec<&str> = protocol_and_host
                .split('/')
                .map(str::trim)
                .collect::<Vec<_>>();
            // SIP / 2.0 / UDP host → "SIP/2.0/UDP host".
            let mut joined = words.join("/");
            if let Some(at) = joined.rfind('/') {
                let (head, tail) = joined.split_at(at + 1);
                let tail: Vec<&str> = tail.split_whitespace().collect();
                joined = format!("{head}{}", tail.join(" "));
            }
            format!("{joined}{params}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a name-addr value opens `<` (outside quotes) without closing it.
fn unclosed_angle(value: &str) -> bool {
    let mut quotes = Quotes::default();
    let mut open = false;
    for c in value.chars() {
        match c {
            _ if quotes.inside(c) => {}
            '<' => open = true,
            '>' => open = false,
            _ => {}
        }
    }
    open
}

/// Whether the display name before a name-addr's `<` is a quoted string
/// or tokens separated by LWS (RFC 3261 §25.1 `display-name`); RFC 4475
/// §3.1.2.15's `Bell, Alexander <sip:…>` is neither. We refuse it rather
/// than guess the quotes: the name goes to the browser as the caller's.
fn display_name_ok(value: &str) -> bool {
    let value = value.trim_start();
    if value.starts_with('"') {
        return true;
    }
    // The addr-spec form (no `<`) has no display name at all.
    let Some(open) = value.find('<') else {
        return true;
    };
    // Liberal in one way: unquoted UTF-8 names (some PBXs send them) pass;
    // the ASCII that cannot be in a token (`,` `@` `;` …) does not.
    value[..open].split_whitespace().all(|word| {
        word.chars()
            .all(|c| !c.is_ascii() || is_token_byte(c as u8))
    })
}

/// RFC 3261 §7.3.3 and the IANA registry's common compact forms.
fn long_form(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "v" => "Via",
        "f" => "From",
        "t" => "To",
        "i" => "Call-ID",
        "m" => "Contact",
        "l" => "Content-Length",
        "c" => "Content-Type",
        "k" => "Supported",
        "s" => "Subject",
        "e" => "Content-Encoding",
        "o" => "Event",
        "r" => "Refer-To",
        "u" => "Allow-Events",
        "x" => "Session-Expires",
        _ => return None,
    })
}

fn header_end(data: &[u8]) -> Option<usize> {
    data.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Headers a message carries once at most (RFC 3261 §7.3.1 and §20:
/// their grammar has no comma-separated list). Content-Length is left to
/// its own check, which names a conflicting value.
const SINGLE_VALUED: [&str; 6] = [
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Max-Forwards",
    "Content-Type",
];

/// Splits a header section into its normalised lines and the declared Content-Length.
fn normalise_headers(head: &str) -> Result<(String, Option<usize>), SipParseError> {
    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or("");
    check_start_line(start_line)?;
    // Unfold first: a continuation belongs to the previous header (RFC 3261 §7.3.1).
    let mut unfolded: Vec<String> = Vec::new();
    for line in lines {
        match unfolded.last_mut() {
            Some(previous) if line.starts_with([' ', '\t']) => {
                previous.push(' ');
                previous.push_str(line.trim_start());
            }
            _ => {
                if unfolded.len() == MAX_HEADERS {
                    return Err(SipParseError::TooManyHeaders);
                }
                unfolded.push(line.to_string());
            }
        }
    }
    let mut out = String::with_capacity(head.len() + 64);
    out.push_str(&escape_request_uri_user(start_line));
    let mut content_length = None;
    let mut seen_single = [false; SINGLE_VALUED.len()];
    for line in &unfolded {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| SipParseError::Malformed(format!("header line {line:?}")))?;
        let name = name.trim();
        let name = long_form(name).unwrap_or(name);
        let value = value.trim();
        if let Some(i) = SINGLE_VALUED
            .iter()
            .position(|h| name.eq_ignore_ascii_case(h))
        {
            if std::mem::replace(&mut seen_single[i], true) {
                return Err(SipParseError::Repeated(SINGLE_VALUED[i]));
            }
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| SipParseError::BadContentLength)?;
            if content_length.is_some_and(|c| c != n) {
                return Err(SipParseError::BadContentLength);
            }
            content_length = Some(n);
        }
        // What rsip would take silently or answer with nothing: named here.
        if name.eq_ignore_ascii_case("max-forwards") && value.parse::<u8>().is_err() {
            return Err(SipParseError::Malformed("Max-Forwards Header".into()));
        }
        if ["From", "To", "Contact", "Route", "Record-Route"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
            && unclosed_angle(value)
        {
            return Err(SipParseError::Malformed(format!("{name} (unclosed <)")));
        }
        if (name.eq_ignore_ascii_case("From") || name.eq_ignore_ascii_case("To"))
            && !display_name_ok(value)
        {
            return Err(SipParseError::Malformed(format!(
                "{name} (unquoted display name with non-token characters)"
            )));
        }
        out.push_str("\r\n");
        out.push_str(name);
        out.push_str(": ");
        if name.eq_ignore_ascii_case("via") {
            out.push_str(&tighten(name, &tighten_sent_protocol(value))?);
        } else if PARAM_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            out.push_str(&tighten(name, value)?);
        } else {
            out.push_str(value);
        }
    }
    Ok((out, content_length))
}

/// Parses one datagram (UDP): the body is what follows the headers, cut to
/// Content-Length when that is shorter (RFC 3261 §18.3).
pub fn parse_datagram(data: &[u8]) -> Result<rsip::SipMessage, SipParseError> {
    if data.len() > MAX_MESSAGE_BYTES {
        return Err(SipParseError::TooLarge);
    }
    let end = header_end(data).ok_or(SipParseError::NoHeaderEnd)?;
    let head = std::str::from_utf8(&data[..end])
        .map_err(|_| SipParseError::Malformed("header encoding".into()))?;
    let (head, declared) = normalise_headers(head)?;
    let mut body = &data[end + 4..];
    if let Some(n) = declared {
        if n > body.len() {
            return Err(SipParseError::ShortBody);
        }
        body = &body[..n];
    }
    let mut raw = Vec::with_capacity(head.len() + 4 + body.len());
    raw.extend_from_slice(head.as_bytes());
    raw.extend_from_slice(b"\r\n\r\n");
    raw.extend_from_slice(body);
    let message = rsip::SipMessage::try_from(raw.as_slice())
        .map_err(|e| SipParseError::Malformed(short(&e.to_string())))?;
    check_mandatory(&message)?;
    Ok(message)
}

/// Cuts a stream (TCP, TLS) into messages as its bytes arrive, in time
/// linear in the bytes: the search for the end of the headers resumes
/// where the last one stopped, and a message's headers are read once (a
/// peer trickling a large message a byte at a time cannot make each byte
/// cost a rescan). Keep-alive CRLFs between messages are skipped.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for the end of the headers.
    searched: usize,
    /// The whole length of the message at the front, once its headers are in.
    message_len: Option<usize>,
    /// Bytes looked at while searching, over the framer's life (what the
    /// linearity test counts).
    pub bytes_examined: u64,
}

impl StreamFramer {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, None while more bytes are needed; an
    /// error when the stream cannot be framed (it should be dropped).
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, SipParseError> {
        if self.message_len.is_none() && self.searched == 0 {
            let skip = self
                .buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            self.buf.drain(..skip);
        }
        if self.message_len.is_none() {
            // Resume 3 bytes back: the terminator may straddle two reads.
            let from = self.searched.saturating_sub(3);
            let window = &self.buf[from..];
            self.bytes_examined += window.len() as u64;
            match header_end(window) {
                None => {
                    self.searched = self.buf.len();
                    if self.buf.len() > MAX_MESSAGE_BYTES {
                        return Err(SipParseError::TooLarge);
                    }
                    return Ok(None);
                }
                Some(at) => {
                    let end = from + at;
                    let head = std::str::from_utf8(&self.buf[..end])
                        .map_err(|_| SipParseError::Malformed("header encoding".into()))?;
                    let (_, declared) = normalise_headers(head)?;
                    let body = declared.ok_or(SipParseError::MissingHeader("Content-Length"))?;
                    let total = end + 4 + body;
                    if total > MAX_MESSAGE_BYTES {
                        return Err(SipParseError::TooLarge);
                    }
                    self.message_len = Some(total);
                }
            }
        }
        match self.message_len {
            Some(total) if self.buf.len() >= total => {
                let message: Vec<u8> = self.buf.drain(..total).collect();
                self.message_len = None;
                self.searched = 0;
                Ok(Some(message))
            }
            _ => Ok(None),
        }
    }
}

fn check_mandatory(m: &rsip::SipMessage) -> Result<(), SipParseError> {
    let checks: [(&'static str, bool); 5] = match m {
        rsip::SipMessage::Request(r) => [
            ("Via", r.via_header().is_ok()),
            ("From", r.from_header().is_ok()),
            ("To", r.to_header().is_ok()),
            ("Call-ID", r.call_id_header().is_ok()),
            ("CSeq", r.cseq_header().and_then(|c| c.typed()).is_ok()),
        ],
        rsip::SipMessage::Response(r) => [
            ("Via", r.via_header().is_ok()),
            ("From", r.from_header().is_ok()),
            ("To", r.to_header().is_ok()),
            ("Call-ID", r.call_id_header().is_ok()),
            ("CSeq", r.cseq_header().and_then(|c| c.typed()).is_ok()),
        ],
    };
    if let Some((name, _)) = checks.iter().find(|(_, ok)| !ok) {
        let present = match m {
            rsip::SipMessage::Request(r) => has_header(&r.headers, name),
            rsip::SipMessage::Response(r) => has_header(&r.headers, name),
        };
        return Err(if present {
            SipParseError::Malformed(format!("{name} Header"))
        } else {
            SipParseError::MissingHeader(name)
        });
    }
    if let rsip::SipMessage::Request(r) = m {
        let cseq = r.cseq_header().and_then(|c| c.typed());
        if cseq.is_ok_and(|c| c.method != r.method) {
            return Err(SipParseError::CseqMismatch);
        }
    }
    Ok(())
}

fn has_header(headers: &rsip::Headers, name: &str) -> bool {
    headers.iter().any(|h| {
        h.to_string()
            .split_once(':')
            .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
    })
}

fn short(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The user part of `uri` as written, escapes and all. rsip 0.4 reads a
/// user part holding `%` escapes as part of the host, so the user is also
/// looked for there.
pub fn uri_user_as_written(uri: &rsip::Uri) -> Option<String> {
    match &uri.auth {
        Some(auth) => Some(auth.user.clone()),
        None => {
            let host = uri.host_with_port.host.to_string();
            Some(host.rsplit_once('@')?.0.to_string())
        }
    }
}

/// The user part of `uri`, %-escapes decoded (RFC 3261 §19.1.4 compares
/// users unescaped).
pub fn uri_user(uri: &rsip::Uri) -> Option<String> {
    let raw = uri_user_as_written(uri)?;
    Some(
        percent_encoding::percent_decode_str(&raw)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// A request the gateway wrote itself, as rsip's type. Our own text always
/// parses; should it not (a bug), an empty request of `method` stands in and
/// the peer's 400 will say what was wrong.
pub fn own_request(text: &str, method: rsip::Method) -> rsip::Request {
    match parse_datagram(text.as_bytes()) {
        Ok(rsip::SipMessage::Request(r)) => r,
        _ => rsip::Request {
            method,
            uri: rsip::Uri::default(),
            version: rsip::Version::V2,
            headers: rsip::Headers::default(),
            body: Vec::new(),
        },
    }
}

/// A header's value by lower-case name (rsip keeps unknown headers as Other).
pub fn header_value(response: &rsip::Response, name: &str) -> Option<String> {
    response.headers.iter().find_map(|h| {
        let text = h.to_string();
        let (n, v) = text.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Every value of header `name` (case-insensitive), in order.
pub fn header_values(headers: &rsip::Headers, name: &str) -> Vec<String> {
    headers
        .iter()
        .filter_map(|h| {
            let text = h.to_string();
            let (n, v) = text.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// The comma-separated tokens of every `name` header (Allow, Supported,
/// Require…), trimmed, empty ones left out.
pub fn header_tokens(headers: &rsip::Headers, name: &str) -> Vec<String> {
    header_values(headers, name)
        .iter()
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether a `name` header lists `token` (case-insensitive).
pub fn lists_token(headers: &rsip::Headers, name: &str, token: &str) -> bool {
    header_tokens(headers, name)
        .iter()
        .any(|t| t.eq_ignore_ascii_case(token))
}

/// Whether an option tag is in the Supported or Require headers.
pub fn supports(headers: &rsip::Headers, tag: &str) -> bool {
    lists_token(headers, "supported", tag) || lists_token(headers, "require", tag)
}

/// The top Via's branch of a request.
///
/// A request with no branch at all (RFC 2543 style, RFC 4475 §3.4) gets a
/// name made of what RFC 3261 §17.2.3 matches such requests by — the
/// Call-ID, the CSeq number, the From tag and the Via's sent-by — so its
/// retransmissions, its ACK and its CANCEL find its transaction.
pub fn branch_of(request: &rsip::Request) -> Option<String> {
    let via = request.via_header().ok()?.typed().ok()?;
    if let Some(branch) = via.branch() {
        return Some(branch.to_string());
    }
    let call_id = request.call_id_header().ok()?.value().to_string();
    let cseq = request.cseq_header().ok()?.typed().ok()?.seq;
    let from_tag = request
        .from_header()
        .ok()
        .and_then(|f| f.tag().ok().flatten())
        .map(|t| t.value().to_string())
        .unwrap_or_default();
    Some(format!(
        "rfc2543;{call_id};{cseq};{from_tag};{}",
        via.uri.host_with_port
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_parameters_and_values_are_found_outside_quotes() {
        for bad in [
            "host;;branch=1",
            "a,,b",
            "<sip:a@b>;",
            ",<sip:a@b>",
            "x;tag=1,",
        ] {
            assert!(has_empty_element(bad), "{bad}");
        }
        for good in [
            "host;branch=1",
            "<sip:a@b>;tag=1, <sip:c@d>",
            "\"a;;b,,\" <sip:a@b>",
            "",
        ] {
            assert!(!has_empty_element(good), "{good}");
        }
    }

    #[test]
    fn display_names_are_tokens_or_quoted() {
        for good in [
            "<sip:a@b>",
            "sip:a@b;tag=1",
            "caller<sip:a@b>",
            "Alice Smith <sip:a@b>",
            "\"Watson, Thomas\" <sip:a@b>",
            "José Müller <sip:a@b>",
            "sip:a@b;x=\"quoted, with a comma\"",
        ] {
            assert!(display_name_ok(good), "{good}");
        }
        for bad in [
            "Bell, Alexander <sip:a@b>",
            "a@b <sip:a@b>",
            "x \"y\" <sip:a@b>",
        ] {
            assert!(!display_name_ok(bad), "{bad}");
        }
    }

    fn invite() -> String {
        [
            "INVITE sip:1001@gw.example SIP/2.0",
            "v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds",
            "Max-Forwards: 70",
            "t: <sip:1001@gw.example>",
            "f: \"Alice\" <sip:alice@example.com>;tag=1928301774",
            "i: a84b4c76e66710@pc33.example.com",
            "CSeq: 314159 INVITE",
            "m: <sip:alice@192.0.2.1>",
            "c: application/sdp",
            "l: 4",
            "",
            "v=0\n",
        ]
        .join("\r\n")
    }

    #[test]
    fn compact_forms_are_accepted() {
        let m = parse_datagram(invite().as_bytes()).unwrap();
        let rsip::SipMessage::Request(r) = m else {
            panic!("a request")
        };
        assert_eq!(r.method, rsip::Method::Invite);
        assert!(r.via_header().unwrap().typed().unwrap().branch().is_some());
        assert_eq!(
            r.call_id_header().unwrap().value(),
            "a84b4c76e66710@pc33.example.com"
        );
        assert_eq!(r.cseq_header().unwrap().typed().unwrap().seq, 314159);
        assert!(r.contact_header().is_ok());
        assert_eq!(r.body, b"v=0\n".to_vec());
    }

    #[test]
    fn refusals_name_the_problem() {
        let ok = invite();
        let cases = [
            (ok.replace("l: 4", "l: 40"), SipParseError::ShortBody),
            (
                ok.replace("l: 4", "l: four"),
                SipParseError::BadContentLength,
            ),
            (
                ok.replace("i: a84b4c76e66710@pc33.example.com\r\n", ""),
                SipParseError::MissingHeader("Call-ID"),
            ),
            (
                ok.replace("CSeq: 314159 INVITE\r\n", ""),
                SipParseError::MissingHeader("CSeq"),
            ),
            (ok.replace("\r\n\r\n", "\r\n"), SipParseError::NoHeaderEnd),
            (
                ok.replace("Max-Forwards: 70", "Max-Forwards 70"),
                SipParseError::Malformed("header line \"Max-Forwards 70\"".into()),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_datagram(text.as_bytes()).unwrap_err(), expected);
        }
        let many: String = ok.replacen("Max-Forwards: 70\r\n", &"X-Pad: 1\r\n".repeat(200), 1);
        assert_eq!(
            parse_datagram(many.as_bytes()).unwrap_err(),
            SipParseError::TooManyHeaders
        );
        assert_eq!(
            parse_datagram(&vec![b'a'; MAX_MESSAGE_BYTES + 1]).unwrap_err(),
            SipParseError::TooLarge
        );
        assert!(SipParseError::MissingHeader("CSeq")
            .reason_phrase()
            .contains("CSeq"));
        assert!(parse_datagram(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn longer_body_is_cut_to_content_length_on_udp() {
        let text = invite().replace("v=0\n", "v=0\nEXTRA");
        let rsip::SipMessage::Request(r) = parse_datagram(text.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(r.body, b"v=0\n".to_vec());
    }

    #[test]
    fn stream_framing() {
        let one = invite();
        let two = format!("{one}{one}");
        let mut framer = StreamFramer::default();
        framer.push(&two.as_bytes()[..one.len() - 1]);
        assert_eq!(framer.next_message(), Ok(None));
        framer.push(&two.as_bytes()[one.len() - 1..]);
        assert_eq!(framer.next_message(), Ok(Some(one.clone().into_bytes())));
        assert_eq!(framer.next_message(), Ok(Some(one.clone().into_bytes())));
        assert_eq!(framer.next_message(), Ok(None));
        let mut framer = StreamFramer::default();
        framer.push(one.replace("l: 4\r\n", "").as_bytes());
        assert_eq!(
            framer.next_message(),
            Err(SipParseError::MissingHeader("Content-Length"))
        );
    }

    #[test]
    fn the_stream_framer_cuts_messages_fed_a_byte_at_a_time_in_linear_work() {
        let body = "v=0\r\n".repeat(2000);
        let one = format!(
            "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:x@y>;tag=1\r\n\
             To: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nX-Filler: {}\r\nContent-Length: {}\r\n\r\n{body}",
            "f".repeat(20_000),
            body.len()
        );
        let stream = format!("\r\n\r\n{one}\r\n{one}");
        let mut framer = StreamFramer::default();
        let mut got = Vec::new();
        for byte in stream.as_bytes() {
            framer.push(std::slice::from_ref(byte));
            while let Some(message) = framer.next_message().unwrap() {
                got.push(message);
            }
        }
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|m| m == one.as_bytes()));
        // Each byte looked at a bounded number of times, not once per read.
        assert!(
            framer.bytes_examined <= 5 * stream.len() as u64,
            "{} bytes examined for {}",
            framer.bytes_examined,
            stream.len()
        );
        // Fed whole, the same messages.
        let mut framer = StreamFramer::default();
        framer.push(stream.as_bytes());
        assert_eq!(
            framer.next_message().unwrap().as_deref(),
            Some(one.as_bytes())
        );
        assert_eq!(
            framer.next_message().unwrap().as_deref(),
            Some(one.as_bytes())
        );
        assert_eq!(framer.next_message().unwrap(), None);
        // No Content-Length on a stream: it cannot be framed.
        let mut framer = StreamFramer::default();
        framer.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n");
        assert!(framer.next_message().is_err());
    }
}

/// The methods counted under their own name in metrics; any other (an
/// extension method, or one made up by a sender) is `other`.
const KNOWN_METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "INFO",
    "PRACK",
    "UPDATE",
    "REFER",
    "NOTIFY",
    "SUBSCRIBE",
    "MESSAGE",
    "PUBLISH",
];

/// `method` as a metric label: its name when it is a standard method,
/// else `other`.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod label_tests {
    #[test]
    fn only_standard_methods_keep_their_name() {
        assert_eq!(super::method_label("INVITE"), "INVITE");
        assert_eq!(super::method_label("PUBLISH"), "PUBLISH");
        assert_eq!(super::method_label("invite"), "other");
        assert_eq!(super::method_label("X7f3a9"), "other");
    }
}
