//! Micro-benchmarks of the signaling plane's per-request work: token
//! verification, the CORS decision, log masking, and a session's
//! create → push → poll cycle. Results go to BENCHMARKS.md.

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use webrtc_sip_gateway::api::cors::CorsPolicy;
use webrtc_sip_gateway::api::token;
use webrtc_sip_gateway::logging::scrub;
use webrtc_sip_gateway::session::{SessionEvent, SessionStore};

fn bench(c: &mut Criterion) {
    let secret = b"a-backend-secret-of-reasonable-length";
    let t = token::issue(secret, "1001", 4_000_000_000);
    c.bench_function("token_verify", |b| {
        b.iter(|| token::verify(secret, black_box(&t), "1001", 1_700_000_000, u64::MAX))
    });

    let policy = CorsPolicy::new(&[
        "https://app.example.com".into(),
        "https://*.example.org".into(),
        "partner.example.net".into(),
    ])
    .unwrap();
    c.bench_function("cors_judge_wildcard", |b| {
        b.iter(|| policy.judge(black_box(Some("https://a.b.example.org"))))
    });

    let plain = "/v1/sessions/3ARU3xlFtUcEDoQpcZJstw/events?after=12&timeout=25";
    let secret_uri = "/v1/sessions?MMM_key=abc&XXX_drop=def&token=ghi";
    c.bench_function("log_scrub_plain", |b| b.iter(|| scrub(black_box(plain))));
    c.bench_function("log_scrub_with_secrets", |b| {
        b.iter(|| scrub(black_box(secret_uri)))
    });

    c.bench_function("session_create_push_poll_remove", |b| {
        let mut store = SessionStore::new(
            std::time::Duration::from_secs(300),
            1_000_000,
            webrtc_sip_gateway::random::Random::seeded(1),
        );
        let now = Instant::now();
        b.iter(|| {
            let s = store
                .create("1001", None, std::net::Ipv4Addr::LOCALHOST.into(), now)
                .unwrap();
            store.push(&s.id, SessionEvent::CallRinging { call: "c".into() });
            let p = store.begin_poll(&s.id, &s.secret, 0, now).unwrap();
            store.end_poll(&s.id, now);
            store.remove(&s.id);
            black_box(p.events.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
