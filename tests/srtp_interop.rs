//! SRTP/SRTCP interop with libsrtp (PyPI `pylibsrtp`, installed by the test
//! command): what libsrtp protects we unprotect, and the reverse, for every
//! profile, across a sequence-number rollover.

mod interop;

use interop::libsrtp;
use serde_json::json;
use webrtc_sip_gateway::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};

const SSRC: u32 = 0xcafe_f00d;

fn material(profile: SrtpProfile) -> SrtpKeyMaterial {
    let key: Vec<u8> = (0..profile.master_key_len() as u8)
        .map(|i| i * 7 + 3)
        .collect();
    let salt: Vec<u8> = (0..profile.master_salt_len() as u8)
        .map(|i| 0xa0 ^ i)
        .collect();
    SrtpKeyMaterial::new(profile, &key, &salt).unwrap()
}

/// RTP packets across a rollover, with a CSRC and a header extension on some.
fn rtp_packets() -> Vec<Vec<u8>> {
    (0..40u32)
        .map(|i| {
            let seq = (65_520 + i) as u16;
            let mut p = Vec::new();
            if i % 5 == 0 {
                p.extend_from_slice(&[0x91, 0x80 | 111]);
            } else {
                p.extend_from_slice(&[0x80, 111]);
            }
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&(i * 960).to_be_bytes());
            p.extend_from_slice(&SSRC.to_be_bytes());
            if i % 5 == 0 {
                p.extend_from_slice(&0x1122_3344u32.to_be_bytes()); // CSRC
                p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]); // one-byte extension
            }
            p.extend((0..(20 + i as usize * 7)).map(|b| (b as u8).wrapping_mul(31) ^ i as u8));
            p
        })
        .collect()
}

fn rtcp_packets() -> Vec<Vec<u8>> {
    (0..5u8)
        .map(|i| {
            let mut p = vec![0x80, 200, 0, 6];
            p.extend_from_slice(&SSRC.to_be_bytes());
            p.extend(std::iter::repeat_n(i, 20));
            p
        })
        .collect()
}

fn hexes(list: &[Vec<u8>]) -> Vec<String> {
    list.iter().map(hex::encode).collect()
}

fn key_hex(m: &SrtpKeyMaterial) -> String {
    hex::encode(m.concatenated())
}

#[test]
fn we_open_what_libsrtp_protects() {
    for profile in SrtpProfile::ALL {
        let keys = material(profile);
        let (rtp, rtcp) = (rtp_packets(), rtcp_packets());
        let answer = libsrtp(json!({
            "op": "protect", "profile": profile.sdes_name(), "key": key_hex(&keys),
            "rtp": hexes(&rtp), "rtcp": hexes(&rtcp),
        }));
        let mut rx = SrtpContext::new(&keys).unwrap();
        for (plain, wire) in rtp.iter().zip(answer["rtp"].as_array().unwrap()) {
            let mut buf = hex::decode(wire.as_str().unwrap()).unwrap();
            assert_eq!(
                buf.len(),
                plain.len() + profile.rtp_overhead(),
                "{profile:?}"
            );
            let n = rx
                .unprotect_rtp(&mut buf)
                .unwrap_or_else(|e| panic!("{profile:?}: {e}"));
            assert_eq!(&buf[..n], &plain[..], "{profile:?}");
        }
        for (plain, wire) in rtcp.iter().zip(answer["rtcp"].as_array().unwrap()) {
            let mut buf = hex::decode(wire.as_str().unwrap()).unwrap();
            let n = rx
                .unprotect_rtcp(&mut buf)
                .unwrap_or_else(|e| panic!("{profile:?} RTCP: {e}"));
            assert_eq!(&buf[..n], &plain[..], "{profile:?} RTCP");
        }
    }
}

#[test]
fn libsrtp_opens_what_we_protect() {
    for profile in SrtpProfile::ALL {
        let keys = material(profile);
        let mut tx = SrtpContext::new(&keys).unwrap();
        let (rtp, rtcp) = (rtp_packets(), rtcp_packets());
        let protect = |packets: &[Vec<u8>], tx: &mut SrtpContext, rtcp: bool| -> Vec<Vec<u8>> {
            packets
                .iter()
                .map(|p| {
                    let mut buf = p.clone();
                    buf.resize(p.len() + 32, 0);
                    let n = if rtcp {
                        tx.protect_rtcp(&mut buf, p.len()).unwrap()
                    } else {
                        tx.protect_rtp(&mut buf, p.len()).unwrap()
                    };
                    buf.truncate(n);
                    buf
                })
                .collect()
        };
        let mut wire_rtp = protect(&rtp, &mut tx, false);
        let wire_rtcp = protect(&rtcp, &mut tx, true);
        // One packet damaged on the way: libsrtp must refuse exactly that one.
        let last = wire_rtp.len() - 1;
        let mid = wire_rtp[last].len() / 2;
        wire_rtp[last][mid] ^= 0x01;
        let answer = libsrtp(json!({
            "op": "unprotect", "profile": profile.sdes_name(), "key": key_hex(&keys),
            "rtp": hexes(&wire_rtp), "rtcp": hexes(&wire_rtcp),
        }));
        let opened = answer["rtp"].as_array().unwrap();
        for (i, (plain, got)) in rtp.iter().zip(opened).enumerate() {
            if i == last {
                assert!(
                    got.is_null(),
                    "{profile:?}: libsrtp accepted a damaged packet"
                );
            } else {
                assert_eq!(
                    got.as_str(),
                    Some(hex::encode(plain).as_str()),
                    "{profile:?} packet {i}"
                );
            }
        }
        for (plain, got) in rtcp.iter().zip(answer["rtcp"].as_array().unwrap()) {
            assert_eq!(
                got.as_str(),
                Some(hex::encode(plain).as_str()),
                "{profile:?} RTCP"
            );
        }
    }
}
