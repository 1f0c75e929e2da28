//! Reading definitions from the catalog.
//!
//! Every read runs in one `REPEATABLE READ READ ONLY` transaction (one
//! consistent view of the catalog) with `search_path = pg_catalog`, so
//! PostgreSQL's renderings qualify every name they contain and read the
//! same on source and targets. Names are looked up exactly in
//! `pg_namespace` and `pg_class`, never through a parsed string.

use std::collections::HashSet;

use shardline_topology::TableName;
use tokio_postgres::{Client, Row};

use crate::table::{
    Column, Constraint, ConstraintKind, ExtensionType, Identity, Index, NamedDefinition, Partition,
    Sequence, Stats, Table, UserType,
};
use crate::SchemaError;

const BEGIN: &str =
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL search_path = pg_catalog";

/// Reads `table`'s whole definition; `None` when no ordinary or
/// partitioned table has that name. The client must not be inside a
/// transaction (the read opens and ends its own).
pub async fn read_table(client: &Client, table: &TableName) -> Result<Option<Table>, SchemaError> {
    in_snapshot(client, read_table_within(client, table)).await
}

/// Reads the named sequences that exist (for targets whose table is not
/// there yet: a shared sequence may be).
pub async fn read_sequences(
    client: &Client,
    names: &[TableName],
) -> Result<Vec<Sequence>, SchemaError> {
    in_snapshot(client, async {
        let mut out = Vec::new();
        for name in names {
            let oid: Option<u32> = client
                .query_opt(
                    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind = 'S'",
                    &[&name.schema, &name.name],
                )
                .await?
                .map(|r| r.get(0));
            if let Some(oid) = oid {
                out.extend(sequences_where(client, "s.seqrelid = $1", oid, 0).await?);
            }
        }
        Ok(out)
    })
    .await
}

/// Reads the named user types that exist, with what they are made of.
pub async fn read_types(
    client: &Client,
    names: &[TableName],
) -> Result<Vec<UserType>, SchemaError> {
    in_snapshot(client, async {
        let mut out = Vec::new();
        for name in names {
            let oid: Option<u32> = client
                .query_opt(
                    "SELECT t.oid FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                      WHERE n.nspname = $1 AND t.typname = $2",
                    &[&name.schema, &name.name],
                )
                .await?
                .map(|r| r.get(0));
            if let Some(oid) = oid {
                if let Some(t) = user_type(client, oid).await? {
                    out.push(t);
                }
            }
        }
        Ok(out)
    })
    .await
}

