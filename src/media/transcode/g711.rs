//! G.711 µ-law and A-law (ITU-T G.711): one byte per sample at 8 kHz, a
//! 16-bit linear sample companded to a sign, a 3-bit segment and a 4-bit
//! step. Our own code: a table-free computation of a few instructions per
//! sample, checked against the standard's reference values below.

/// µ-law's bias: added before the segment search so that every segment is
/// one power of two wide.
const ULAW_BIAS: i32 = 0x84;
/// The largest magnitude µ-law represents before the bias.
const ULAW_CLIP: i32 = 32_635;

/// One linear sample to µ-law.
pub fn ulaw_encode(sample: i16) -> u8 {
    let value = i32::from(sample);
    let (sign, magnitude) = if value < 0 {
        (0x80, (-value).min(ULAW_CLIP))
    } else {
        (0x00, value.min(ULAW_CLIP))
    };
    let biased = magnitude + ULAW_BIAS;
    // The bias puts the top bit at 7..=14: the segment is its distance from 7.
    let segment = (31 - (biased as u32).leading_zeros() as i32) - 7;
    let step = (biased >> (segment + 3)) & 0x0F;
    !(sign | (segment << 4) | step) as u8
}

/// One µ-law byte to a linear sample.
pub fn ulaw_decode(byte: u8) -> i16 {
    let code = !byte;
    let segment = (code >> 4) & 0x07;
    let step = i32::from(code & 0x0F);
    let magnitude = (((step << 3) + ULAW_BIAS) << segment) - ULAW_BIAS;
    if code & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// One linear sample to A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    // A-law works on 13 bits; negative values are mirrored to one below.
    let value = i32::from(sample) >> 3;
    let (mask, magnitude) = if value >= 0 {
        (0xD5, value)
    } else {
        (0x55, -value - 1)
    };
    // Segment 0 and 1 share a step size; above, each segment doubles it.
    let segment = match magnitude {
        m if m < 0x20 => 0,
        m => (31 - (m as u32).leading_zeros() as i32) - 4,
    };
    if segment > 7 {
        return (0x7F ^ mask) as u8;
    }
    let shift = if segment < 2 { 1 } else { segment };
    let code = (segment << 4) | ((magnitude >> shift) & 0x0F);
    (code ^ mask) as u8
}

/// One A-law byte to a linear sample.
pub fn alaw_decode(byte: u8) -> i16 {
    let code = byte ^ 0x55;
    let step = i32::from(code & 0x0F) << 4;
    let segment = (code & 0x70) >> 4;
    let magnitude = match segment {
        0 => step + 8,
        1 => step + 0x108,
        s => (step + 0x108) << (s - 1),
    };
    if code & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standards_reference_values() {
        // Full scale, zero and the smallest steps, as G.711's tables give them.
        assert_eq!(ulaw_decode(0x00), -32_124);
        assert_eq!(ulaw_decode(0x80), 32_124);
        assert_eq!(ulaw_decode(0xFF), 0);
        assert_eq!(ulaw_decode(0x7F), 0);
        assert_eq!(ulaw_decode(0xFE), 8);
        assert_eq!(ulaw_decode(0x7E), -8);
        assert_eq!(ulaw_encode(0), 0xFF);
        assert_eq!(ulaw_encode(i16::MAX), 0x80);
        assert_eq!(ulaw_encode(i16::MIN), 0x00);

        assert_eq!(alaw_decode(0xD5), 8);
        assert_eq!(alaw_decode(0x55), -8);
        assert_eq!(alaw_decode(0xAA), 32_256);
        assert_eq!(alaw_decode(0x2A), -32_256);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_encode(-1), 0x55);
        assert_eq!(alaw_encode(i16::MAX), 0xAA);
        assert_eq!(alaw_encode(i16::MIN), 0x2A);
    }

    #[test]
    fn every_code_survives_a_round_trip() {
        for byte in 0..=255u8 {
            // µ-law has two zeros; the negative one comes back positive.
            let expected = if byte == 0x7F { 0xFF } else { byte };
            assert_eq!(
                ulaw_encode(ulaw_decode(byte)),
                expected,
                "µ-law {byte:#04x}"
            );
            assert_eq!(alaw_encode(alaw_decode(byte)), byte, "A-law {byte:#04x}");
        }
    }

    #[test]
    fn companding_keeps_order_and_stays_close() {
        let mut last = (i16::MIN, i16::MIN);
        for sample in (i16::MIN..=i16::MAX).step_by(7) {
            let u = ulaw_decode(ulaw_encode(sample));
            let a = alaw_decode(alaw_encode(sample));
            assert!(u >= last.0 && a >= last.1, "order broken at {sample}");
            last = (u, a);
            // The error is at most half a step, and steps grow with the level:
            // under 1/16 of the magnitude (plus the smallest step) for both laws.
            let bound = i32::from(sample).abs() / 16 + 16;
            assert!(
                (i32::from(u) - i32::from(sample)).abs() <= bound,
                "µ-law {sample} -> {u}"
            );
            assert!(
                (i32::from(a) - i32::from(sample)).abs() <= bound,
                "A-law {sample} -> {a}"
            );
        }
    }
}
