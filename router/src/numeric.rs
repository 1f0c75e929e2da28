//! PostgreSQL's `numeric`, exactly: read from its text or binary wire
//! form, compared, added, and written back in the same form with the same
//! display scale PostgreSQL would use. Never through `f64`: a sum of money
//! amounts merged from shards must equal the monolith's to the last digit.

use std::cmp::Ordering;

/// A `numeric` value. A finite value is `digits × 10^-scale`, `digits`
/// being its decimal digits, most significant first, without leading
/// zeros (empty for zero); `scale` is PostgreSQL's display scale (dscale).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Numeric {
    Finite {
        negative: bool,
        digits: Vec<u8>,
        scale: u16,
    },
    NegInfinity,
    Infinity,
    NaN,
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

impl Numeric {
    /// Parses numeric_out's text: `-12.340`, `NaN`, `Infinity`, `-Infinity`.
    pub fn from_text(s: &str) -> Option<Self> {
        match s {
            "NaN" => return Some(Self::NaN),
            "Infinity" => return Some(Self::Infinity),
            "-Infinity" => return Some(Self::NegInfinity),
            _ => {}
        }
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
            return None;
        }
        let scale = u16::try_from(frac.len()).ok()?;
        let digits = int.bytes().chain(frac.bytes()).map(|c| c - b'0').collect();
        Some(Self::finite(negative, digits, scale))
    }

    /// Parses numeric_send's binary form.
    pub fn from_binary(b: &[u8]) -> Option<Self> {
        if b.len() < 8 {
            return None;
        }
        let u16_at = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
        let ndigits = u16_at(0) as usize;
        let weight = i16::from_be_bytes([b[2], b[3]]) as i64;
        let sign = u16_at(4);
        let scale = u16_at(6);
        match sign {
            NUMERIC_NAN => return Some(Self::NaN),
            NUMERIC_PINF => return Some(Self::Infinity),
            NUMERIC_NINF => return Some(Self::NegInfinity),
            NUMERIC_POS | NUMERIC_NEG => {}
            _ => return None,
        }
        if b.len() != 8 + 2 * ndigits {
            return None;
        }
        // Base-10000 digit i stands for 10000^(weight - i); lay the
        // decimal digits out from 10^(4·weight + 3) down to 10^-scale.
        let top = 4 * weight + 3;
        let bottom = -(scale as i64);
        let mut digits = Vec::new();
        let mut p = top.max(0);
        while p >= bottom {
            let group = weight - p.div_euclid(4);
            let d = if group >= 0 && (group as usize) < ndigits {
                let v = u16_at(8 + 2 * group as usize);
                if v > 9999 {
                    return None;
                }
                (v / 10u16.pow(p.rem_euclid(4) as u32) % 10) as u8
            } else {
                0
            };
            digits.push(d);
            p -= 1;
        }
        Some(Self::finite(sign == NUMERIC_NEG, digits, scale))
    }

    fn finite(negative: bool, mut digits: Vec<u8>, scale: u16) -> Self {
        let lead = digits.iter().take_while(|d| **d == 0).count();
        digits.drain(..lead);
        Self::Finite {
            negative: negative && !digits.is_empty(),
            digits,
            scale,
        }
    }

    /// numeric_out's text.
    pub fn to_text(&self) -> String {
        match self {
            Self::NaN => "NaN".into(),
            Self::Infinity => "Infinity".into(),
            Self::NegInfinity => "-Infinity".into(),
            Self::Finite {
                negative,
                digits,
                scale,
            } => {
                let scale = *scale as usize;
                let mut all: Vec<u8> = vec![0; (scale + 1).saturating_sub(digits.len())];
                all.extend_from_slice(digits);
                let (int, frac) = all.split_at(all.len() - scale);
                let mut s = String::with_capacity(all.len() + 2);
                if *negative {
                    s.push('-');
                }
                s.extend(int.iter().map(|d| (b'0' + d) as char));
                if scale > 0 {
                    s.push('.');
                    s.extend(frac.iter().map(|d| (b'0' + d) as char));
                }
                s
            }
        }
    }

    /// numeric_send's binary form.
    pub fn to_binary(&self) -> Vec<u8> {
        let header = |n: u16, weight: i16, sign: u16, scale: u16| {
            let mut v = Vec::with_capacity(8);
            v.extend_from_slice(&n.to_be_bytes());
            v.extend_from_slice(&weight.to_be_bytes());
            v.extend_from_slice(&sign.to_be_bytes());
            v.extend_from_slice(&scale.to_be_bytes());
            v
        };
        let (negative, digits, scale) = match self {
            Self::NaN => return header(0, 0, NUMERIC_NAN, 0),
            Self::Infinity => return header(0, 0, NUMERIC_PINF, 0),
            Self::NegInfinity => return header(0, 0, NUMERIC_NINF, 0),
            Self::Finite {
                negative,
                digits,
                scale,
            } => (*negative, digits, *scale),
        };
        // Align so the decimal point falls on a group boundary.
        let int_len = digits.len() as i64 - scale as i64;
        let int_groups = int_len.max(0).div_euclid(4) + i64::from(int_len.max(0) % 4 != 0);
        let pad_left = (int_groups * 4 - int_len) as usize;
        let mut all = vec![0u8; pad_left];
        all.extend_from_slice(digits);
        while !all.len().is_multiple_of(4) {
            all.push(0);
        }
        let mut groups: Vec<u16> = all
            .chunks(4)
            .map(|c| c.iter().fold(0u16, |acc, d| acc * 10 + *d as u16))
            .collect();
        let mut weight = int_groups - 1;
        while groups.first() == Some(&0) {
            groups.remove(0);
            weight -= 1;
        }
        while groups.last() == Some(&0) {
            groups.pop();
        }
        if groups.is_empty() {
            weight = 0;
        }
        let sign = if negative { NUMERIC_NEG } else { NUMERIC_POS };
        let mut v = header(groups.len() as u16, weight as i16, sign, scale);
        for g in groups {
            v.extend_from_slice(&g.to_be_bytes());
        }
        v
    }

    /// The sum, with the larger display scale, as numeric_add.
    pub fn add(&self, other: &Self) -> Self {
        use Numeric::*;
        match (self, other) {
            (NaN, _) | (_, NaN) | (Infinity, NegInfinity) | (NegInfinity, Infinity) => NaN,
            (Infinity, _) | (_, Infinity) => Infinity,
            (NegInfinity, _) | (_, NegInfinity) => NegInfinity,
            (
                Finite {
                    negative: na,
                    digits: da,
                    scale: sa,
                },
                Finite {
                    negative: nb,
                    digits: db,
                    scale: sb,
                },
            ) => {
                let scale = (*sa).max(*sb);
                let a = scaled(da, scale - sa);
                let b = scaled(db, scale - sb);
                if na == nb {
                    return Self::finite(*na, add_mag(&a, &b), scale);
                }
                match cmp_mag(&a, &b) {
                    Ordering::Equal => Self::finite(false, Vec::new(), scale),
                    Ordering::Greater => Self::finite(*na, sub_mag(&a, &b), scale),
                    Ordering::Less => Self::finite(*nb, sub_mag(&b, &a), scale),
                }
            }
        }
    }

    /// `self / count` as numeric_div and avg do: the result scale from
    /// PostgreSQL's select_div_scale (at least 16 significant digits, at
    /// least either input's scale), rounded half away from zero. `None`
    /// when `count` is zero.
    pub fn div_count(&self, count: u64) -> Option<Self> {
        if count == 0 {
            return None;
        }
        let (negative, digits, scale) = match self {
            Self::Finite {
                negative,
                digits,
                scale,
            } => (*negative, digits, *scale),
            other => return Some(other.clone()),
        };
        let divisor = Self::from_text(&count.to_string())?;
        let (w1, f1) = self.nbase_head();
        let (w2, f2) = divisor.nbase_head();
        let mut qweight = w1 - w2;
        if f1 <= f2 {
            qweight -= 1;
        }
        let rscale = (16 - qweight * 4).max(scale as i64).clamp(0, 1000) as u16;
        // |self| × 10^(rscale + 1 - scale) / count, truncated, then rounded
        // on the extra digit.
        let mut dividend = digits.clone();
        let shift = rscale as i64 + 1 - scale as i64;
        if shift >= 0 {
            dividend.extend(std::iter::repeat_n(0, shift as usize));
        } else {
            dividend.truncate(dividend.len().saturating_sub((-shift) as usize));
        }
        let mut q = div_small(&dividend, count);
        let last = q.pop().unwrap_or(0);
        if last >= 5 {
            q = add_mag(&q, &[1]);
        }
        Some(Self::finite(negative, q, rscale))
    }

    /// The weight and first digit of the value in base 10000 (0, 0 for
    /// zero), as numeric.c's select_div_scale reads them.
    fn nbase_head(&self) -> (i64, u16) {
        let b = self.to_binary();
        if b.len() < 10 {
            return (0, 0);
        }
        (
            i16::from_be_bytes([b[2], b[3]]) as i64,
            u16::from_be_bytes([b[8], b[9]]),
        )
    }

    /// PostgreSQL's order: -Infinity < finite < Infinity < NaN; equal
    /// values of different scale are equal.
    pub fn total_cmp(&self, other: &Self) -> Ordering {
        use Numeric::*;
        let rank = |n: &Self| match n {
            NegInfinity => 0,
            Finite { .. } => 1,
            Infinity => 2,
            NaN => 3,
        };
        match (self, other) {
            (
                Finite {
                    negative: na,
                    digits: da,
                    scale: sa,
                },
                Finite {
                    negative: nb,
                    digits: db,
                    scale: sb,
                },
            ) => {
                if na != nb {
                    return if *na {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    };
                }
                let scale = (*sa).max(*sb);
                let m = cmp_mag(&scaled(da, scale - sa), &scaled(db, scale - sb));
                if *na {
                    m.reverse()
                } else {
                    m
                }
            }
            _ => rank(self).cmp(&rank(other)),
        }
    }
}

