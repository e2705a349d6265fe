//! Logging: `tracing` events written as pretty text or JSON lines, with
//! secrets masked at the source — in this layer, before anything is written.
//!
//! Masking rules (applied to event and span fields alike):
//! - a field whose name contains `password`, `secret`, `token`,
//!   `authorization`, `cookie` or names a request `body` is shown as `****`;
//! - a field whose name starts with `XXX_` is dropped entirely, one starting
//!   with `MMM_` is shown as `****`;
//! - inside every text value, the same rules apply to `name=value` and
//!   `name: value` pairs (URLs, query strings, header lines; `name:value`
//!   without the space too, as in `Authorization:Digest …` or
//!   `a=ice-pwd:…`), SDES keys (`inline:<key>`) are masked, and so is the
//!   password of a URI's user part (`sip:user:password@host`);
//! - in the pretty format, control characters in values are written
//!   escaped (`\r`, `\n`, `\u{1b}`), so a value cannot start a forged log
//!   line; JSON escapes them by itself.
//!
//! Our own layer rather than `tracing_subscriber::fmt`, because its JSON
//! formatter writes event fields through a visitor that cannot be hooked.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::config::secret::MASK;
use crate::config::{LogConfig, LogFormat};

/// What to do with a field of a given name.
#[derive(Debug, PartialEq, Eq)]
enum FieldRule {
    Keep,
    Mask,
    Drop,
}

/// Parts of a name that make its value a secret.
const SENSITIVE: [&str; 6] = [
    "password",
    "secret",
    "token",
    "authorization",
    "cookie",
    "pwd",
];

fn rule_for(name: &str) -> FieldRule {
    if name.starts_with("XXX_") {
        return FieldRule::Drop;
    }
    if name.starts_with("MMM_") {
        return FieldRule::Mask;
    }
    let lower = name.to_ascii_lowercase();
    if SENSITIVE.iter().any(|s| lower.contains(s)) || lower == "body" || lower.ends_with("_body") {
        FieldRule::Mask
    } else {
        FieldRule::Keep
    }
}

/// Masks secrets inside free text: `name=value` / `name: value` pairs whose
/// name is sensitive, `XXX_`/`MMM_` parameters, and SDES `inline:` keys.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    let pairs = SENSITIVE
        .iter()
        .chain(&["xxx_", "mmm_", "inline:"])
        .any(|m| lower.contains(m));
    let uris = lower.contains("sip:") || lower.contains("sips:") || lower.contains("://");
    match (pairs, uris) {
        (false, false) => Cow::Borrowed(text),
        (true, false) => Cow::Owned(scrub_pairs(text)),
        (false, true) => scrub_uri_passwords(text),
        (true, true) => Cow::Owned(scrub_uri_passwords(&scrub_pairs(text)).into_owned()),
    }
}

