-- The monolith holds every table of every context: it is applied as
-- merchants.sql, transactions.sql and settlements.sql, then this file.
-- A foreign key across what become separate databases exists only here.

DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'payments_merchant_fk') THEN
        ALTER TABLE payments ADD CONSTRAINT payments_merchant_fk
            FOREIGN KEY (merchant_id) REFERENCES merchants;
    END IF;
END $$;

-- Updates and deletes of payments carry the whole old row, so CDC keeps the
-- read models over payments (merchant_daily_volume) incrementally: it
-- subtracts the old row's contribution and adds the new one's.
ALTER TABLE payments REPLICA IDENTITY FULL;
