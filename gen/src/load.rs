//! Loading a generated history into the monolith over binary COPY.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::SinkExt;
use rayon::prelude::*;
use shardline_topology::ConnString;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::history::{History, EVENT_COLUMNS, MERCHANT_COLUMNS, PAYMENT_COLUMNS, REFUND_COLUMNS};
use crate::{GenError, GenReport, GenRequest, Progress};

/// The tables a generated history fills, in the order they are checked.
pub const TABLES: &[&str] = &[
    "merchants",
    "payments",
    "payment_events",
    "refunds",
    "settlements",
    "payouts",
];

/// Chunks queued per table between the generator and its COPY stream.
const QUEUE_CHUNKS: usize = 4;

pub async fn generate(
    source: &ConnString,
    request: &GenRequest,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<GenReport, GenError> {
    let started = Instant::now();
    let client = source.connect().await?;
    check_tables(&client, request.truncate).await?;
    let history = Arc::new(History::new(
        request.seed,
        request.payments,
        request.merchants,
    ));

    let result = load(source, &client, &history, progress).await;
    if result.is_err() {
        // The tables were empty before: leave them so, not half-filled.
        let _ = client
            .batch_execute(&format!("TRUNCATE {} CASCADE", TABLES.join(", ")))
            .await;
    }
    let mut tables = Vec::new();
    for table in TABLES {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .map_err(|e| GenError::query(table, e))?
            .get(0);
        tables.push((table.to_string(), n as u64));
    }
    result?;
    let seconds = started.elapsed().as_secs_f64();
    let rows: u64 = tables.iter().map(|(_, n)| n).sum();
    Ok(GenReport {
        tables,
        seconds,
        rows_per_sec: rows as f64 / seconds.max(1e-9),
    })
}

async fn check_tables(client: &Client, truncate: bool) -> Result<(), GenError> {
    for table in TABLES {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[table])
            .await
            .map_err(|e| GenError::query(table, e))?
            .get(0);
        if !exists {
            return Err(GenError::MissingTable(table.to_string()));
        }
    }
    if truncate {
        client
            .batch_execute(&format!("TRUNCATE {} CASCADE", TABLES.join(", ")))
            .await
            .map_err(|e| GenError::query("TRUNCATE", e))?;
        return Ok(());
    }
    for table in TABLES {
        let filled: bool = client
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
            .await
            .map_err(|e| GenError::query(table, e))?
            .get(0);
        if filled {
            return Err(GenError::NotEmpty(table.to_string()));
        }
    }
    Ok(())
}

async fn load(
    source: &ConnString,
    client: &Client,
    history: &Arc<History>,
    progress: Arc<dyn Fn(Progress) + Send + Sync>,
) -> Result<(), GenError> {
    // Merchants first: payments reference them.
    let merchants = history.merchants_copy();
    copy_in(
        client,
        "merchants",
        MERCHANT_COLUMNS,
        futures_util::stream::iter([merchants]),
    )
    .await?;

    let mut senders = Vec::new();
    let mut sinks = Vec::new();
    for (table, columns) in [
        ("payments", PAYMENT_COLUMNS),
        ("payment_events", EVENT_COLUMNS),
        ("refunds", REFUND_COLUMNS),
    ] {
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE_CHUNKS);
        senders.push(tx);
        let conn = source.clone();
        sinks.push(tokio::spawn(async move {
            let client = conn.connect().await?;
            let header = futures_util::stream::iter([Bytes::from_static(shardline_pgcopy::HEADER)]);
            let body = tokio_stream_from(rx);
            let trailer =
                futures_util::stream::iter([Bytes::from_static(&shardline_pgcopy::TRAILER)]);
            copy_in(
                &client,
                table,
                columns,
                futures_util::StreamExt::chain(
                    futures_util::StreamExt::chain(header, body),
                    trailer,
                ),
            )
            .await
        }));
    }

    // Generate on the rayon pool, in windows of chunks, forwarding them in
    // chunk order so the tables' physical order is the same on every run.
    let end = history.end;
    let history = Arc::clone(history);
    let producer = tokio::task::spawn_blocking(move || {
        let window = (rayon::current_num_threads() * 2) as u64;
        let total = history.chunks();
        let mut rows = 0u64;
        let mut start = 0;
        while start < total {
            let end = (start + window).min(total);
            let chunks: Vec<_> = (start..end)
                .into_par_iter()
                .map(|i| history.chunk(i))
                .collect();
            for chunk in chunks {
                rows += chunk.payment_rows + chunk.event_rows + chunk.refund_rows;
                for (tx, bytes) in senders
                    .iter()
                    .zip([chunk.payments, chunk.events, chunk.refunds])
                {
                    if tx.blocking_send(bytes).is_err() {
                        return; // a COPY failed; its error is reported below
                    }
                }
            }
            progress(Progress {
                payments_done: (end * crate::history::CHUNK_PAYMENTS).min(history.payments),
                payments_total: history.payments,
                rows,
            });
            start = end;
        }
    });
    producer
        .await
        .map_err(|e| GenError::Internal(e.to_string()))?;
    for sink in sinks {
        sink.await
            .map_err(|e| GenError::Internal(e.to_string()))??;
    }
    derive_settlements(client, end).await?;
    client
        .batch_execute(&format!("ANALYZE {}", TABLES.join(", ")))
        .await
        .map_err(|e| GenError::query("ANALYZE", e))
}

