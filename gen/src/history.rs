//! The generated history itself: pure, deterministic row generation.
//!
//! Payments are numbered 1..=N and generated in fixed chunks; each chunk has
//! its own random stream derived from the seed and the chunk number, so the
//! same seed gives the same rows whatever the number of threads. Rows come
//! out already encoded as binary COPY tuples, ready to stream.

use bytes::{BufMut, Bytes};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Zipf};
use shardline_pgcopy::CopyWriter;

use crate::encode;

/// Payments per chunk: big enough to amortise a chunk's set-up, small enough
/// to spread over threads and keep memory per chunk at a few megabytes.
pub const CHUNK_PAYMENTS: u64 = 20_000;

/// Zipf exponent of merchant sizes: a few merchants take a large share.
const MERCHANT_SKEW: f64 = 1.07;
const DAY_MICROS: i64 = 86_400_000_000;
/// History spans 18 months.
const SPAN_MICROS: i64 = 548 * DAY_MICROS;
/// 2026-01-01T00:00:00Z; the history ends up to 96 days before it, by seed.
const END_ANCHOR_UNIX_MICROS: i64 = 1_767_225_600_000_000;

pub const PAYMENT_COLUMNS: &str = "merchant_id, payment_id, idempotency_key, amount, currency, status, method, card_brand, card_last4, customer_email, description, metadata, created_at, updated_at, captured_at";
pub const EVENT_COLUMNS: &str =
    "merchant_id, event_id, payment_id, event_type, amount, payload, occurred_at";
pub const REFUND_COLUMNS: &str =
    "merchant_id, refund_id, payment_id, amount, currency, reason, status, created_at";
pub const MERCHANT_COLUMNS: &str =
    "merchant_id, name, legal_name, country, default_currency, mcc, fee_bps, created_at, metadata";

const COUNTRIES: &[(&str, &str)] = &[
    ("DE", "EUR"),
    ("FR", "EUR"),
    ("NL", "EUR"),
    ("US", "USD"),
    ("GB", "GBP"),
    ("JP", "JPY"),
    ("CH", "CHF"),
    ("SE", "SEK"),
    ("ES", "EUR"),
    ("BR", "BRL"),
];
const OTHER_CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "JPY", "CHF", "SEK"];
const NAMES: &[&str] = &[
    "Café Zürich",
    "東京ストア",
    "Björk & Sønner",
    "Nordwind Logistik",
    "Ölçek Market",
    "La Crème Brûlée",
    "Acme Widgets",
    "São Paulo Sabores",
    "Пекарня Север",
    "🚀 Rocket Fuel Co",
    "Bytes & Beans",
    "Żółta Łódź",
];
const DESCRIPTIONS: &[&str] = &[
    "Order #{} — 2× espresso",
    "Abonnement Premium {}",
    "注文番号 {}",
    "Ticket {} (Économie)",
    "Invoice {} / Größe M",
    "Subscription renewal {}",
    "Gift card {} 🎁",
];
const REASONS: &[&str] = &[
    "requested_by_customer",
    "duplicate",
    "fraudulent",
    "product_not_received",
];
const DECLINES: &[&str] = &[
    "insufficient_funds",
    "do_not_honor",
    "expired_card",
    "suspected_fraud",
];

/// What to generate.
#[derive(Clone, Debug)]
pub struct History {
    pub seed: u64,
    pub payments: u64,
    pub merchants: u64,
    /// Microseconds since the Unix epoch when the history ends.
    pub end: i64,
}

/// The encoded rows of one chunk of payments.
#[derive(Debug, Default)]
pub struct Chunk {
    pub payments: Bytes,
    pub events: Bytes,
    pub refunds: Bytes,
    pub payment_rows: u64,
    pub event_rows: u64,
    pub refund_rows: u64,
}

impl History {
    /// A history of `payments` payments; the merchant count defaults to one
    /// per thousand payments (at least 20).
    pub fn new(seed: u64, payments: u64, merchants: Option<u64>) -> Self {
        Self {
            seed,
            payments,
            merchants: merchants.unwrap_or((payments / 1000).max(20)).max(1),
            end: END_ANCHOR_UNIX_MICROS - (seed % 97) as i64 * DAY_MICROS,
        }
    }

