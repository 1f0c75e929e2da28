//! One column value of a DataRow, decoded just enough to be ordered or
//! combined the way PostgreSQL orders and combines it.
//!
//! The router relays rows as the shards encoded them; only the columns a
//! merge needs (sort keys, aggregates, group keys) are decoded here, per
//! type OID and per format (text or binary). A type not listed is not
//! guessed at: [`Decoder::for_type`] says no and the merge is refused.

use std::cmp::Ordering;

use crate::numeric::Numeric;

/// Type OIDs (pg_type.oid) the router decodes.
pub(crate) mod oid {
    pub const BOOL: u32 = 16;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
}

/// A decoded value. Dates are days and timestamps microseconds since
/// 2000-01-01 (UTC for timestamptz), ±infinity at the ends of `i64`.
#[derive(Clone, Debug)]
pub(crate) enum Datum {
    Int(i64),
    Numeric(Numeric),
    Float(f64),
    /// Compared bytewise: uuid, and text under the C collation.
    Bytes(Vec<u8>),
}

impl Datum {
    /// PostgreSQL's order for values of one type. Floats: NaN equals NaN
    /// and is above every other value; -0 equals 0.
    pub fn total_cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a.cmp(b),
            (Self::Numeric(a), Self::Numeric(b)) => a.total_cmp(b),
            (Self::Float(a), Self::Float(b)) => match (a.is_nan(), b.is_nan()) {
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                _ => a.partial_cmp(b).unwrap_or(Ordering::Equal),
            },
            (Self::Bytes(a), Self::Bytes(b)) => a.cmp(b),
            // One column has one type; mixed variants never meet.
            _ => Ordering::Equal,
        }
    }
}

/// How one column is decoded: its type and its format in the DataRows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Decoder {
    pub type_oid: u32,
    pub binary: bool,
}

/// Why a column cannot be decoded for a merge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Undecodable {
    /// The type is not one the router orders or combines.
    Type(u32),
    /// Text whose order depends on a collation other than C.
    Collation,
}

impl Decoder {
    /// The decoder for a column, or why there is none. `bytewise_text`
    /// says text sorts by its bytes here (the C collation).
    pub fn for_type(type_oid: u32, binary: bool, bytewise_text: bool) -> Result<Self, Undecodable> {
        use oid::*;
        match type_oid {
            BOOL | INT2 | INT4 | INT8 | OID | FLOAT4 | FLOAT8 | NUMERIC | DATE | TIMESTAMP
            | TIMESTAMPTZ | UUID | NAME => Ok(Self { type_oid, binary }),
            TEXT | VARCHAR | BPCHAR if bytewise_text => Ok(Self { type_oid, binary }),
            TEXT | VARCHAR | BPCHAR => Err(Undecodable::Collation),
            other => Err(Undecodable::Type(other)),
        }
    }

    /// Decodes a non-NULL value; `None` when the bytes are not a value of
    /// the type (or a text form the router does not read).
    pub fn decode(&self, b: &[u8]) -> Option<Datum> {
        use oid::*;
        if self.binary {
            return match self.type_oid {
                BOOL => Some(Datum::Int((*b.first()? != 0) as i64)),
                INT2 => Some(Datum::Int(i16::from_be_bytes(b.try_into().ok()?) as i64)),
                INT4 | DATE => Some(Datum::Int(i32::from_be_bytes(b.try_into().ok()?) as i64)),
                OID => Some(Datum::Int(u32::from_be_bytes(b.try_into().ok()?) as i64)),
                INT8 | TIMESTAMP | TIMESTAMPTZ => {
                    Some(Datum::Int(i64::from_be_bytes(b.try_into().ok()?)))
                }
                FLOAT4 => Some(Datum::Float(f32::from_be_bytes(b.try_into().ok()?) as f64)),
                FLOAT8 => Some(Datum::Float(f64::from_be_bytes(b.try_into().ok()?))),
                NUMERIC => Numeric::from_binary(b).map(Datum::Numeric),
                UUID if b.len() == 16 => Some(Datum::Bytes(b.to_vec())),
                BPCHAR => Some(Datum::Bytes(trim_spaces(b))),
                TEXT | VARCHAR | NAME => Some(Datum::Bytes(b.to_vec())),
                _ => None,
            };
        }
        let s = std::str::from_utf8(b).ok()?;
        match self.type_oid {
            BOOL => match s {
                "t" => Some(Datum::Int(1)),
                "f" => Some(Datum::Int(0)),
                _ => None,
            },
            INT2 | INT4 | INT8 | OID => s.parse().ok().map(Datum::Int),
            FLOAT4 | FLOAT8 => parse_float(s).map(Datum::Float),
            NUMERIC => Numeric::from_text(s).map(Datum::Numeric),
            DATE => date_text(s).map(Datum::Int),
            TIMESTAMP => timestamp_text(s, false).map(Datum::Int),
            TIMESTAMPTZ => timestamp_text(s, true).map(Datum::Int),
            // uuid_out writes lowercase hex at fixed places: its text
            // sorts as its bytes do.
            UUID if s.len() == 36 => Some(Datum::Bytes(b.to_vec())),
            BPCHAR => Some(Datum::Bytes(trim_spaces(b))),
            TEXT | VARCHAR | NAME => Some(Datum::Bytes(b.to_vec())),
            _ => None,
        }
    }
}