/// The extensions installed in the database.
pub async fn extensions(client: &Client) -> Result<Vec<String>, SchemaError> {
    Ok(client
        .query("SELECT extname::text FROM pg_extension", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

async fn in_snapshot<T>(
    client: &Client,
    work: impl std::future::Future<Output = Result<T, SchemaError>>,
) -> Result<T, SchemaError> {
    client.batch_execute(BEGIN).await?;
    let result = work.await;
    let end = client.batch_execute("COMMIT").await;
    let value = result?;
    end?;
    Ok(value)
}

async fn read_table_within(
    client: &Client,
    table: &TableName,
) -> Result<Option<Table>, SchemaError> {
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
                    obj_description(c.oid, 'pg_class')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let partition_key: Option<String> = row.get(1);
    let columns = columns(client, oid).await?;
    let constraints = constraints(client, oid).await?;
    let indexes = indexes(client, oid).await?;
    let (types, extension_types) = types(client, oid).await?;
    let sequences = sequences_where(
        client,
        "s.seqrelid IN (
             SELECT objid FROM pg_depend
              WHERE classid = 'pg_class'::regclass AND refclassid = 'pg_class'::regclass
                AND refobjid = $1 AND deptype IN ('a', 'i')
             UNION
             SELECT d.refobjid FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid
              WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass
                AND ad.adrelid = $1)",
        oid,
        oid,
    )
    .await?;
    let partitions = if partition_key.is_some() {
        partitions(client, oid).await?
    } else {
        Vec::new()
    };
    let stats = if partition_key.is_some() {
        let leaves = partitions.iter().filter(|p| p.is_leaf());
        leaves.fold(Stats::default(), |s, p| Stats {
            est_rows: s.est_rows + p.stats.est_rows,
            bytes: s.bytes + p.stats.bytes,
            blocks: s.blocks.max(p.stats.blocks),
        })
    } else {
        stats(client, oid).await?
    };
    let named = |sql: &'static str| async move {
        Ok::<_, SchemaError>(
            client
                .query(sql, &[&oid])
                .await?
                .iter()
                .map(|r| NamedDefinition {
                    name: r.get(0),
                    definition: r.get(1),
                })
                .collect::<Vec<_>>(),
        )
    };
    let triggers = named(
        "SELECT tgname::text, pg_get_triggerdef(oid) FROM pg_trigger
          WHERE tgrelid = $1 AND NOT tgisinternal ORDER BY tgname",
    )
    .await?;
    let policies = named(
        "SELECT polname::text, pg_get_expr(polqual, polrelid) FROM pg_policy
          WHERE polrelid = $1 AND polqual IS NOT NULL
         UNION ALL
         SELECT polname::text, 'WITH CHECK (' || pg_get_expr(polwithcheck, polrelid) || ')'
           FROM pg_policy WHERE polrelid = $1 AND polqual IS NULL
         ORDER BY 1",
    )
    .await?;
    let rules = named(
        "SELECT rulename::text, pg_get_ruledef(oid) FROM pg_rewrite
          WHERE ev_class = $1 AND rulename <> '_RETURN' ORDER BY rulename",
    )
    .await?;
    Ok(Some(Table {
        name: table.clone(),
        partition_key,
        columns,
        constraints,
        indexes,
        types,
        extension_types,
        sequences,
        partitions,
        triggers,
        policies,
        rules,
        comment: row.get(2),
        stats,
    }))
}

async fn columns(client: &Client, oid: u32) -> Result<Vec<Column>, SchemaError> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END,
                    CASE WHEN a.attgenerated <> '' THEN pg_get_expr(d.adbin, d.adrelid) END,
                    a.attidentity::text,
                    CASE WHEN a.attcollation <> t.typcollation THEN
                        (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                           FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
                          WHERE co.oid = a.attcollation) END,
                    col_description(a.attrelid, a.attnum)
               FROM pg_attribute a
               JOIN pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            sql_type: r.get(1),
            not_null: r.get(2),
            default: r.get(3),
            generated: r.get(4),
            identity: match r.get::<_, String>(5).as_str() {
                "a" => Some(Identity::Always),
                "d" => Some(Identity::ByDefault),
                _ => None,
            },
            collation: r.get(6),
            comment: r.get(7),
        })
        .collect())
}

/// Column names of `attnums` (an `int2[]` expression over alias `x`) of
/// relation `rel`, in order.
fn names_of(attnums: &str, rel: &str) -> String {
    format!(
        "ARRAY(SELECT a.attname::text FROM unnest({attnums}) WITH ORDINALITY AS k(n, o)
                 JOIN pg_attribute a ON a.attrelid = {rel} AND a.attnum = k.n ORDER BY k.o)"
    )
}

async fn constraints(client: &Client, oid: u32) -> Result<Vec<Constraint>, SchemaError> {
    let sql = format!(
        "SELECT co.conname::text, co.contype::text, pg_get_constraintdef(co.oid),
                {}, fn.nspname::text, fc.relname::text, {},
                obj_description(co.oid, 'pg_constraint')
           FROM pg_constraint co
           LEFT JOIN pg_class fc ON fc.oid = co.confrelid
           LEFT JOIN pg_namespace fn ON fn.oid = fc.relnamespace
          WHERE co.conrelid = $1 AND co.contype IN ('p', 'u', 'c', 'x', 'f')
          ORDER BY co.conname",
        names_of("co.conkey", "co.conrelid"),
        names_of("co.confkey", "co.confrelid")
    );
    let rows = client.query(&sql, &[&oid]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let kind = match r.get::<_, String>(1).as_str() {
                "p" => ConstraintKind::PrimaryKey,
                "u" => ConstraintKind::Unique,
                "c" => ConstraintKind::Check,
                "x" => ConstraintKind::Exclusion,
                _ => ConstraintKind::ForeignKey,
            };
            let references = match (r.get::<_, Option<String>>(4), r.get::<_, Option<String>>(5)) {
                (Some(schema), Some(name)) => Some((TableName::new(schema, name), r.get(6))),
                _ => None,
            };
            Constraint {
                name: r.get(0),
                kind,
                definition: r.get(2),
                columns: r.get(3),
                references,
                comment: r.get(7),
            }
        })
        .collect())
}

