//! The bundled schemas (`schemas/*.sql`), one text per database role.
//! Each table is defined once; the monolith applies the context files.

/// Merchants, replicated whole into analytics.
pub const MERCHANTS: &str = include_str!("../../schemas/merchants.sql");
/// The sharded transactions context: payments, payment_events, refunds.
pub const TRANSACTIONS: &str = include_str!("../../schemas/transactions.sql");
/// The settlements context: settlements, payouts.
pub const SETTLEMENTS: &str = include_str!("../../schemas/settlements.sql");
/// The monolith: every table of every context, plus its own foreign key.
pub const MONOLITH: &str = concat!(
    include_str!("../../schemas/merchants.sql"),
    include_str!("../../schemas/transactions.sql"),
    include_str!("../../schemas/settlements.sql"),
    include_str!("../../schemas/monolith.sql"),
);
/// The analytics context: the merchants replica and the read model tables.
pub const ANALYTICS: &str = concat!(
    include_str!("../../schemas/merchants.sql"),
    include_str!("../../schemas/analytics.sql"),
);