/// The password in a URI's user part (`sip:user:password@`,
/// `scheme://user:password@`) becomes `****`.
fn scrub_uri_passwords(text: &str) -> Cow<'_, str> {
    let lower = text.to_ascii_lowercase();
    let mut out = String::new();
    let mut copied = 0;
    let mut from = 0;
    while let Some(found) = ["sip:", "sips:", "://"]
        .iter()
        .filter_map(|scheme| {
            lower[from..]
                .find(scheme)
                .map(|at| (from + at, scheme.len()))
        })
        .min()
    {
        let user_start = found.0 + found.1;
        from = user_start;
        // The user part ends at '@'; a delimiter first means there is none.
        let rest = &text[user_start..];
        let Some(at) = rest.find(|c: char| {
            c == '@' || c.is_whitespace() || matches!(c, '>' | ';' | ',' | '"' | '/' | '?')
        }) else {
            break;
        };
        if !rest[at..].starts_with('@') {
            continue;
        }
        if let Some(colon) = rest[..at].find(':') {
            out.push_str(&text[copied..user_start + colon + 1]);
            out.push_str(MASK);
            copied = user_start + at;
        }
        from = user_start + at;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Masks `name=value` / `name: value` pairs with a sensitive name,
/// `XXX_`/`MMM_` parameters and SDES `inline:` keys.
fn scrub_pairs(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        // A name: a run of [A-Za-z0-9_.-].
        let start = i;
        while i < bytes.len() && is_name_byte(bytes[i]) {
            i += 1;
        }
        let name = &text[start..i];
        if name.is_empty() {
            let ch = text[i..].chars().next().map_or(1, char::len_utf8);
            out.push_str(&text[i..i + ch]);
            i += ch;
            continue;
        }
        // `inline:KEY` (SDES), `name=value`, `name: value`, and for a
        // sensitive name `name:value` (a header written without the space,
        // an SDP attribute): the last two run to the line's end.
        let (sep_len, header_style) = match bytes.get(i) {
            Some(b'=') => (1, false),
            Some(b':') if name.eq_ignore_ascii_case("inline") => (1, false),
            Some(b':') if bytes.get(i + 1) == Some(&b' ') => (2, true),
            Some(b':') if rule_for(name) != FieldRule::Keep => (1, true),
            _ => (0, false),
        };
        let rule = if name.eq_ignore_ascii_case("inline") && sep_len == 1 {
            FieldRule::Mask
        } else if sep_len > 0 {
            rule_for(name)
        } else {
            FieldRule::Keep
        };
        if rule == FieldRule::Keep {
            out.push_str(name);
            continue;
        }
        // The value runs to a delimiter; a `name: value` header runs to the line end.
        let value_start = i + sep_len;
        let mut end = value_start;
        while end < bytes.len() {
            let b = bytes[end];
            let stop = if header_style {
                b == b'\r' || b == b'\n'
            } else {
                matches!(
                    b,
                    b'&' | b';'
                        | b','
                        | b' '
                        | b'\t'
                        | b'\r'
                        | b'\n'
                        | b'"'
                        | b'\''
                        | b'|'
                        | b')'
                        | b'}'
                )
            };
            if stop {
                break;
            }
            end += 1;
        }
        match rule {
            FieldRule::Drop => {}
            _ => {
                out.push_str(&text[start..value_start]);
                out.push_str(MASK);
            }
        }
        i = end;
    }
    out
}

/// `text` with control characters written as escapes, for the pretty
/// format (one event, one line).
fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.'
}

/// Fields of one event or span, already masked.
#[derive(Default)]
struct Fields {
    message: Option<String>,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let name = field.name();
        if name == "message" {
            self.message = Some(scrub(value).into_owned());
            return;
        }
        match rule_for(name) {
            FieldRule::Drop => {}
            FieldRule::Mask => self.pairs.push((name, MASK.to_string())),
            FieldRule::Keep => self.pairs.push((name, scrub(value).into_owned())),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_number(field, value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_number(field, value.to_string());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.record_number(field, value.to_string());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.record_number(field, value.to_string());
    }
}

impl Fields {
    fn record_number(&mut self, field: &Field, text: String) {
        match rule_for(field.name()) {
            FieldRule::Drop => {}
            FieldRule::Mask => self.pairs.push((field.name(), MASK.to_string())),
            FieldRule::Keep => self.pairs.push((field.name(), text)),
        }
    }
}

/// The layer that formats and writes events.
pub struct MaskingLayer<W> {
    format: LogFormat,
    make_writer: W,
}

impl<W> MaskingLayer<W> {
    pub fn new(format: LogFormat, make_writer: W) -> Self {
        MaskingLayer {
            format,
            make_writer,
        }
    }
}

impl<S, W> Layer<S> for MaskingLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<Fields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let meta = event.metadata();
        let mut spans: Vec<(String, Vec<(&'static str, String)>)> = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                let ext = span.extensions();
                let pairs = ext
                    .get::<Fields>()
                    .map(|f| f.pairs.clone())
                    .unwrap_or_default();
                spans.push((span.name().to_string(), pairs));
            }
        }
        let line = match self.format {
            LogFormat::Pretty => pretty_line(meta, &fields, &spans),
            LogFormat::Json => json_line(meta, &fields, &spans),
        };
        let mut writer = self.make_writer.make_writer_for(meta);
        let _ = writer.write_all(line.as_bytes());
    }
}