/// char(n) compares without its trailing spaces.
fn trim_spaces(b: &[u8]) -> Vec<u8> {
    let end = b.iter().rposition(|c| *c != b' ').map_or(0, |i| i + 1);
    b[..end].to_vec()
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// float8out / float4out text (extra_float_digits ≥ 1, PostgreSQL's
/// default): the shortest exact digits, in exponent form when the decimal
/// exponent is below -4 or at least 15 (6 for float4).
pub(crate) fn float_text(v: f64, float4: bool) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let sci = if float4 {
        format!("{:e}", v as f32)
    } else {
        format!("{v:e}")
    };
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let max = if float4 { 6 } else { 15 };
    if exp < -4 || exp >= max {
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let (negative, m) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = m.chars().filter(char::is_ascii_digit).collect();
    let point = exp + 1;
    let mut s = String::new();
    if negative {
        s.push('-');
    }
    if point <= 0 {
        s.push_str("0.");
        s.extend(std::iter::repeat_n('0', (-point) as usize));
        s.push_str(&digits);
    } else if point as usize >= digits.len() {
        s.push_str(&digits);
        s.extend(std::iter::repeat_n('0', point as usize - digits.len()));
    } else {
        s.push_str(&digits[..point as usize]);
        s.push('.');
        s.push_str(&digits[point as usize..]);
    }
    s
}

/// Days from 2000-01-01 to a proleptic Gregorian date (astronomical year).
fn days(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 730_425
}

/// An ISO date `YYYY-MM-DD[ BC]`, or ±infinity.
fn date_text(s: &str) -> Option<i64> {
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let mut parts = s.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if year < 1 || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // 1 BC is astronomical year 0.
    let year = if bc { 1 - year } else { year };
    Some(days(year, month, day))
}

/// An ISO timestamp `YYYY-MM-DD HH:MM:SS[.ffffff][±HH[:MM[:SS]]][ BC]`
/// in microseconds; the offset is required for timestamptz.
fn timestamp_text(s: &str, with_zone: bool) -> Option<i64> {
    match s {
        "infinity" => return Some(i64::MAX),
        "-infinity" => return Some(i64::MIN),
        _ => {}
    }
    let (s, bc) = match s.strip_suffix(" BC") {
        Some(rest) => (rest, true),
        None => (s, false),
    };
    let (date, time) = s.split_once(' ')?;
    let date = if bc {
        format!("{date} BC")
    } else {
        date.into()
    };
    let day = date_text(&date)?;
    let (clock, offset) = if with_zone {
        let at = time.rfind(['+', '-'])?;
        (&time[..at], Some(&time[at..]))
    } else {
        (time, None)
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    let mut hms = hms.splitn(3, ':');
    let h: i64 = hms.next()?.parse().ok()?;
    let m: i64 = hms.next()?.parse().ok()?;
    let sec: i64 = hms.next()?.parse().ok()?;
    if frac.len() > 6 || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let micros: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").parse().ok()?
    };
    let mut t = ((day * 24 + h) * 60 + m) * 60 + sec;
    if let Some(offset) = offset {
        let negative = offset.starts_with('-');
        let mut parts = offset[1..].splitn(3, ':');
        let oh: i64 = parts.next()?.parse().ok()?;
        let om: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let os: i64 = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let off = oh * 3600 + om * 60 + os;
        t -= if negative { -off } else { off };
    }
    t.checked_mul(1_000_000)?.checked_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(type_oid: u32, s: &str) -> Datum {
        Decoder::for_type(type_oid, false, true)
            .unwrap()
            .decode(s.as_bytes())
            .unwrap_or_else(|| panic!("{type_oid}: {s}"))
    }

    fn binary(type_oid: u32, b: &[u8]) -> Datum {
        Decoder::for_type(type_oid, true, true)
            .unwrap()
            .decode(b)
            .unwrap()
    }

    /// Each list is in PostgreSQL's ascending order for its type.
    #[test]
    fn text_values_order_as_postgresql_orders_them() {
        let cases: &[(u32, &[&str])] = &[
            (
                oid::INT8,
                &[
                    "-9223372036854775808",
                    "-1",
                    "0",
                    "7",
                    "9223372036854775807",
                ],
            ),
            (oid::INT4, &["-5", "3", "40"]),
            (oid::BOOL, &["f", "t"]),
            (
                oid::NUMERIC,
                &["-Infinity", "-1.5", "0.10", "0.2", "10", "Infinity", "NaN"],
            ),
            (
                oid::FLOAT8,
                &[
                    "-Infinity",
                    "-1e+100",
                    "-0.5",
                    "0",
                    "1.5e-05",
                    "3",
                    "Infinity",
                    "NaN",
                ],
            ),
            (
                oid::DATE,
                &[
                    "-infinity",
                    "0044-03-15 BC",
                    "0001-01-01",
                    "1999-12-31",
                    "2000-01-01",
                    "12000-01-01",
                    "infinity",
                ],
            ),
            (
                oid::TIMESTAMP,
                &[
                    "1999-12-31 23:59:59.999999",
                    "2000-01-01 00:00:00",
                    "2000-01-01 00:00:00.5",
                    "2024-02-29 10:00:00",
                ],
            ),
            // 10:00+02 is 08:00 UTC, before 09:00+00.
            (
                oid::TIMESTAMPTZ,
                &[
                    "2024-01-01 10:00:00+02",
                    "2024-01-01 09:00:00+00",
                    "2024-01-01 05:30:00.5-03:30",
                    "2024-01-01 09:00:01.25+00",
                ],
            ),
            (
                oid::UUID,
                &[
                    "00000000-0000-0000-0000-000000000000",
                    "0a000000-0000-0000-0000-000000000000",
                    "a0000000-0000-0000-0000-000000000000",
                ],
            ),
            (oid::TEXT, &["", "B", "a", "ab", "é"]),
            (oid::BPCHAR, &["a", "ab  ", "b"]),
        ];
        for (t, sorted) in cases {
            for w in sorted.windows(2) {
                assert_eq!(
                    text(*t, w[0]).total_cmp(&text(*t, w[1])),
                    Ordering::Less,
                    "type {t}: {} < {}",
                    w[0],
                    w[1]
                );
            }
        }
        let eq = |t, a, b| text(t, a).total_cmp(&text(t, b)) == Ordering::Equal;
        assert!(eq(oid::FLOAT8, "-0", "0"));
        assert!(eq(oid::FLOAT8, "NaN", "NaN"));
        assert!(eq(oid::NUMERIC, "1.0", "1.00"));
        assert!(eq(oid::BPCHAR, "a ", "a"));
        assert!(eq(
            oid::TIMESTAMPTZ,
            "2024-01-01 10:00:00+02",
            "2024-01-01 08:00:00+00"
        ));
    }

    #[test]
    fn binary_values_decode_like_their_text() {
        let pairs: Vec<(u32, Vec<u8>, &str)> = vec![
            (oid::INT2, (-3i16).to_be_bytes().to_vec(), "-3"),
            (oid::INT4, 70000i32.to_be_bytes().to_vec(), "70000"),
            (
                oid::INT8,
                i64::MIN.to_be_bytes().to_vec(),
                "-9223372036854775808",
            ),
            (oid::FLOAT4, 1.5f32.to_be_bytes().to_vec(), "1.5"),
            (oid::FLOAT8, f64::NAN.to_be_bytes().to_vec(), "NaN"),
            (oid::BOOL, vec![1], "t"),
            (oid::DATE, (-1i32).to_be_bytes().to_vec(), "1999-12-31"),
            (
                oid::TIMESTAMP,
                1_500_000i64.to_be_bytes().to_vec(),
                "2000-01-01 00:00:01.5",
            ),
            (
                oid::TIMESTAMPTZ,
                0i64.to_be_bytes().to_vec(),
                "2000-01-01 01:00:00+01",
            ),
            (
                oid::NUMERIC,
                Numeric::from_text("-12.5").unwrap().to_binary(),
                "-12.5",
            ),
        ];
        for (t, bin, txt) in pairs {
            assert_eq!(
                binary(t, &bin).total_cmp(&text(t, txt)),
                Ordering::Equal,
                "type {t}: {txt}"
            );
        }
        let u = [0xa0u8; 16];
        let lo = [0x0au8; 16];
        assert_eq!(
            binary(oid::UUID, &lo).total_cmp(&binary(oid::UUID, &u)),
            Ordering::Less
        );
    }

    #[test]
    fn text_needs_the_c_collation_and_unknown_types_are_refused() {
        assert_eq!(
            Decoder::for_type(oid::TEXT, false, false),
            Err(Undecodable::Collation)
        );
        assert_eq!(
            Decoder::for_type(oid::VARCHAR, true, false),
            Err(Undecodable::Collation)
        );
        // interval, jsonb: not decoded.
        assert_eq!(
            Decoder::for_type(1186, false, true),
            Err(Undecodable::Type(1186))
        );
        assert_eq!(
            Decoder::for_type(3802, false, true),
            Err(Undecodable::Type(3802))
        );
        // A DateStyle other than ISO is not read, never misread.
        let d = Decoder::for_type(oid::DATE, false, true).unwrap();
        assert!(d.decode(b"12/31/1999").is_none());
        let ts = Decoder::for_type(oid::TIMESTAMPTZ, false, true).unwrap();
        assert!(ts.decode(b"Fri Dec 31 23:59:59 1999 PST").is_none());
    }

    #[test]
    fn float_text_is_float8outs() {
        for (v, want) in [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.5, "1.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e15, "1e+15"),
            (123456789012345.0, "123456789012345"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-2.5e100, "-2.5e+100"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(float_text(v, false), want, "{v}");
        }
        assert_eq!(float_text(1234567.0, true), "1.234567e+06");
        assert_eq!(float_text(0.1f32 as f64, true), "0.1");
    }
}