    pub fn start(&self) -> i64 {
        self.end - SPAN_MICROS
    }

    pub fn chunks(&self) -> u64 {
        self.payments.div_ceil(CHUNK_PAYMENTS)
    }

    fn rng(&self, stream: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream)
    }

    pub fn merchant_id(rank: u64) -> i64 {
        1000 + rank as i64
    }

    fn country_of(merchant_id: i64) -> (&'static str, &'static str) {
        COUNTRIES[(merchant_id.unsigned_abs() * 2_654_435_761 % COUNTRIES.len() as u64) as usize]
    }

    /// Every merchant, as one binary COPY stream (header and trailer).
    pub fn merchants_copy(&self) -> Bytes {
        let mut rng = self.rng(u64::MAX);
        let mut w = CopyWriter::new();
        for rank in 1..=self.merchants {
            let id = Self::merchant_id(rank);
            let (country, currency) = Self::country_of(id);
            let name = format!("{} {}", NAMES[rng.random_range(0..NAMES.len())], rank);
            w.begin(9);
            w.put_i64(id);
            w.put_str(&name);
            if rng.random_bool(0.3) {
                w.null();
            } else {
                w.put_str(&format!("{name} GmbH & Co. KG"));
            }
            w.put_str(country);
            w.put_str(currency);
            if rng.random_bool(0.1) {
                w.null();
            } else {
                w.put_i16(rng.random_range(4000..6000));
            }
            w.put_i32(rng.random_range(150..320));
            let created = self.start() - rng.random_range(0..3 * 365 * DAY_MICROS);
            w.put_with(|b| encode::timestamp(b, created));
            if rng.random_bool(0.5) {
                w.null();
            } else {
                let json = format!(
                    r#"{{"tier": "{}", "risk_score": {}}}"#,
                    ["gold", "silver", "bronze"][rank as usize % 3],
                    rng.random_range(0..100)
                );
                w.put_with(|b| encode::jsonb(b, &json));
            }
        }
        w.finish()
    }

    /// Chunk `index`: its payments and everything that followed from them.
    /// Tuples only, without header or trailer.
    pub fn chunk(&self, index: u64) -> Chunk {
        let mut rng = self.rng(index);
        let zipf =
            Zipf::new(self.merchants as f64, MERCHANT_SKEW).expect("merchants >= 1 and skew > 0");
        let amounts = LogNormal::new(8.0, 1.3).expect("valid log-normal parameters");
        let (mut payments, mut events, mut refunds) = (
            CopyWriter::continuation(),
            CopyWriter::continuation(),
            CopyWriter::continuation(),
        );
        let mut out = Chunk::default();
        let first = index * CHUNK_PAYMENTS;
        let last = (first + CHUNK_PAYMENTS).min(self.payments);
        for i in first..last {
            let payment_id = i as i64 + 1;
            let merchant_id = Self::merchant_id(zipf.sample(&mut rng) as u64);
            let step = SPAN_MICROS / self.payments.max(1) as i64;
            let created = self.start() + i as i64 * step + rng.random_range(0..step.max(1));
            let amount = (amounts.sample(&mut rng) as i64).clamp(50, 100_000_000_000);
            let currency = if rng.random_bool(0.1) {
                OTHER_CURRENCIES[rng.random_range(0..OTHER_CURRENCIES.len())]
            } else {
                Self::country_of(merchant_id).1
            };
            let fate: f64 = rng.random();
            let (mut status, captured, mut refund_kind) = match fate {
                f if f < 0.03 => ("failed", false, 0),
                f if f < 0.05 => ("canceled", false, 0),
                f if f < 0.055 => ("authorized", false, 0),
                f if f < 0.095 => ("refunded", true, 1),
                f if f < 0.125 => ("partially_refunded", true, 2),
                _ => ("captured", true, 0),
            };
            if refund_kind == 2 && amount < 100 {
                // Too small to split: refunded whole.
                (status, refund_kind) = ("refunded", 1);
            }
            let method = match rng.random_range(0..20) {
                0..=14 => "card",
                15..=16 => "sepa_debit",
                17 => "ideal",
                _ => "wallet",
            };
            // The event timeline; its last time is the row's updated_at.
            let authorized = created + rng.random_range(300_000..4_000_000);
            let captured_at =
                captured.then(|| authorized + rng.random_range(1_000_000..3_600_000_000));
            let mut timeline: Vec<(&str, Option<i64>, i64, Option<String>)> =
                vec![("created", None, created, None)];
            match status {
                "failed" => {
                    let code = DECLINES[rng.random_range(0..DECLINES.len())];
                    timeline.push((
                        "failed",
                        None,
                        authorized,
                        Some(format!(r#"{{"decline_code": "{code}"}}"#)),
                    ));
                }
                "canceled" => {
                    timeline.push(("authorized", Some(amount), authorized, None));
                    timeline.push((
                        "canceled",
                        None,
                        authorized + rng.random_range(60_000_000..DAY_MICROS),
                        None,
                    ));
                }
                _ => timeline.push((
                    "authorized",
                    Some(amount),
                    authorized,
                    Some(format!(
                        r#"{{"gateway": "acquirer-{}", "latency_ms": {}}}"#,
                        rng.random_range(1..4),
                        rng.random_range(40..900)
                    )),
                )),
            }
            let mut refund_rows = Vec::new();
            if let Some(at) = captured_at {
                timeline.push(("captured", Some(amount), at, None));
                let settle = at + DAY_MICROS + rng.random_range(0..DAY_MICROS);
                if settle < self.end {
                    timeline.push(("settled", Some(amount), settle, None));
                }
                let parts: Vec<i64> = match refund_kind {
                    1 => vec![amount],
                    2 if amount >= 100 => {
                        let first_part = rng.random_range(1..amount / 2);
                        if rng.random_bool(0.3) {
                            vec![
                                first_part,
                                rng.random_range(1..=(amount - first_part - 1).max(1)),
                            ]
                        } else {
                            vec![first_part]
                        }
                    }
                    _ => vec![],
                };
                let mut when = at;
                for (k, part) in parts.into_iter().enumerate() {
                    when += rng.random_range(DAY_MICROS..20 * DAY_MICROS);
                    timeline.push(("refunded", Some(part), when, None));
                    refund_rows.push((payment_id * 4 + k as i64, part, when));
                }
            }
            let updated = timeline.iter().map(|t| t.2).max().unwrap_or(created);

            payments.begin(15);
            payments.put_i64(merchant_id);
            payments.put_i64(payment_id);
            let mut uuid: [u8; 16] = rng.random();
            uuid[6] = (uuid[6] & 0x0f) | 0x40;
            uuid[8] = (uuid[8] & 0x3f) | 0x80;
            payments.field(Some(&uuid));
            payments.put_with(|b| encode::numeric(b, amount, 2));
            payments.put_str(currency);
            payments.put_str(status);
            payments.put_str(method);
            if method == "card" {
                payments.put_str(["visa", "mastercard", "amex"][rng.random_range(0..3)]);
                payments.put_str(&format!("{:04}", rng.random_range(0..10_000)));
            } else {
                payments.null();
                payments.null();
            }
            if rng.random_bool(0.85) {
                let local = if rng.random_bool(0.05) {
                    "jürgen.müller"
                } else {
                    "customer"
                };
                payments.put_str(&format!(
                    "{local}{}@example.com",
                    rng.random_range(0..1_000_000)
                ));
            } else {
                payments.null();
            }
            if rng.random_bool(0.7) {
                let template = DESCRIPTIONS[rng.random_range(0..DESCRIPTIONS.len())];
                payments.put_str(&template.replace("{}", &payment_id.to_string()));
            } else {
                payments.null();
            }
            match rng.random_range(0..100) {
                0..=19 => payments.null(),
                20 => {
                    let json = big_metadata(&mut rng, payment_id);
                    payments.put_with(|b| encode::jsonb(b, &json));
                }
                _ => {
                    let json = format!(
                        r#"{{"order_id": "ord_{payment_id:x}", "channel": "{}"}}"#,
                        ["web", "ios", "android", "pos"][rng.random_range(0..4)]
                    );
                    payments.put_with(|b| encode::jsonb(b, &json));
                }
            }
            payments.put_with(|b| encode::timestamp(b, created));
            payments.put_with(|b| encode::timestamp(b, updated));
            match captured_at {
                Some(at) => payments.put_with(|b| encode::timestamp(b, at)),
                None => payments.null(),
            }
            out.payment_rows += 1;

            for (k, (kind, amount, at, payload)) in timeline.iter().enumerate() {
                events.begin(7);
                events.put_i64(merchant_id);
                events.put_i64(payment_id * 8 + k as i64);
                events.put_i64(payment_id);
                events.put_str(kind);
                match amount {
                    Some(a) => events.put_with(|b| encode::numeric(b, *a, 2)),
                    None => events.null(),
                }
                match payload {
                    Some(json) => events.put_with(|b| encode::jsonb(b, json)),
                    None => events.null(),
                }
                events.put_with(|b| encode::timestamp(b, *at));
                out.event_rows += 1;
            }
            for (refund_id, part, at) in refund_rows {
                refunds.begin(8);
                refunds.put_i64(merchant_id);
                refunds.put_i64(refund_id);
                refunds.put_i64(payment_id);
                refunds.put_with(|b| encode::numeric(b, part, 2));
                refunds.put_str(currency);
                if rng.random_bool(0.2) {
                    refunds.null();
                } else {
                    refunds.put_str(REASONS[rng.random_range(0..REASONS.len())]);
                }
                refunds.put_str("succeeded");
                refunds.put_with(|b| encode::timestamp(b, at));
                out.refund_rows += 1;
            }
        }
        out.payments = payments.take();
        out.events = events.take();
        out.refunds = refunds.take();
        out
    }
}

/// Metadata of a large order: over 2 kB even compressed (random tokens),
/// so PostgreSQL stores it out of line in TOAST.
fn big_metadata(rng: &mut ChaCha8Rng, payment_id: i64) -> String {
    let mut json = format!(r#"{{"order_id": "ord_{payment_id:x}", "line_items": ["#);
    for k in 0..60 {
        if k > 0 {
            json.push_str(", ");
        }
        let name = NAMES[rng.random_range(0..NAMES.len())];
        json.push_str(&format!(
            r#"{{"sku": "SKU-{:06}", "token": "{:016x}", "name": "{name}", "qty": {}, "unit_price": "{}.{:02}"}}"#,
            rng.random_range(0..1_000_000),
            rng.random::<u64>(),
            rng.random_range(1..5),
            rng.random_range(1..500),
            rng.random_range(0..100)
        ));
    }
    json.push_str("]}");
    json
}

/// Appends the trailer-free tuples of `chunk` to a stream: used by tests.
pub fn with_header(tuples: &Bytes) -> Bytes {
    let mut b = bytes::BytesMut::from(&shardline_pgcopy::HEADER[..]);
    b.extend_from_slice(tuples);
    b.put_slice(&shardline_pgcopy::TRAILER);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_bytes() {
        let h = History::new(7, 50_000, None);
        assert_eq!(h.chunks(), 3);
        let a = h.chunk(2);
        let b = History::new(7, 50_000, None).chunk(2);
        assert_eq!(
            (a.payments, a.events, a.refunds),
            (b.payments, b.events, b.refunds)
        );
        assert_ne!(
            History::new(8, 50_000, None).chunk(2).payments,
            h.chunk(2).payments
        );
        assert_eq!(a.payment_rows, 10_000, "the last chunk holds the remainder");
        assert_eq!(
            h.merchants_copy(),
            History::new(7, 50_000, None).merchants_copy()
        );
    }

    #[test]
    fn chunks_are_well_formed_copy_streams() {
        let h = History::new(1, 5_000, Some(30));
        let c = h.chunk(0);
        for (bytes, rows, fields) in [
            (&c.payments, c.payment_rows, 15),
            (&c.events, c.event_rows, 7),
            (&c.refunds, c.refund_rows, 8),
        ] {
            let mut reader = shardline_pgcopy::CopyReader::new();
            let batch = reader.feed(&with_header(bytes)).unwrap();
            reader.finish().unwrap();
            assert_eq!(batch.len() as u64, rows);
            assert!(batch.iter().all(|t| t.field_count() == fields));
        }
        assert!(
            c.event_rows > 3 * c.payment_rows,
            "every payment has several events"
        );
        assert!(c.refund_rows > 0);
    }
}
