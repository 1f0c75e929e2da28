-- Transactions context: payments and what happens to them. Sharded by
-- merchant_id, so every table carries merchant_id first in its primary key.
-- The monolith defines these tables with this very file.

DO $$ BEGIN
    CREATE TYPE payment_status AS ENUM
        ('pending', 'authorized', 'captured', 'partially_refunded', 'refunded', 'failed', 'canceled');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

DO $$ BEGIN
    CREATE TYPE payment_event_type AS ENUM
        ('created', 'authorized', 'captured', 'refunded', 'failed', 'canceled', 'settled');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE TABLE IF NOT EXISTS payments (
    merchant_id     bigint         NOT NULL,
    payment_id      bigint         NOT NULL,
    idempotency_key uuid           NOT NULL,
    amount          numeric(18,2)  NOT NULL CHECK (amount > 0),
    currency        char(3)        NOT NULL,
    status          payment_status NOT NULL,
    method          text           NOT NULL,
    card_brand      text,
    card_last4      char(4),
    customer_email  text,
    description     text,
    metadata        jsonb,
    created_at      timestamptz    NOT NULL,
    updated_at      timestamptz    NOT NULL,
    captured_at     timestamptz,
    PRIMARY KEY (merchant_id, payment_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS payments_idempotency ON payments (merchant_id, idempotency_key);
CREATE INDEX IF NOT EXISTS payments_merchant_created ON payments (merchant_id, created_at);

CREATE TABLE IF NOT EXISTS payment_events (
    merchant_id bigint             NOT NULL,
    event_id    bigint             NOT NULL,
    payment_id  bigint             NOT NULL,
    event_type  payment_event_type NOT NULL,
    amount      numeric(18,2),
    payload     jsonb,
    occurred_at timestamptz        NOT NULL,
    PRIMARY KEY (merchant_id, event_id)
);
CREATE INDEX IF NOT EXISTS payment_events_payment ON payment_events (merchant_id, payment_id);

CREATE TABLE IF NOT EXISTS refunds (
    merchant_id bigint        NOT NULL,
    refund_id   bigint        NOT NULL,
    payment_id  bigint        NOT NULL,
    amount      numeric(18,2) NOT NULL CHECK (amount > 0),
    currency    char(3)       NOT NULL,
    reason      text,
    status      text          NOT NULL,
    created_at  timestamptz   NOT NULL,
    PRIMARY KEY (merchant_id, refund_id)
);
CREATE INDEX IF NOT EXISTS refunds_payment ON refunds (merchant_id, payment_id);