fn pretty_line(
    meta: &tracing::Metadata<'_>,
    fields: &Fields,
    spans: &[(String, Vec<(&'static str, String)>)],
) -> String {
    let mut line = String::new();
    let _ = write!(
        line,
        "{} {:>5} ",
        timestamp(SystemTime::now()),
        meta.level()
    );
    for (name, pairs) in spans {
        line.push_str(name);
        if !pairs.is_empty() {
            line.push('{');
            for (i, (k, v)) in pairs.iter().enumerate() {
                if i > 0 {
                    line.push(' ');
                }
                let _ = write!(line, "{k}={}", escape_controls(v));
            }
            line.push('}');
        }
        line.push(':');
    }
    if !spans.is_empty() {
        line.push(' ');
    }
    let _ = write!(line, "{}: ", meta.target());
    if let Some(m) = &fields.message {
        line.push_str(&escape_controls(m));
    }
    for (k, v) in &fields.pairs {
        let _ = write!(line, " {k}={}", escape_controls(v));
    }
    line.push('\n');
    line
}

fn json_line(
    meta: &tracing::Metadata<'_>,
    fields: &Fields,
    spans: &[(String, Vec<(&'static str, String)>)],
) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("timestamp".into(), timestamp(SystemTime::now()).into());
    obj.insert("level".into(), meta.level().as_str().into());
    obj.insert("target".into(), meta.target().into());
    if let Some(m) = &fields.message {
        obj.insert("message".into(), m.clone().into());
    }
    let event_fields: serde_json::Map<_, _> = fields
        .pairs
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(v.clone())))
        .collect();
    if !event_fields.is_empty() {
        obj.insert("fields".into(), event_fields.into());
    }
    if !spans.is_empty() {
        let list: Vec<serde_json::Value> = spans
            .iter()
            .map(|(name, pairs)| {
                let mut s = serde_json::Map::new();
                s.insert("name".into(), name.clone().into());
                for (k, v) in pairs {
                    s.insert(k.to_string(), v.clone().into());
                }
                s.into()
            })
            .collect();
        obj.insert("spans".into(), list.into());
    }
    let mut line = serde_json::Value::Object(obj).to_string();
    line.push('\n');
    line
}

/// RFC 3339 UTC with milliseconds.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Installs the global subscriber: the configured filter and our layer on stderr.
pub fn init(config: &LogConfig) -> Result<(), String> {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.level)
        .map_err(|e| format!("log.level: {e}"))?;
    tracing_subscriber::registry()
        .with(filter)
        .with(MaskingLayer::new(config.format, std::io::stderr))
        .try_init()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::prelude::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn capture(format: LogFormat, f: impl FnOnce()) -> String {
        let cap = Capture::default();
        let subscriber =
            tracing_subscriber::registry().with(MaskingLayer::new(format, cap.clone()));
        tracing::subscriber::with_default(subscriber, f);
        let bytes = cap.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    fn emit_secrets() {
        let span = tracing::info_span!("session", sid = "s1", token = "TOKEN-IN-SPAN");
        let _g = span.enter();
        tracing::info!(
            password = "PW-FIELD",
            user_secret = "SECRET-FIELD",
            authorization = "Bearer AUTH-FIELD",
            body = "{\"password\":\"PW-BODY\"}",
            XXX_dropme = "DROPPED-VALUE",
            MMM_maskme = "MASKED-VALUE",
            path = "/v1/x?MMM_key=QUERY-MASK&XXX_gone=QUERY-DROP&token=QUERY-TOKEN&keep=visible",
            sdp = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:SDESKEYSDESKEY|2^31",
            user = "1001",
            "request from {} with password={}",
            "client",
            "PW-IN-MESSAGE"
        );
        tracing::warn!("Authorization: Digest username=\"a\", response=\"HDR-VALUE\"\r\nVia: x");
    }

    #[test]
    fn no_secret_reaches_the_log_in_either_format() {
        for format in [LogFormat::Pretty, LogFormat::Json] {
            let out = capture(format, emit_secrets);
            for secret in [
                "TOKEN-IN-SPAN",
                "PW-FIELD",
                "SECRET-FIELD",
                "AUTH-FIELD",
                "PW-BODY",
                "DROPPED-VALUE",
                "MASKED-VALUE",
                "QUERY-MASK",
                "QUERY-DROP",
                "QUERY-TOKEN",
                "SDESKEYSDESKEY",
                "PW-IN-MESSAGE",
                "HDR-VALUE",
                "XXX_dropme",
                "XXX_gone",
            ] {
                assert!(!out.contains(secret), "{format:?} leaked {secret}: {out}");
            }
            for kept in [
                "1001",
                "keep=visible",
                "MMM_maskme",
                "MMM_key=****",
                "sid",
                "Via: x",
                "inline:****",
            ] {
                assert!(out.contains(kept), "{format:?} lost {kept}: {out}");
            }
        }
    }

    #[test]
    fn json_lines_parse() {
        let out = capture(LogFormat::Json, emit_secrets);
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        }
    }

    #[test]
    fn scrub_leaves_plain_text_alone() {
        assert!(matches!(scrub("GET /v1/sessions 201"), Cow::Borrowed(_)));
        assert_eq!(scrub("a=1&password=x&b=2"), "a=1&password=****&b=2");
        assert_eq!(scrub("q?XXX_a=1&b=2"), "q?&b=2");
    }

    #[test]
    fn secrets_written_without_a_space_or_in_uris_are_masked() {
        for (text, secret) in [
            (
                "Authorization:Digest username=\"a\", response=\"NOSPACE1\"\r\nVia: x",
                "NOSPACE1",
            ),
            (
                "Proxy-Authorization:Digest response=\"NOSPACE2\"",
                "NOSPACE2",
            ),
            (
                "a=ice-ufrag:abcd\r\na=ice-pwd:ICEPASSWORD123\r\na=mid:0",
                "ICEPASSWORD123",
            ),
            ("INVITE sip:1001:URIPASS@pbx.example SIP/2.0", "URIPASS"),
            (
                "Contact: <sips:bob:URIPASS2@192.0.2.1;transport=tls>",
                "URIPASS2",
            ),
            ("fetch https://user:WEBPASS@host.example/x", "WEBPASS"),
        ] {
            let out = scrub(text);
            assert!(!out.contains(secret), "{text:?} -> {out:?}");
            assert!(out.contains(MASK), "{out}");
        }
        // What is no secret stays.
        assert_eq!(
            scrub("a=ice-ufrag:abcd\r\na=ice-pwd:x\r\na=mid:0"),
            "a=ice-ufrag:abcd\r\na=ice-pwd:****\r\na=mid:0"
        );
        assert_eq!(
            scrub("sip:1001@pbx.example;transport=tcp"),
            "sip:1001@pbx.example;transport=tcp"
        );
        assert_eq!(
            scrub("INVITE sip:1001:pw@h SIP/2.0"),
            "INVITE sip:1001:****@h SIP/2.0"
        );
        assert!(matches!(scrub("to sip:1001@pbx.example"), Cow::Borrowed(_)));
    }

    #[test]
    fn control_characters_cannot_forge_a_pretty_line() {
        let out = capture(LogFormat::Pretty, || {
            tracing::info!(
                uri = "sip:1001\r\n2026-01-01T00:00:00.000Z  INFO forged: line@x",
                "incoming \u{1b}[31mred\u{1b}[0m"
            );
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("sip:1001\\r\\n2026"), "{out}");
        assert!(out.contains("\\u{1b}[31mred"), "{out}");
        let json = capture(LogFormat::Json, || {
            tracing::info!(uri = "a\r\nb", "c\nd");
        });
        assert_eq!(json.lines().count(), 1, "{json}");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_420), (2025, 11, 28));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }
}
