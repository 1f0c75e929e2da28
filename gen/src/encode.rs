//! PostgreSQL binary send formats for the types the generator writes.

use bytes::{BufMut, BytesMut};

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// `numeric` with scale `scale`, from an integer count of 10^-scale units
/// (cents for scale 2). Canonical form: no leading or trailing zero digit
/// groups, `dscale` = `scale`.
pub fn numeric(buf: &mut BytesMut, units: i64, scale: u16) {
    debug_assert!(
        scale <= 4,
        "scale up to 4 keeps the fraction in one base-10000 group"
    );
    let negative = units < 0;
    let magnitude = units.unsigned_abs();
    let divisor = 10u64.pow(u32::from(scale));
    let (mut int_part, frac) = (magnitude / divisor, magnitude % divisor);
    let mut int_groups = Vec::new();
    while int_part > 0 {
        int_groups.push((int_part % 10_000) as i16);
        int_part /= 10_000;
    }
    int_groups.reverse();
    let weight = int_groups.len() as i16 - 1;
    let mut digits = int_groups;
    if scale > 0 {
        digits.push((frac * 10u64.pow(4 - u32::from(scale))) as i16);
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let leading_zeros = digits.iter().take_while(|&&d| d == 0).count();
    digits.drain(..leading_zeros);
    let weight = if digits.is_empty() {
        0
    } else {
        weight - leading_zeros as i16
    };
    buf.put_i16(digits.len() as i16);
    buf.put_i16(weight);
    buf.put_u16(if negative && !digits.is_empty() {
        0x4000
    } else {
        0
    });
    buf.put_u16(scale);
    for d in digits {
        buf.put_i16(d);
    }
}

/// `timestamptz` (and `timestamp`) from microseconds since the Unix epoch.
pub fn timestamp(buf: &mut BytesMut, unix_micros: i64) {
    buf.put_i64(unix_micros - PG_EPOCH_UNIX_MICROS);
}

/// `jsonb`: a version byte, then the JSON text.
pub fn jsonb(buf: &mut BytesMut, json: &str) {
    buf.put_u8(1);
    buf.extend_from_slice(json.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(units: i64, scale: u16) -> Vec<i16> {
        let mut b = BytesMut::new();
        numeric(&mut b, units, scale);
        b.chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect()
    }

    #[test]
    fn numeric_is_canonical() {
        // ndigits, weight, sign, dscale, digits…
        assert_eq!(enc(123_456_789, 2), [3, 1, 0, 2, 123, 4567, 8900]);
        assert_eq!(enc(5, 2), [1, -1, 0, 2, 500]);
        assert_eq!(enc(10_000, 2), [1, 0, 0, 2, 100]);
        assert_eq!(enc(1_000_000, 2), [1, 1, 0, 2, 1]);
        assert_eq!(enc(0, 2), [0, 0, 0, 2]);
        assert_eq!(enc(-150, 2), [2, 0, 0x4000, 2, 1, 5000]);
        assert_eq!(enc(12_345, 4), [2, 0, 0, 4, 1, 2345]);
    }
}
