//! Splitting a table into chunks of heap blocks.
//!
//! A chunk is a range of block numbers of one relation, read with a TID
//! range scan (`ctid >= '(first,0)' AND ctid < '(end,0)'`), which
//! PostgreSQL 14 and later answer by reading just those blocks: no index
//! needed, and every row falls in exactly one chunk. A partitioned table
//! has no heap of its own: each leaf partition is split on its own, and
//! its chunks name it. The last chunk of each relation has no upper bound,
//! so rows in blocks added after planning are not missed.

use shardline_topology::TableName;

use crate::catalog::TableDef;

/// Rows per block assumed for a table never analysed: about 130-byte rows.
const DEFAULT_ROWS_PER_BLOCK: f64 = 60.0;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedChunk {
    pub number: i32,
    /// The partition read (`None`: the table itself).
    pub relation: Option<TableName>,
    pub first_block: i64,
    pub end_block: Option<i64>,
}

/// Chunks of about `chunk_rows` rows each, relation by relation.
pub fn plan(def: &TableDef, chunk_rows: u64) -> Vec<PlannedChunk> {
    let mut chunks = Vec::new();
    if def.leaves.is_empty() {
        // A partitioned table without partitions: one chunk, of nothing.
        chunks.push(PlannedChunk {
            number: 0,
            relation: None,
            first_block: 0,
            end_block: None,
        });
        return chunks;
    }
    for leaf in &def.leaves {
        let relation = (leaf.relation != def.table).then(|| leaf.relation.clone());
        let rows_per_block = if leaf.est_rows > 0 && leaf.blocks > 0 {
            leaf.est_rows as f64 / leaf.blocks as f64
        } else {
            DEFAULT_ROWS_PER_BLOCK
        };
        let per_chunk = ((chunk_rows as f64 / rows_per_block).ceil() as i64).max(1);
        let mut first = 0;
        loop {
            let end = first + per_chunk;
            let last = end >= leaf.blocks;
            chunks.push(PlannedChunk {
                number: chunks.len() as i32,
                relation: relation.clone(),
                first_block: first,
                end_block: (!last).then_some(end),
            });
            if last {
                break;
            }
            first = end;
        }
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(rows: i64, blocks: i64) -> TableDef {
        let table = TableName::new("public", "t");
        TableDef {
            name: "public.t".into(),
            table: table.clone(),
            columns: vec![],
            primary_key: vec![],
            est_rows: rows,
            bytes: blocks * 8192,
            blocks,
            leaves: vec![crate::catalog::Leaf {
                relation: table,
                est_rows: rows,
                blocks,
            }],
            schema: None,
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
                relation: None,
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
                relation: None,
                first_block: 0,
                end_block: None
            }]
        );
    }

    #[test]
    fn a_partitioned_table_is_read_partition_by_partition() {
        let mut d = def(0, 0);
        d.leaves = [("p1", 100, 10), ("p2", 0, 0), ("p3", 1000, 100)]
            .iter()
            .map(|(n, rows, blocks)| crate::catalog::Leaf {
                relation: TableName::new("public", *n),
                est_rows: *rows,
                blocks: *blocks,
            })
            .collect();
        let chunks = plan(&d, 500);
        let of = |n: &str| -> Vec<&PlannedChunk> {
            chunks
                .iter()
                .filter(|c| c.relation.as_ref().map(|r| r.name.as_str()) == Some(n))
                .collect()
        };
        assert_eq!(of("p1").len(), 1);
        assert_eq!(of("p2").len(), 1);
        assert_eq!(of("p3").len(), 2);
        assert!(["p1", "p2", "p3"]
            .iter()
            .all(|n| of(n).last().unwrap().end_block.is_none()));
        let numbers: Vec<i32> = chunks.iter().map(|c| c.number).collect();
        assert_eq!(numbers, (0..chunks.len() as i32).collect::<Vec<_>>());
    }
}