async fn indexes(client: &Client, oid: u32) -> Result<Vec<Index>, SchemaError> {
    let sql = format!(
        "SELECT ic.relname::text, pg_get_indexdef(i.indexrelid), i.indisunique,
                {}, obj_description(i.indexrelid, 'pg_class')
           FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
          WHERE i.indrelid = $1
            AND NOT EXISTS (SELECT 1 FROM pg_constraint co
                             WHERE co.conindid = i.indexrelid AND co.conrelid = i.indrelid)
          ORDER BY ic.relname",
        names_of("(i.indkey::int2[])[0:i.indnkeyatts - 1]", "i.indrelid")
    );
    let rows = client.query(&sql, &[&oid]).await?;
    Ok(rows
        .iter()
        .map(|r| Index {
            name: r.get(0),
            definition: r.get(1),
            unique: r.get(2),
            columns: r.get(3),
            comment: r.get(4),
        })
        .collect())
}

/// The user-defined types the table's columns use, in creation order, and
/// the column types that come from extensions.
async fn types(
    client: &Client,
    oid: u32,
) -> Result<(Vec<UserType>, Vec<ExtensionType>), SchemaError> {
    let roots: Vec<u32> = client
        .query(
            "SELECT atttypid FROM pg_attribute
              WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut walk = TypeWalk::default();
    for root in roots {
        walk.visit(client, root).await?;
    }
    Ok((walk.types, walk.extension_types))
}

#[derive(Default)]
struct TypeWalk {
    seen: HashSet<u32>,
    types: Vec<UserType>,
    extension_types: Vec<ExtensionType>,
}

impl TypeWalk {
    /// Depth first, dependencies before the type itself.
    fn visit<'a>(
        &'a mut self,
        client: &'a Client,
        oid: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SchemaError>> + Send + 'a>>
    {
        Box::pin(async move {
            if !self.seen.insert(oid) {
                return Ok(());
            }
            let Some(row) = client
                .query_opt(
                    "SELECT n.nspname::text, t.typname::text, t.typtype::text, t.typelem,
                            t.typbasetype, t.typrelid,
                            (SELECT e.extname::text FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                              WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e'
                              LIMIT 1),
                            n.nspname IN ('pg_catalog', 'information_schema')
                       FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1",
                    &[&oid],
                )
                .await?
            else {
                return Ok(());
            };
            if row.get::<_, bool>(7) {
                return Ok(());
            }
            let name = TableName::new(row.get::<_, String>(0), row.get::<_, String>(1));
            if let Some(extension) = row.get::<_, Option<String>>(6) {
                self.extension_types.push(ExtensionType { name, extension });
                return Ok(());
            }
            let (elem, base, rel): (u32, u32, u32) = (row.get(3), row.get(4), row.get(5));
            for dep in [elem, base] {
                if dep != 0 {
                    self.visit(client, dep).await?;
                }
            }
            if rel != 0 {
                let attrs: Vec<u32> = client
                    .query(
                        "SELECT atttypid FROM pg_attribute
                          WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                        &[&rel],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                for a in attrs {
                    self.visit(client, a).await?;
                }
            }
            if elem != 0 {
                // An array type: its element is what needs creating.
                return Ok(());
            }
            match user_type(client, oid).await? {
                Some(t) => self.types.push(t),
                None => {
                    // A range, a base type or a table's row type that no
                    // extension provides: reported as a type to carry by hand.
                    self.extension_types.push(ExtensionType {
                        name,
                        extension: String::new(),
                    });
                }
            }
            Ok(())
        })
    }
}

/// An enum, domain or free-standing composite type; `None` for any other kind.
async fn user_type(client: &Client, oid: u32) -> Result<Option<UserType>, SchemaError> {
    let Some(row) = client
        .query_opt(
            "SELECT n.nspname::text, t.typname::text, t.typtype::text,
                    format_type(t.typbasetype, t.typtypmod), t.typnotnull, t.typdefault,
                    CASE WHEN t.typcollation <> coalesce(b.typcollation, 0) THEN
                        (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                           FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
                          WHERE co.oid = t.typcollation) END,
                    coalesce((SELECT relkind::text FROM pg_class WHERE oid = t.typrelid), '')
               FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
               LEFT JOIN pg_type b ON b.oid = t.typbasetype
              WHERE t.oid = $1",
            &[&oid],
        )
        .await?
    else {
        return Ok(None);
    };
    let name = TableName::new(row.get::<_, String>(0), row.get::<_, String>(1));
    Ok(match row.get::<_, String>(2).as_str() {
        "e" => Some(UserType::Enum {
            name,
            labels: client
                .query(
                    "SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder",
                    &[&oid],
                )
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect(),
        }),
        "d" => Some(UserType::Domain {
            name,
            base: row.get(3),
            not_null: row.get(4),
            default: row.get(5),
            collation: row.get(6),
            checks: client
                .query(
                    "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint
                      WHERE contypid = $1 ORDER BY conname",
                    &[&oid],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect(),
        }),
        "c" if row.get::<_, String>(7) == "c" => Some(UserType::Composite {
            name,
            attributes: client
                .query(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod),
                            CASE WHEN a.attcollation <> t.typcollation THEN
                                (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                                   FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
                                  WHERE co.oid = a.attcollation) END
                       FROM pg_type ct JOIN pg_attribute a ON a.attrelid = ct.typrelid
                       JOIN pg_type t ON t.oid = a.atttypid
                      WHERE ct.oid = $1 AND a.attnum > 0 AND NOT a.attisdropped
                      ORDER BY a.attnum",
                    &[&oid],
                )
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect(),
        }),
        _ => None,
    })
}

/// Sequences matching `condition` (over `pg_sequence s`, with `$1`), each
/// with the column of `table` (oid, 0 for none) that owns it.
async fn sequences_where(
    client: &Client,
    condition: &str,
    param: u32,
    table: u32,
) -> Result<Vec<Sequence>, SchemaError> {
    let sql = format!(
        "SELECT n.nspname::text, c.relname::text, format_type(s.seqtypid, NULL), s.seqstart,
                s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
                (SELECT a.attname::text FROM pg_depend d
                   JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                    AND d.refobjid = $2 AND d.deptype IN ('a', 'i') LIMIT 1),
                EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                           AND d.objid = s.seqrelid AND d.deptype = 'i'),
                (SELECT ps.last_value FROM pg_sequences ps
                  WHERE ps.schemaname = n.nspname AND ps.sequencename = c.relname)
           FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
           JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE {condition}
          ORDER BY n.nspname, c.relname"
    );
    let rows = client.query(&sql, &[&param, &table]).await?;
    Ok(rows.iter().map(sequence).collect())
}

fn sequence(r: &Row) -> Sequence {
    Sequence {
        name: TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
        data_type: r.get(2),
        start: r.get(3),
        increment: r.get(4),
        min: r.get(5),
        max: r.get(6),
        cache: r.get(7),
        cycle: r.get(8),
        owned_by: r.get(9),
        identity: r.get(10),
        last_value: r.get(11),
    }
}

async fn partitions(client: &Client, oid: u32) -> Result<Vec<Partition>, SchemaError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, pn.nspname::text, pc.relname::text,
                    pg_get_expr(c.relpartbound, c.oid),
                    CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END,
                    c.relkind = 'f',
                    greatest(c.reltuples, 0)::int8, pg_relation_size(c.oid),
                    pg_relation_size(c.oid) / current_setting('block_size')::int8
               FROM pg_partition_tree($1::oid) t
               JOIN pg_class c ON c.oid = t.relid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_class pc ON pc.oid = t.parentrelid
               JOIN pg_namespace pn ON pn.oid = pc.relnamespace
              WHERE t.level > 0
              ORDER BY t.level, n.nspname, c.relname",
            &[&oid],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Partition {
            name: TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)),
            parent: TableName::new(r.get::<_, String>(2), r.get::<_, String>(3)),
            bound: r.get(4),
            partition_key: r.get(5),
            foreign: r.get(6),
            stats: Stats {
                est_rows: r.get(7),
                bytes: r.get(8),
                blocks: r.get(9),
            },
        })
        .collect())
}

async fn stats(client: &Client, oid: u32) -> Result<Stats, SchemaError> {
    let r = client
        .query_one(
            "SELECT greatest(reltuples, 0)::int8, pg_relation_size(oid),
                    pg_relation_size(oid) / current_setting('block_size')::int8
               FROM pg_class WHERE oid = $1",
            &[&oid],
        )
        .await?;
    Ok(Stats {
        est_rows: r.get(0),
        bytes: r.get(1),
        blocks: r.get(2),
    })
}