fn tokio_stream_from(mut rx: mpsc::Receiver<Bytes>) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn copy_in(
    client: &Client,
    table: &str,
    columns: &str,
    chunks: impl futures_util::Stream<Item = Bytes>,
) -> Result<u64, GenError> {
    let sink = client
        .copy_in::<_, Bytes>(&format!(
            "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(|e| GenError::query(table, e))?;
    futures_util::pin_mut!(sink);
    futures_util::pin_mut!(chunks);
    while let Some(bytes) = futures_util::StreamExt::next(&mut chunks).await {
        sink.send(bytes)
            .await
            .map_err(|e| GenError::query(table, e))?;
    }
    sink.finish().await.map_err(|e| GenError::query(table, e))
}

/// Settlements and payouts follow from captured payments and refunds: one
/// settlement per merchant, currency and capture day, one payout each.
async fn derive_settlements(client: &Client, end_unix_micros: i64) -> Result<(), GenError> {
    let end = format!("to_timestamp({end_unix_micros} / 1000000.0)");
    let sql = format!(
        "INSERT INTO settlements (settlement_id, merchant_id, currency, period_start, gross_amount, refunded_amount,
                                  fee_amount, net_amount, payment_count, status, created_at)
         SELECT row_number() OVER (ORDER BY p.merchant_id, p.currency, p.day),
                p.merchant_id, p.currency, p.day, p.gross, p.refunded,
                round(p.gross * m.fee_bps / 10000.0, 4),
                p.gross - p.refunded - round(p.gross * m.fee_bps / 10000.0, 4),
                p.n,
                CASE WHEN p.day < ({end})::date - 7 THEN 'paid' ELSE 'open' END,
                p.day + interval '1 day 2 hours'
           FROM (SELECT merchant_id, currency, (captured_at AT TIME ZONE 'UTC')::date AS day,
                        sum(amount) AS gross, coalesce(sum(r.refunded), 0) AS refunded, count(*) AS n
                   FROM payments
                   LEFT JOIN (SELECT merchant_id, payment_id, sum(amount) AS refunded
                                FROM refunds GROUP BY 1, 2) r USING (merchant_id, payment_id)
                  WHERE captured_at IS NOT NULL
                  GROUP BY 1, 2, 3) p
           JOIN merchants m USING (merchant_id);
         INSERT INTO payouts (payout_id, settlement_id, merchant_id, amount, currency, bank_reference, status, scheduled_for, paid_at)
         SELECT settlement_id, settlement_id, merchant_id, net_amount, currency,
                CASE WHEN status = 'paid' THEN 'PO-' || lpad(settlement_id::text, 10, '0') END,
                CASE WHEN status = 'paid' THEN 'paid' ELSE 'scheduled' END,
                period_start + 2,
                CASE WHEN status = 'paid' THEN period_start + interval '2 days 9 hours' END
           FROM settlements;"
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| GenError::query("settlements", e))
}
