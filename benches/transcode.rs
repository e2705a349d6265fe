//! CPU per 20 ms packet of a transcoded call, each way (Opus from a
//! browser to G.711 or G.722, and back to Opus for the browser) and for a lost packet
//! made up from the next one's FEC, on a speech-like signal. Results go to
//! BENCHMARKS.md with the relay load generator's whole-path figures.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use webrtc_sip_gateway::media::transcode::{g711, SipCodec, TranscodeSpec, Transcoder};

const SPEC: TranscodeSpec = TranscodeSpec {
    web_pt: 111,
    sip_pt: 0,
    sip_codec: SipCodec::Pcmu,
};

/// `seconds` of a voice-like signal at `rate`: a pitch gliding about 140 Hz
/// with three harmonics, gated into syllables four times a second.
fn voice(rate: u32, seconds: u32) -> Vec<i16> {
    (0..rate * seconds)
        .map(|n| {
            let t = f64::from(n) / f64::from(rate);
            let pitch = 140.0 + 60.0 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
            let envelope = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 4.0 * t).sin();
            let phase = 2.0 * std::f64::consts::PI * pitch * t;
            ((phase.sin() + 0.5 * (2.0 * phase).sin() + 0.3 * (3.0 * phase).sin())
                * envelope
                * 7000.0) as i16
        })
        .collect()
}

/// The browser's side: 20 ms Opus packets as Chromium makes them (48 kHz,
/// 32 kbit/s, in-band FEC for 10 % loss), up to `bandwidth`.
fn browser_packets(bandwidth: opus::Bandwidth) -> Vec<Vec<u8>> {
    let mut encoder =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    encoder.set_max_bandwidth(bandwidth).unwrap();
    encoder.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
    encoder.set_inband_fec(true).unwrap();
    encoder.set_packet_loss_perc(10).unwrap();
    voice(48_000, 2)
        .chunks_exact(960)
        .map(|frame| encoder.encode_vec(frame, 1500).unwrap())
        .collect()
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Browser packets (`packets`, 20 ms each, in turn) through a transcoder
/// for `spec` toward the SIP side.
fn browser_to_sip(group: &mut Group<'_>, name: &str, spec: TranscodeSpec, packets: &[Vec<u8>]) {
    let mut t = Transcoder::new(spec).unwrap();
    let mut out = [0u8; 1500];
    let (mut seq, mut k) = (0u16, 0usize);
    group.bench_function(name, |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            k = (k + 1) % packets.len();
            t.web_packet(seq, u32::from(seq) * 960, &packets[k])
                .unwrap();
            black_box(t.web_current(&mut out).unwrap())
        })
    });
}

/// SIP payloads (`payloads`, 20 ms each, in turn) through a transcoder for
/// `spec` toward the browser, whose receiver reports said it lost
/// `browser_loss` (of 256) of our Opus: none codes it with CELT, 13 (5 %)
/// with SILK and in-band FEC.
fn sip_to_browser(
    group: &mut Group<'_>,
    name: &str,
    spec: TranscodeSpec,
    payloads: &[Vec<u8>],
    browser_loss: u8,
) {
    let mut t = Transcoder::new(spec).unwrap();
    t.browser_reported_loss(browser_loss).unwrap();
    let mut out = [0u8; 1500];
    let (mut seq, mut k) = (0u16, 0usize);
    group.bench_function(name, |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            k = (k + 1) % payloads.len();
            t.sip_packet(7, seq, u32::from(seq) * 160, &payloads[k])
                .unwrap();
            black_box(t.sip_chunk(0, &mut out).unwrap())
        })
    });
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("transcode");
    group.throughput(Throughput::Elements(1));
    let packets = browser_packets(opus::Bandwidth::Fullband);
    // The same from a browser told to send no more than wideband
    // (maxplaybackrate=16000): SILK alone, cheaper to decode.
    let wideband = browser_packets(opus::Bandwidth::Wideband);
    browser_to_sip(
        &mut group,
        "browser_to_sip_wideband_opus_to_pcmu_20ms",
        SPEC,
        &wideband,
    );
    browser_to_sip(
        &mut group,
        "browser_to_sip_opus_to_pcmu_20ms",
        SPEC,
        &packets,
    );

    let mut t = Transcoder::new(SPEC).unwrap();
    let mut out = [0u8; 1500];
    let (mut seq, mut k) = (0u16, 0usize);
    group.bench_function("lost_browser_packet_made_up_from_fec_20ms", |b| {
        b.iter(|| {
            // Every other number is lost: each packet makes up the one before.
            seq = seq.wrapping_add(2);
            k = (k + 1) % packets.len();
            let lost = t
                .web_packet(seq, u32::from(seq) * 960, &packets[k])
                .unwrap();
            if lost > 0 {
                black_box(t.web_made_up(1, &mut out).unwrap());
            }
            black_box(t.web_current(&mut out).unwrap())
        })
    });

    let g711: Vec<Vec<u8>> = voice(8000, 2)
        .chunks_exact(160)
        .map(|frame| frame.iter().map(|&s| g711::ulaw_encode(s)).collect())
        .collect();
    sip_to_browser(
        &mut group,
        "sip_to_browser_pcmu_to_opus_20ms",
        SPEC,
        &g711,
        0,
    );
    sip_to_browser(
        &mut group,
        "sip_to_browser_pcmu_to_opus_with_fec_20ms",
        SPEC,
        &g711,
        13,
    );

    // G.722 toward the switch: 16 kHz audio both ways.
    let g722_spec = TranscodeSpec {
        web_pt: 111,
        sip_pt: 9,
        sip_codec: SipCodec::G722,
    };
    browser_to_sip(
        &mut group,
        "browser_to_sip_opus_to_g722_20ms",
        g722_spec,
        &packets,
    );
    let mut switch = audio_codec::g722::G722Encoder::new();
    let g722: Vec<Vec<u8>> = voice(16_000, 2)
        .chunks_exact(320)
        .map(|frame| {
            let mut payload = vec![0u8; 160];
            let n = audio_codec::Encoder::encode_into(&mut switch, frame, &mut payload).unwrap();
            payload.truncate(n);
            payload
        })
        .collect();
    sip_to_browser(
        &mut group,
        "sip_to_browser_g722_to_opus_20ms",
        g722_spec,
        &g722,
        0,
    );
    sip_to_browser(
        &mut group,
        "sip_to_browser_g722_to_opus_with_fec_20ms",
        g722_spec,
        &g722,
        13,
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
