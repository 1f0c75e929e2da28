//! Splitting a table into chunks of heap blocks.
//!
//! A chunk is a range of block numbers, read with a TID range scan
//! (`ctid >= '(first,0)' AND ctid < '(end,0)'`), which PostgreSQL 14 and
//! later answer by reading just those blocks: no index needed, and every
//! row falls in exactly one chunk. The last chunk has no upper bound, so
//! rows in blocks added after planning are not missed.

use crate::catalog::TableDef;

/// Rows per block assumed for a table never analysed: about 130-byte rows.
const DEFAULT_ROWS_PER_BLOCK: f64 = 60.0;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChunk {
    pub number: i32,
    pub first_block: i64,
    pub end_block: Option<i64>,
}

/// Chunks of about `chunk_rows` rows each.
pub fn plan(def: &TableDef, chunk_rows: u64) -> Vec<PlannedChunk> {
    let rows_per_block = if def.est_rows > 0 && def.blocks > 0 {
        def.est_rows as f64 / def.blocks as f64
    } else {
        DEFAULT_ROWS_PER_BLOCK
    };
    let per_chunk = ((chunk_rows as f64 / rows_per_block).ceil() as i64).max(1);
    let mut chunks = Vec::new();
    let mut first = 0;
    loop {
        let end = first + per_chunk;
        let last = end >= def.blocks;
        chunks.push(PlannedChunk {
            number: chunks.len() as i32,
            first_block: first,
            end_block: (!last).then_some(end),
        });
        if last {
            return chunks;
        }
        first = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(rows: i64, blocks: i64) -> TableDef {
        TableDef {
            name: "public.t".into(),
            table: shardline_topology::TableName::new("public", "t"),
            columns: vec![],
            primary_key: vec![],
            indexes: vec![],
            enums: vec![],
            est_rows: rows,
            bytes: blocks * 8192,
            blocks,
        }
    }

    #[test]
    fn chunks_cover_every_block_once_and_the_last_is_open() {
        let chunks = plan(&def(1_000_000, 10_000), 250_000);
        assert_eq!(chunks.len(), 4);
        assert_eq!(
            chunks[0],
            PlannedChunk {
                number: 0,
                first_block: 0,
                end_block: Some(2500)
            }
        );
        assert_eq!(chunks[3].end_block, None);
        for w in chunks.windows(2) {
            assert_eq!(w[0].end_block, Some(w[1].first_block));
        }
        let empty = plan(&def(0, 0), 250_000);
        assert_eq!(
            empty,
            vec![PlannedChunk {
                number: 0,
                first_block: 0,
                end_block: None
            }]
        );
    }
}
