-- Merchants: owned by the monolith, replicated whole into analytics.

CREATE TABLE IF NOT EXISTS merchants (
    merchant_id      bigint      PRIMARY KEY,
    name             text        NOT NULL,
    legal_name       text,
    country          char(2)     NOT NULL,
    default_currency char(3)     NOT NULL,
    mcc              smallint,
    fee_bps          integer     NOT NULL,
    created_at       timestamptz NOT NULL,
    metadata         jsonb
);
