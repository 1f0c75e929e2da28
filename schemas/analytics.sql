-- Analytics context: read models (group-by projections of the source),
-- beside the replicated merchants table (schemas/merchants.sql).

CREATE TABLE IF NOT EXISTS merchant_daily_volume (
    merchant_id bigint      NOT NULL,
    day         timestamptz NOT NULL,
    currency    char(3)     NOT NULL,
    payments    bigint      NOT NULL,
    volume      numeric     NOT NULL,
    PRIMARY KEY (merchant_id, day, currency)
);