fn scaled(digits: &[u8], by: u16) -> Vec<u8> {
    let mut v = digits.to_vec();
    if !v.is_empty() {
        v.extend(std::iter::repeat_n(0, by as usize));
    }
    v
}

fn cmp_mag(a: &[u8], b: &[u8]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn add_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len().max(b.len()) + 1);
    let (mut i, mut j, mut carry) = (a.len(), b.len(), 0u8);
    while i > 0 || j > 0 || carry > 0 {
        let mut s = carry;
        if i > 0 {
            i -= 1;
            s += a[i];
        }
        if j > 0 {
            j -= 1;
            s += b[j];
        }
        out.push(s % 10);
        carry = s / 10;
    }
    out.reverse();
    out
}

/// Decimal digits divided by a machine integer, truncated; the quotient
/// keeps `a`'s length (leading zeros included).
fn div_small(a: &[u8], d: u64) -> Vec<u8> {
    let mut rem: u128 = 0;
    a.iter()
        .map(|digit| {
            rem = rem * 10 + *digit as u128;
            let q = rem / d as u128;
            rem %= d as u128;
            q as u8
        })
        .collect()
}

/// `a - b` for magnitudes with `a >= b`.
fn sub_mag(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len());
    let (mut j, mut borrow) = (b.len(), 0i8);
    for i in (0..a.len()).rev() {
        let mut d = a[i] as i8 - borrow;
        if j > 0 {
            j -= 1;
            d -= b[j] as i8;
        }
        borrow = i8::from(d < 0);
        out.push((d + 10 * borrow) as u8);
    }
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Numeric {
        Numeric::from_text(s).unwrap()
    }

    #[test]
    fn text_round_trips_keep_the_display_scale() {
        for s in [
            "0",
            "0.00",
            "-0.5",
            "12.340",
            "100000",
            "-99999999999999999999.99",
            "0.0001",
            "NaN",
            "Infinity",
            "-Infinity",
        ] {
            assert_eq!(n(s).to_text(), s);
        }
        assert_eq!(n("-0.00").to_text(), "0.00");
        for bad in ["", "-", "1e5", "1.2.3", " 1", "abc"] {
            assert_eq!(Numeric::from_text(bad), None, "{bad}");
        }
    }

    /// Binary forms as PostgreSQL's numeric_send writes them.
    #[test]
    fn binary_matches_postgresql_and_round_trips() {
        let cases: &[(&str, &[u8])] = &[
            ("0", &[0, 0, 0, 0, 0, 0, 0, 0]),
            ("0.00", &[0, 0, 0, 0, 0, 0, 0, 2]),
            // 12.34: digits [12, 3400], weight 0, dscale 2
            ("12.34", &[0, 2, 0, 0, 0, 0, 0, 2, 0, 12, 0x0d, 0x48]),
            // 10000: digits [1], weight 1
            ("10000", &[0, 1, 0, 1, 0, 0, 0, 0, 0, 1]),
            // -0.0001: digits [1], weight -1
            ("-0.0001", &[0, 1, 0xff, 0xff, 0x40, 0, 0, 4, 0, 1]),
            ("NaN", &[0, 0, 0, 0, 0xc0, 0, 0, 0]),
            ("-Infinity", &[0, 0, 0, 0, 0xf0, 0, 0, 0]),
        ];
        for (text, bin) in cases {
            assert_eq!(n(text).to_binary(), *bin, "{text}");
            assert_eq!(Numeric::from_binary(bin).unwrap().to_text(), *text);
        }
        for s in ["123456789.987654321", "-5000.5", "0.10", "99990000"] {
            assert_eq!(Numeric::from_binary(&n(s).to_binary()).unwrap(), n(s));
        }
    }

    #[test]
    fn sums_are_exact_with_the_larger_scale() {
        for (a, b, sum) in [
            ("0.1", "0.2", "0.3"),
            ("1.50", "2.5", "4.00"),
            ("-3", "1.25", "-1.75"),
            ("99999999999999999999", "1", "100000000000000000000"),
            ("5", "-5.0", "0.0"),
            ("Infinity", "1", "Infinity"),
            ("Infinity", "-Infinity", "NaN"),
        ] {
            assert_eq!(n(a).add(&n(b)).to_text(), sum, "{a} + {b}");
        }
    }

    /// Expected values from PostgreSQL: `SELECT avg(x)` / numeric_div.
    #[test]
    fn division_by_a_count_is_avgs() {
        for (sum, count, avg) in [
            ("10", 4, "2.5000000000000000"),
            ("1", 3, "0.33333333333333333333"),
            ("2", 3, "0.66666666666666666667"),
            ("-2", 3, "-0.66666666666666666667"),
            ("100.50", 2, "50.2500000000000000"),
            ("12345678901234567890", 7, "1763668414462081127"),
            ("0", 5, "0.00000000000000000000"),
            ("0.00", 5, "0.00000000000000000000"),
            ("99999", 1, "99999.000000000000"),
            ("NaN", 2, "NaN"),
        ] {
            assert_eq!(
                n(sum).div_count(count).unwrap().to_text(),
                avg,
                "{sum} / {count}"
            );
        }
        assert_eq!(n("5").div_count(0), None);
    }

    #[test]
    fn order_is_postgresqls() {
        let sorted = [
            "-Infinity",
            "-10",
            "-9.99",
            "-0.001",
            "0",
            "0.00",
            "0.001",
            "2",
            "10",
            "Infinity",
            "NaN",
        ];
        for (i, a) in sorted.iter().enumerate() {
            for (j, b) in sorted.iter().enumerate() {
                let want = if (*a == "0" && *b == "0.00") || (*a == "0.00" && *b == "0") {
                    Ordering::Equal
                } else {
                    i.cmp(&j)
                };
                assert_eq!(n(a).total_cmp(&n(b)), want, "{a} vs {b}");
            }
        }
    }
}
