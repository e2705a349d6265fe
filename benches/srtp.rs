//! SRTP protect/unprotect per profile for 172-byte (20 ms G.711/Opus) and
//! 1200-byte packets, in place. Results go to BENCHMARKS.md.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use webrtc_sip_gateway::media::srtp::{SrtpContext, SrtpKeyMaterial, SrtpProfile};

fn rtp(seq: u16, len: usize) -> [u8; 1500] {
    let mut buf = [0u8; 1500];
    buf[..12].copy_from_slice(&[
        0x80,
        111,
        (seq >> 8) as u8,
        seq as u8,
        0,
        0,
        3,
        0xc0,
        1,
        2,
        3,
        4,
    ]);
    for (i, b) in buf[12..len].iter_mut().enumerate() {
        *b = i as u8;
    }
    buf
}

fn bench(c: &mut Criterion) {
    for profile in SrtpProfile::ALL {
        let keys = SrtpKeyMaterial::new(
            profile,
            &vec![3; profile.master_key_len()],
            &vec![5; profile.master_salt_len()],
        )
        .unwrap();
        for len in [172usize, 1200] {
            let mut group = c.benchmark_group(format!("srtp/{}/{len}", profile.sdes_name()));
            group.throughput(Throughput::Elements(1));
            let mut tx = SrtpContext::new(&keys).unwrap();
            let mut seq = 0u16;
            let mut buf = rtp(0, len);
            group.bench_function("protect", |b| {
                b.iter(|| {
                    seq = seq.wrapping_add(1);
                    buf[2..4].copy_from_slice(&seq.to_be_bytes());
                    black_box(tx.protect_rtp(&mut buf, len).unwrap())
                })
            });
            let mut sender = SrtpContext::new(&keys).unwrap();
            let mut rx = SrtpContext::new(&keys).unwrap();
            let mut seq = 0u16;
            group.bench_function("unprotect", |b| {
                b.iter_batched_ref(
                    || {
                        seq = seq.wrapping_add(1);
                        let mut p = rtp(seq, len);
                        let n = sender.protect_rtp(&mut p, len).unwrap();
                        (p, n)
                    },
                    |(p, n)| black_box(rx.unprotect_rtp(&mut p[..*n]).unwrap()),
                    BatchSize::SmallInput,
                )
            });
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
