//! The transcoder against libopus as a browser would use it: tones through
//! each direction, measured at the far side by frequency and level.

use super::*;
use std::f64::consts::PI;

const PCMU: TranscodeSpec = TranscodeSpec {
    web_pt: 111,
    sip_pt: 0,
    sip_codec: SipCodec::Pcmu,
};

/// `count` samples at `rate` of tones (frequency, peak) summed.
fn tones(rate: u32, start: usize, count: usize, parts: &[(f64, f64)]) -> Vec<i16> {
    (start..start + count)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            let v: f64 = parts
                .iter()
                .map(|(f, a)| a * (2.0 * PI * f * t).sin())
                .sum();
            v.round().clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// The level (RMS of a sine's amplitude) at `freq` in `samples`, by Goertzel.
fn level_at(samples: &[i16], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * PI * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power.sqrt() / samples.len() as f64
}

/// A browser's Opus encoder: 48 kHz, FEC on as Chrome runs it.
fn browser_encoder(fec: bool) -> opus::Encoder {
    let mut e = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    e.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
    e.set_inband_fec(fec).unwrap();
    e.set_packet_loss_perc(if fec { 20 } else { 0 }).unwrap();
    e
}

/// Browser packets of 20 ms of `signal` at 48 kHz.
fn browser_packets(signal: &[i16], fec: bool) -> Vec<Vec<u8>> {
    let mut encoder = browser_encoder(fec);
    signal
        .chunks_exact(960)
        .map(|frame| encoder.encode_vec(frame, 1500).unwrap())
        .collect()
}

#[test]
fn a_browser_tone_reaches_the_switch_as_g711_at_its_frequency() {
    let signal = tones(48_000, 0, 48_000, &[(1000.0, 8000.0)]);
    let packets = browser_packets(&signal, false);
    let mut t = Transcoder::new(PCMU).unwrap();
    let mut heard = Vec::new();
    let mut out = [0u8; 1500];
    for (k, p) in packets.iter().enumerate() {
        let lost = t
            .web_packet(1000 + k as u16, 5000 + 960 * k as u32, p)
            .unwrap();
        assert_eq!(lost, 0);
        let (len, numbers) = t.web_current(&mut out).unwrap();
        assert_eq!(len, 160, "20 ms of G.711");
        assert_eq!(numbers.seq, 1000 + k as u16);
        // The G.711 clock: 160 ticks per 20 ms.
        assert_eq!(numbers.timestamp, 5000 / 6 + 160 * k as u32);
        heard.extend(out[..len].iter().map(|&b| g711::ulaw_decode(b)));
    }
    // Past the codecs' start-up: the tone is there at about its level, and
    // nothing else of note is.
    let steady = &heard[1600..];
    let tone = level_at(steady, 8000, 1000.0);
    assert!((5600.0..11_000.0).contains(&tone), "1 kHz at {tone}");
    for other in [300.0, 2000.0, 3000.0] {
        let l = level_at(steady, 8000, other);
        assert!(l < tone / 30.0, "{other} Hz at {l} beside {tone}");
    }
}

#[test]
fn a_tone_above_the_narrow_band_is_filtered_not_folded_back() {
    // 5 kHz cannot exist at 8 kHz: dropping samples would fold it onto
    // 3 kHz; a proper rate change removes it.
    let signal = tones(48_000, 0, 48_000, &[(1000.0, 6000.0), (5000.0, 6000.0)]);
    let packets = browser_packets(&signal, false);
    let mut t = Transcoder::new(PCMU).unwrap();
    let mut heard = Vec::new();
    let mut out = [0u8; 1500];
    for (k, p) in packets.iter().enumerate() {
        t.web_packet(k as u16, 960 * k as u32, p).unwrap();
        let (len, _) = t.web_current(&mut out).unwrap();
        heard.extend(out[..len].iter().map(|&b| g711::ulaw_decode(b)));
    }
    let steady = &heard[1600..];
    let wanted = level_at(steady, 8000, 1000.0);
    let folded = level_at(steady, 8000, 3000.0);
    assert!(wanted > 3000.0, "1 kHz at {wanted}");
    assert!(
        folded < wanted / 20.0,
        "3 kHz alias at {folded}, 1 kHz at {wanted}"
    );
}

#[test]
fn a_switch_tone_reaches_the_browser_as_opus_at_its_frequency() {
    let signal = tones(8000, 0, 8000, &[(700.0, 9000.0)]);
    let mut t = Transcoder::new(PCMU).unwrap();
    let mut browser = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut heard = Vec::new();
    let mut out = [0u8; 1500];
    let mut pcm = [0i16; 5760];
    for (k, frame) in signal.chunks_exact(160).enumerate() {
        let payload: Vec<u8> = frame.iter().map(|&s| g711::ulaw_encode(s)).collect();
        let chunks = t
            .sip_packet(0xabc, 7 + k as u16, 320 + 160 * k as u32, &payload)
            .unwrap();
        assert_eq!(chunks, 1);
        let (len, numbers) = t.sip_chunk(0, &mut out).unwrap();
        assert!(len > 10 && len < 200, "an Opus frame of {len} bytes");
        assert_eq!(numbers.timestamp, 320 * 6 + 960 * k as u32);
        let n = browser.decode(&out[..len], &mut pcm, false).unwrap();
        assert_eq!(n, 960);
        heard.extend_from_slice(&pcm[..n]);
    }
    let steady = &heard[9600..];
    let tone = level_at(steady, 48_000, 700.0);
    assert!((6000.0..12_000.0).contains(&tone), "700 Hz at {tone}");
    for other in [200.0, 1400.0, 2500.0] {
        let l = level_at(steady, 48_000, other);
        assert!(l < tone / 30.0, "{other} Hz at {l} beside {tone}");
    }
}

#[test]
fn a_30_ms_packet_becomes_20_and_10_ms_opus_packets_in_step() {
    let mut t = Transcoder::new(PCMU).unwrap();
    let payload = [0xffu8; 240];
    let mut out = [0u8; 1500];
    assert_eq!(t.sip_packet(1, 100, 8000, &payload), Ok(2));
    let (_, first) = t.sip_chunk(0, &mut out).unwrap();
    let (_, second) = t.sip_chunk(1, &mut out).unwrap();
    assert_eq!(second.seq, first.seq.wrapping_add(1));
    assert_eq!(second.timestamp, first.timestamp + 160 * 6, "20 ms later");
    // The next 30 ms packet follows on: 240 samples, 1440 Opus ticks on.
    assert_eq!(t.sip_packet(1, 101, 8240, &payload), Ok(2));
    let (_, third) = t.sip_chunk(0, &mut out).unwrap();
    assert_eq!(third.seq, second.seq.wrapping_add(1));
    assert_eq!(third.timestamp, first.timestamp + 240 * 6);
    let (_, fourth) = t.sip_chunk(1, &mut out).unwrap();
    // A packet lost on the SIP side leaves a gap in our numbers.
    assert_eq!(t.sip_packet(1, 103, 8720, &payload), Ok(2));
    let (_, after_gap) = t.sip_chunk(0, &mut out).unwrap();
    assert_eq!(after_gap.seq, fourth.seq.wrapping_add(2));
    assert_eq!(after_gap.timestamp, first.timestamp + 720 * 6);
    // Late, repeated and unreadable packets are refused.
    assert_eq!(
        t.sip_packet(1, 102, 8480, &payload),
        Err(TranscodeError::Late)
    );
    assert_eq!(
        t.sip_packet(1, 104, 8960, &payload[..70]),
        Err(TranscodeError::BadPayload)
    );
    assert_eq!(
        t.sip_packet(1, 104, 8960, &[]),
        Err(TranscodeError::BadPayload)
    );
    // The same source numbering again from far behind: taken, not refused.
    assert_eq!(t.sip_packet(1, 50_000, 9200, &payload[..80]), Ok(1));
    let (_, restarted) = t.sip_chunk(0, &mut out).unwrap();
    assert_eq!(restarted.seq, after_gap.seq.wrapping_add(1));
    // A new source goes on where our stream stood.
    assert_eq!(t.sip_packet(2, 9, 1_000_000, &payload[..160]), Ok(1));
    let (_, new_source) = t.sip_chunk(0, &mut out).unwrap();
    assert_eq!(new_source.seq, restarted.seq.wrapping_add(1));
    assert_eq!(new_source.timestamp, restarted.timestamp + 80 * 6);
}

#[test]
fn browser_numbers_map_across_with_gaps_made_up() {
    let signal = tones(48_000, 0, 9600, &[(440.0, 5000.0)]);
    let packets = browser_packets(&signal, true);
    let mut t = Transcoder::new(PCMU).unwrap();
    let mut out = [0u8; 1500];
    assert_eq!(t.web_packet(65_534, 96_000, &packets[0]), Ok(0));
    t.web_current(&mut out).unwrap();
    // Two lost (65535 and 0, across the wrap): both made up, oldest first.
    assert_eq!(t.web_packet(1, 96_000 + 3 * 960, &packets[3]), Ok(2));
    let (len, older) = t.web_made_up(2, &mut out).unwrap();
    assert_eq!(len, 160);
    assert_eq!(older.seq, 65_535);
    assert_eq!(older.timestamp, 16_000 + 160);
    let (_, newer) = t.web_made_up(1, &mut out).unwrap();
    assert_eq!(newer.seq, 0);
    assert_eq!(newer.timestamp, 16_000 + 320);
    let (_, current) = t.web_current(&mut out).unwrap();
    assert_eq!(current.seq, 1);
    assert_eq!(current.timestamp, 16_000 + 480);
    assert_eq!(t.recovered, 2);
    // A DTX silence: the timestamp jumps, the numbers do not; nothing lost.
    assert_eq!(t.web_packet(2, 96_000 + 50 * 960, &packets[4]), Ok(0));
    assert_eq!(
        t.web_current(&mut out).unwrap().1.timestamp,
        16_000 + 160 * 50
    );
    // A telephone-event beside it maps on the same clock.
    assert_eq!(t.web_timestamp_to_sip(96_000 + 50 * 960), 16_000 + 160 * 50);
    // Late or repeated packets are refused; garbage too.
    assert_eq!(
        t.web_packet(2, 96_000 + 50 * 960, &packets[4]),
        Err(TranscodeError::Late)
    );
    assert_eq!(t.web_packet(3, 0, &[]), Err(TranscodeError::BadPayload));
    // A long gap is not filled with seconds of made-up sound.
    assert_eq!(
        t.web_packet(40, 96_000 + 90 * 960, &packets[5]),
        Ok(MAX_MADE_UP)
    );
    // Numbers that start again far behind are a new run, not late packets
    // to refuse for ever; a jump far ahead likewise, with nothing made up.
    assert_eq!(t.web_packet(30_000, 96_000 + 91 * 960, &packets[6]), Ok(0));
    assert_eq!(
        t.web_packet(29_990, 96_000 + 92 * 960, &packets[7]),
        Err(TranscodeError::Late)
    );
    assert_eq!(t.web_packet(10, 96_000 + 93 * 960, &packets[7]), Ok(0));
}

/// Signal-to-noise ratio (dB) of `got` against `reference`.
fn snr_db(reference: &[i16], got: &[i16]) -> f64 {
    let signal: f64 = reference.iter().map(|&x| f64::from(x).powi(2)).sum();
    let noise: f64 = reference
        .iter()
        .zip(got)
        .map(|(&r, &g)| (f64::from(r) - f64::from(g)).powi(2))
        .sum();
    10.0 * (signal / noise.max(1.0)).log10()
}

/// One second at `rate` of a speech-like signal: a gliding pitch with
/// harmonics, gated into syllables, so concealment cannot simply carry a
/// steady tone on.
fn speech_like(rate: u32) -> Vec<i16> {
    (0..rate)
        .map(|n| {
            let t = f64::from(n) / f64::from(rate);
            let pitch = 140.0 + 60.0 * (2.0 * PI * 3.0 * t).sin();
            let envelope = 0.5 + 0.5 * (2.0 * PI * 4.0 * t).sin();
            let phase = 2.0 * PI * pitch * t;
            let v = (phase.sin() + 0.5 * (2.0 * phase).sin() + 0.3 * (3.0 * phase).sin())
                * envelope
                * 7000.0;
            v as i16
        })
        .collect()
}

#[test]
fn in_band_fec_recovers_a_lost_frame_better_than_concealment() {
    let signal = speech_like(48_000);
    let packets = browser_packets(&signal, true);
    // The reference: every packet decoded, nothing lost.
    let mut reference = Transcoder::new(PCMU).unwrap();
    // With FEC: packet k lost, made up from packet k + 1.
    let mut with_fec = Transcoder::new(PCMU).unwrap();
    // Concealment only: the same loss made up two places back (PLC), the
    // packet before the current one likewise lost.
    let mut out = [0u8; 1500];
    let (mut fec_snr, mut plc_snr, mut cases) = (0.0, 0.0, 0);
    let mut plc = opus::Decoder::new(8000, opus::Channels::Mono).unwrap();
    let mut plc_pcm = [0i16; 160];
    for (k, p) in packets.iter().enumerate() {
        let seq = k as u16;
        let ts = 960 * k as u32;
        reference.web_packet(seq, ts, p).unwrap();
        let (_, _) = reference.web_current(&mut out).unwrap();
        let expected: Vec<i16> = out[..160].iter().map(|&b| g711::ulaw_decode(b)).collect();
        let lost = k % 5 == 3 && k > 10;
        if lost {
            // Concealment alone, on a decoder that saw the same history.
            plc.decode(&[], &mut plc_pcm, false).unwrap();
            let concealed: Vec<i16> = plc_pcm
                .iter()
                .map(|&s| g711::ulaw_decode(g711::ulaw_encode(s)))
                .collect();
            plc_snr += snr_db(&expected, &concealed);
            continue;
        }
        let mut plain = [0i16; 160];
        plc.decode(p, &mut plain, false).unwrap();
        let made_up = with_fec.web_packet(seq, ts, p).unwrap();
        if made_up == 1 {
            let (len, _) = with_fec.web_made_up(1, &mut out).unwrap();
            let recovered: Vec<i16> = out[..len].iter().map(|&b| g711::ulaw_decode(b)).collect();
            fec_snr += snr_db(&previous_expected(&packets, k), &recovered);
            cases += 1;
        }
        with_fec.web_current(&mut out).unwrap();
    }
    assert!(cases > 5);
    let (fec_snr, plc_snr) = (fec_snr / cases as f64, plc_snr / cases as f64);
    assert!(
        fec_snr > plc_snr + 3.0,
        "FEC {fec_snr:.1} dB against concealment {plc_snr:.1} dB"
    );
}

/// The G.711 samples packet `k - 1` decodes to with nothing lost.
fn previous_expected(packets: &[Vec<u8>], k: usize) -> Vec<i16> {
    let mut t = Transcoder::new(PCMU).unwrap();
    let mut out = [0u8; 1500];
    for (j, p) in packets[..k].iter().enumerate() {
        t.web_packet(j as u16, 960 * j as u32, p).unwrap();
        t.web_current(&mut out).unwrap();
    }
    out[..160].iter().map(|&b| g711::ulaw_decode(b)).collect()
}

#[test]
fn garbage_from_the_browser_is_refused_and_the_stream_goes_on() {
    let mut t = Transcoder::new(TranscodeSpec {
        sip_codec: SipCodec::Pcma,
        ..PCMU
    })
    .unwrap();
    let mut out = [0u8; 1500];
    let good = browser_packets(&tones(48_000, 0, 1920, &[(500.0, 4000.0)]), false);
    t.web_packet(1, 0, &good[0]).unwrap();
    t.web_current(&mut out).unwrap();
    // A code-3 packet with no frame count, one whose frames overrun it, an
    // empty one and one longer than an MTU: each refused, none taken in.
    let too_long = [0x08u8; 1501];
    for (seq, garbage) in [&[0x03u8][..], &[0xfb, 0x3f][..], &[][..], &too_long[..]]
        .into_iter()
        .enumerate()
    {
        let refused = match t.web_packet(2 + seq as u16, 0, garbage) {
            Err(_) => true,
            Ok(_) => t.web_current(&mut out).is_err(),
        };
        assert!(refused, "garbage {garbage:02x?} taken");
    }
    // The next good packet still comes through as 20 ms of A-law.
    let lost = t.web_packet(10, 960, &good[1]).unwrap();
    assert!(lost <= MAX_MADE_UP);
    for back in (1..=lost).rev() {
        t.web_made_up(back, &mut out).unwrap();
    }
    assert_eq!(t.web_current(&mut out).unwrap().0, 160);
}

const G722: TranscodeSpec = TranscodeSpec {
    web_pt: 111,
    sip_pt: 9,
    sip_codec: SipCodec::G722,
};

#[test]
fn a_browser_tone_reaches_a_g722_switch_wideband_and_on_its_8_khz_clock() {
    // 1 kHz and 6 kHz: the second is past G.711's band but inside G.722's.
    let signal = tones(48_000, 0, 48_000, &[(1000.0, 5000.0), (6000.0, 5000.0)]);
    let packets = browser_packets(&signal, false);
    let mut t = Transcoder::new(G722).unwrap();
    let mut switch = audio_codec::g722::G722Decoder::new();
    let mut heard = Vec::new();
    let mut out = [0u8; 1500];
    let mut pcm = [0i16; 640];
    for (k, p) in packets.iter().enumerate() {
        t.web_packet(k as u16, 960 * k as u32, p).unwrap();
        let (len, numbers) = t.web_current(&mut out).unwrap();
        assert_eq!(len, 160, "20 ms of G.722 at 64 kbit/s");
        assert_eq!(
            numbers.timestamp,
            160 * k as u32,
            "G.722's RTP clock is 8 kHz"
        );
        let n = audio_codec::Decoder::decode_into(&mut switch, &out[..len], &mut pcm).unwrap();
        assert_eq!(n, 320, "16 kHz audio");
        heard.extend_from_slice(&pcm[..n]);
    }
    let steady = &heard[6400..];
    let low = level_at(steady, 16_000, 1000.0);
    let high = level_at(steady, 16_000, 6000.0);
    assert!(
        low > 2500.0 && high > 2500.0,
        "1 kHz at {low}, 6 kHz at {high}"
    );
    assert!(level_at(steady, 16_000, 3500.0) < low / 20.0);
}

#[test]
fn a_g722_switchs_wideband_tone_reaches_the_browser() {
    let signal = tones(16_000, 0, 16_000, &[(5000.0, 8000.0)]);
    let mut switch = audio_codec::g722::G722Encoder::new();
    let mut t = Transcoder::new(G722).unwrap();
    let mut browser = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut heard = Vec::new();
    let mut payload = [0u8; 320];
    let mut out = [0u8; 1500];
    let mut pcm = [0i16; 5760];
    let mut last: Option<(u16, u32)> = None;
    for (k, frame) in signal.chunks_exact(480).enumerate() {
        // 30 ms G.722 packets: 240 bytes, 240 ticks; cut into 20 + 10 ms.
        let len = audio_codec::Encoder::encode_into(&mut switch, frame, &mut payload).unwrap();
        assert_eq!(len, 240);
        let chunks = t
            .sip_packet(5, k as u16, 240 * k as u32, &payload[..len])
            .unwrap();
        assert_eq!(chunks, 2);
        for c in 0..chunks {
            let (n, numbers) = t.sip_chunk(c, &mut out).unwrap();
            if let Some((seq, ts)) = last {
                assert_eq!(numbers.seq, seq.wrapping_add(1));
                assert_eq!(numbers.timestamp, ts + if c == 0 { 480 } else { 960 });
            }
            last = Some((numbers.seq, numbers.timestamp));
            let decoded = browser.decode(&out[..n], &mut pcm, false).unwrap();
            heard.extend_from_slice(&pcm[..decoded]);
        }
    }
    let steady = &heard[9600..];
    let tone = level_at(steady, 48_000, 5000.0);
    assert!(tone > 3000.0, "5 kHz at {tone}: the band G.711 would lose");
}

/// Whether an Opus packet's first frame is coded by CELT alone (its TOC
/// byte's configuration 16-31, RFC 6716 section 3.1) or SILK alone (0-11).
fn celt_only(packet: &[u8]) -> bool {
    packet[0] >> 3 >= 16
}
fn silk_only(packet: &[u8]) -> bool {
    packet[0] >> 3 <= 11
}

/// `frames` 20 ms PCMU packets of speech through `t` toward the browser,
/// starting at packet `from` of the signal: the Opus packets.
fn toward_browser(t: &mut Transcoder, from: usize, frames: usize) -> Vec<Vec<u8>> {
    let signal = speech_like(8000);
    let mut out = [0u8; 1500];
    (from..from + frames)
        .map(|k| {
            let at = (k * 160) % (signal.len() - 160);
            let payload: Vec<u8> = signal[at..at + 160]
                .iter()
                .map(|&s| g711::ulaw_encode(s))
                .collect();
            t.sip_packet(9, k as u16, 160 * k as u32, &payload).unwrap();
            let (len, _) = t.sip_chunk(0, &mut out).unwrap();
            out[..len].to_vec()
        })
        .collect()
}

/// Mean SNR (dB) of frames made up by a browser's decoder for every fifth
/// of `packets` lost, against the frames decoded with nothing lost: from
/// the next packet's in-band FEC when `fec`, else by concealment.
fn browser_made_up_snr(packets: &[Vec<u8>], fec: bool) -> f64 {
    let mut reference = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let mut lossy = opus::Decoder::new(48_000, opus::Channels::Mono).unwrap();
    let (mut expected, mut got) = ([0i16; 960], [0i16; 960]);
    let (mut total, mut cases) = (0.0, 0);
    for (k, p) in packets.iter().enumerate() {
        reference.decode(p, &mut expected, false).unwrap();
        if k % 5 == 3 && k + 1 < packets.len() {
            if fec {
                lossy.decode(&packets[k + 1], &mut got, true).unwrap();
            } else {
                lossy.decode(&[], &mut got, false).unwrap();
            }
            total += snr_db(&expected, &got);
            cases += 1;
        } else {
            lossy.decode(p, &mut got, false).unwrap();
        }
    }
    total / f64::from(cases)
}

/// A browser makes up lost frames of `packets` from the next packet's FEC
/// clearly better than by concealment: the FEC is there.
fn assert_fec_beats_concealment(packets: &[Vec<u8>]) {
    let (fec, concealed) = (
        browser_made_up_snr(packets, true),
        browser_made_up_snr(packets, false),
    );
    assert!(
        fec > concealed + 3.0,
        "FEC {fec:.1} dB against concealment {concealed:.1} dB"
    );
}

#[test]
fn our_opus_is_celt_while_the_browser_reports_no_loss_and_silk_with_fec_once_it_does() {
    let mut t = Transcoder::new(PCMU).unwrap();
    assert_eq!(t.browser_protection(), BrowserProtection::Clear);
    let clear = toward_browser(&mut t, 0, 40);
    assert!(clear.iter().all(|p| celt_only(p)), "CELT from the start");
    // Under 2 % changes nothing.
    t.browser_reported_loss(4).unwrap();
    assert_eq!(t.browser_protection(), BrowserProtection::Clear);

    // About 5 % lost: SILK, with FEC the browser can make a lost packet up
    // from (the first two packets may carry libopus's switch-over).
    t.browser_reported_loss(13).unwrap();
    assert_eq!(
        t.browser_protection(),
        BrowserProtection::Protected { loss_percent: 6 }
    );
    let protected = toward_browser(&mut t, 40, 100);
    assert!(
        protected[2..].iter().all(|p| silk_only(p)),
        "SILK once lossy"
    );
    assert_fec_beats_concealment(&protected[2..]);
    // CELT carries no FEC: a browser's made-up frame is concealment.
    let (celt_fec, celt_concealed) = (
        browser_made_up_snr(&clear, true),
        browser_made_up_snr(&clear, false),
    );
    assert!(
        (celt_fec - celt_concealed).abs() < 1.0,
        "CELT: {celt_fec:.1} dB from the next packet, {celt_concealed:.1} dB concealed"
    );

    // The FEC follows the loss reported; a report between 1 and 2 % keeps
    // it; one clean report is not enough to drop it, two are.
    t.browser_reported_loss(40).unwrap();
    assert_eq!(
        t.browser_protection(),
        BrowserProtection::Protected { loss_percent: 16 }
    );
    t.browser_reported_loss(4).unwrap();
    t.browser_reported_loss(0).unwrap();
    assert!(matches!(
        t.browser_protection(),
        BrowserProtection::Protected { .. }
    ));
    t.browser_reported_loss(4).unwrap();
    t.browser_reported_loss(0).unwrap();
    assert!(matches!(
        t.browser_protection(),
        BrowserProtection::Protected { .. }
    ));
    t.browser_reported_loss(1).unwrap();
    assert_eq!(t.browser_protection(), BrowserProtection::Clear);
    let again = toward_browser(&mut t, 140, 40);
    assert!(again[2..].iter().all(|p| celt_only(p)), "CELT again");
}

#[test]
fn a_g722_calls_opus_follows_the_browsers_loss_too() {
    let mut t = Transcoder::new(G722).unwrap();
    let signal = speech_like(16_000);
    let mut switch = audio_codec::g722::G722Encoder::new();
    let mut payload = [0u8; 160];
    let mut out = [0u8; 1500];
    let mut packets = |t: &mut Transcoder, from: usize| -> Vec<Vec<u8>> {
        (from..from + 30)
            .map(|k| {
                let frame = &signal[(k % 49) * 320..(k % 49 + 1) * 320];
                let len =
                    audio_codec::Encoder::encode_into(&mut switch, frame, &mut payload).unwrap();
                t.sip_packet(5, k as u16, 160 * k as u32, &payload[..len])
                    .unwrap();
                let (n, _) = t.sip_chunk(0, &mut out).unwrap();
                out[..n].to_vec()
            })
            .collect()
    };
    assert!(packets(&mut t, 0).iter().all(|p| celt_only(p)));
    t.browser_reported_loss(26).unwrap();
    let protected = packets(&mut t, 30);
    assert!(protected[2..].iter().all(|p| silk_only(p)));
    assert_fec_beats_concealment(&protected[2..]);
}
