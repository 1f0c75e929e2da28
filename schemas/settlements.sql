-- Settlements context: what each merchant is owed per day and currency, and
-- the payouts that pay it. One database; merchants are not sharded here.

CREATE TABLE IF NOT EXISTS settlements (
    settlement_id   bigint        PRIMARY KEY,
    merchant_id     bigint        NOT NULL,
    currency        char(3)       NOT NULL,
    period_start    date          NOT NULL,
    gross_amount    numeric(20,2) NOT NULL,
    refunded_amount numeric(20,2) NOT NULL,
    fee_amount      numeric(20,4) NOT NULL,
    net_amount      numeric(20,4) NOT NULL,
    payment_count   integer       NOT NULL,
    status          text          NOT NULL,
    created_at      timestamptz   NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS settlements_merchant_period ON settlements (merchant_id, currency, period_start);

CREATE TABLE IF NOT EXISTS payouts (
    payout_id      bigint        PRIMARY KEY,
    settlement_id  bigint        NOT NULL REFERENCES settlements,
    merchant_id    bigint        NOT NULL,
    amount         numeric(20,4) NOT NULL,
    currency       char(3)       NOT NULL,
    bank_reference text,
    status         text          NOT NULL,
    scheduled_for  date          NOT NULL,
    paid_at        timestamptz
);
CREATE INDEX IF NOT EXISTS payouts_settlement ON payouts (settlement_id);
