//! SQL text as PostgreSQL's own grammar reads it: a query split into its
//! statements, each statement's command tag, and the statement a captured
//! command came from.
//!
//! `current_query()` is the client's whole query: a migration tool often
//! sends several statements in one. The event trigger counts, per query,
//! the commands of each tag; the Nth `ALTER TABLE` command of a query is
//! its Nth `ALTER TABLE` statement. A command run from a function or a `DO`
//! block has no statement of its own in the query: [`locate`] says so.

use pg_query::protobuf::{self, ObjectType};
use pg_query::NodeEnum;
use shardline_topology::TableName;

use crate::DdlError;

/// One statement of a query: its text and its parse tree.
#[derive(Clone, Debug)]
pub struct Statement {
    pub text: String,
    pub node: NodeEnum,
}

impl Statement {
    /// PostgreSQL's command tag for it (the one event triggers see), for
    /// the statements shardline reads; `None` for others.
    pub fn tag(&self) -> Option<String> {
        command_tag(&self.node)
    }

    /// The statement as SQL again, after its tree was changed.
    pub fn deparse(&self) -> Result<String, DdlError> {
        self.node.deparse().map_err(|e| DdlError::Syntax {
            sql: self.text.clone(),
            cause: e.to_string(),
        })
    }
}

/// Splits SQL text into statements (empty ones dropped).
pub fn split(sql: &str) -> Result<Vec<Statement>, DdlError> {
    let parsed = pg_query::parse(sql).map_err(|e| DdlError::Syntax {
        sql: sql.to_string(),
        cause: e.to_string(),
    })?;
    let mut out = Vec::new();
    for raw in parsed.protobuf.stmts {
        let Some(node) = raw.stmt.and_then(|n| n.node) else {
            continue;
        };
        let start = raw.stmt_location.max(0) as usize;
        let end = if raw.stmt_len > 0 {
            start + raw.stmt_len as usize
        } else {
            sql.len()
        };
        let text = sql
            .get(start..end.min(sql.len()))
            .unwrap_or_default()
            .trim()
            .trim_end_matches(';')
            .trim()
            .to_string();
        out.push(Statement { text, node });
    }
    Ok(out)
}

/// The statement of `query` that a command with `tag` and `ordinal` (its
/// place among the query's commands with that tag) came from. `Err` says
/// why none can be named.
pub fn locate(query: &str, tag: &str, ordinal: i32) -> Result<Statement, String> {
    let statements = split(query).map_err(|e| e.to_string())?;
    let ordinal = usize::try_from(ordinal).map_err(|_| "the capture lost count".to_string())?;
    let mut same_tag = statements
        .into_iter()
        .filter(|s| s.tag().as_deref() == Some(tag));
    match same_tag.nth(ordinal) {
        Some(s) => Ok(s),
        None => Err(format!(
            "the query has no {} {tag} statement of its own (the command ran inside a function or a DO block)",
            ordinal_word(ordinal + 1)
        )),
    }
}

fn ordinal_word(n: usize) -> String {
    match n {
        1 => "first".into(),
        2 => "second".into(),
        3 => "third".into(),
        n => format!("{n}th"),
    }
}

/// `ALTER <object>` as a command tag, for the object types shardline reads.
fn alter_tag(object: i32) -> Option<&'static str> {
    Some(match ObjectType::try_from(object).ok()? {
        ObjectType::ObjectTable | ObjectType::ObjectTabconstraint => "ALTER TABLE",
        ObjectType::ObjectIndex => "ALTER INDEX",
        ObjectType::ObjectSequence => "ALTER SEQUENCE",
        ObjectType::ObjectView => "ALTER VIEW",
        ObjectType::ObjectMatview => "ALTER MATERIALIZED VIEW",
        ObjectType::ObjectForeignTable => "ALTER FOREIGN TABLE",
        ObjectType::ObjectType | ObjectType::ObjectAttribute => "ALTER TYPE",
        ObjectType::ObjectDomain | ObjectType::ObjectDomconstraint => "ALTER DOMAIN",
        ObjectType::ObjectSchema => "ALTER SCHEMA",
        ObjectType::ObjectFunction => "ALTER FUNCTION",
        _ => return None,
    })
}

/// `DROP <object>` as a command tag.
fn drop_tag(object: i32) -> Option<&'static str> {
    Some(match ObjectType::try_from(object).ok()? {
        ObjectType::ObjectTable => "DROP TABLE",
        ObjectType::ObjectIndex => "DROP INDEX",
        ObjectType::ObjectSequence => "DROP SEQUENCE",
        ObjectType::ObjectView => "DROP VIEW",
        ObjectType::ObjectMatview => "DROP MATERIALIZED VIEW",
        ObjectType::ObjectForeignTable => "DROP FOREIGN TABLE",
        ObjectType::ObjectType => "DROP TYPE",
        ObjectType::ObjectDomain => "DROP DOMAIN",
        ObjectType::ObjectSchema => "DROP SCHEMA",
        ObjectType::ObjectFunction => "DROP FUNCTION",
        ObjectType::ObjectTrigger => "DROP TRIGGER",
        _ => return None,
    })
}

/// PostgreSQL's command tag of a statement, for the statements shardline
/// reads.
pub fn command_tag(node: &NodeEnum) -> Option<String> {
    let tag = match node {
        NodeEnum::AlterTableStmt(s) => alter_tag(s.objtype)?,
        NodeEnum::RenameStmt(s) => {
            let object = match ObjectType::try_from(s.rename_type) {
                Ok(ObjectType::ObjectColumn) => s.relation_type,
                _ => s.rename_type,
            };
            alter_tag(object)?
        }
        NodeEnum::AlterObjectSchemaStmt(s) => alter_tag(s.object_type)?,
        NodeEnum::IndexStmt(_) => "CREATE INDEX",
        NodeEnum::CreateStmt(_) => "CREATE TABLE",
        NodeEnum::DropStmt(s) => drop_tag(s.remove_type)?,
        NodeEnum::AlterEnumStmt(_) => "ALTER TYPE",
        NodeEnum::CreateEnumStmt(_)
        | NodeEnum::CompositeTypeStmt(_)
        | NodeEnum::CreateRangeStmt(_) => "CREATE TYPE",
        NodeEnum::CreateDomainStmt(_) => "CREATE DOMAIN",
        NodeEnum::AlterDomainStmt(_) => "ALTER DOMAIN",
        NodeEnum::CommentStmt(_) => "COMMENT",
        _ => return None,
    };
    Some(tag.to_string())
}

/// Whether a statement may run inside a transaction block.
pub fn transactional(node: &NodeEnum) -> bool {
    match node {
        NodeEnum::IndexStmt(s) => !s.concurrent,
        NodeEnum::DropStmt(s) => !s.concurrent,
        NodeEnum::ReindexStmt(s) => !s
            .params
            .iter()
            .any(|p| matches!(&p.node, Some(NodeEnum::DefElem(d)) if d.defname == "concurrently")),
        NodeEnum::AlterTableStmt(s) => !s.cmds.iter().any(|c| {
            matches!(&c.node, Some(NodeEnum::AlterTableCmd(cmd))
                if cmd.subtype == protobuf::AlterTableType::AtDetachPartition as i32
                    && matches!(cmd.def.as_deref().and_then(|d| d.node.as_ref()),
                        Some(NodeEnum::PartitionCmd(p)) if p.concurrent))
        }),
        NodeEnum::VacuumStmt(_)
        | NodeEnum::CreatedbStmt(_)
        | NodeEnum::DropdbStmt(_)
        | NodeEnum::AlterSystemStmt(_)
        | NodeEnum::CreateTableSpaceStmt(_)
        | NodeEnum::DropTableSpaceStmt(_)
        | NodeEnum::CreateSubscriptionStmt(_)
        | NodeEnum::DropSubscriptionStmt(_) => false,
        _ => true,
    }
}

/// A parsed relation as [`TableName`] displays it, in the schema the
/// source resolved it to when the statement does not name one.
pub fn qualified(rv: &protobuf::RangeVar, resolved_schema: &str) -> String {
    let schema = if rv.schemaname.is_empty() {
        resolved_schema
    } else {
        &rv.schemaname
    };
    TableName::new(schema, &rv.relname).to_string()
}

/// The strings of a name list (`public.st` → `["public", "st"]`).
pub fn names(list: &[protobuf::Node]) -> Vec<String> {
    list.iter()
        .filter_map(|n| match &n.node {
            Some(NodeEnum::String(s)) => Some(s.sval.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_the_nth_statement_of_a_tag_in_a_multi_statement_query() {
        let q = "CREATE TABLE t (a int); insert into t values (1); ALTER TABLE t ADD b int; ALTER TABLE t RENAME b TO c; CREATE INDEX ON t (a)";
        assert_eq!(
            locate(q, "ALTER TABLE", 0).unwrap().text,
            "ALTER TABLE t ADD b int"
        );
        assert_eq!(
            locate(q, "ALTER TABLE", 1).unwrap().text,
            "ALTER TABLE t RENAME b TO c"
        );
        assert_eq!(
            locate(q, "CREATE INDEX", 0).unwrap().text,
            "CREATE INDEX ON t (a)"
        );
        assert!(locate(q, "ALTER TABLE", 2).is_err());
        let e = locate(
            "DO $$ BEGIN EXECUTE 'ALTER TABLE t ADD x int'; END $$",
            "ALTER TABLE",
            0,
        )
        .unwrap_err();
        assert!(e.contains("DO block"), "{e}");
    }

    #[test]
    fn command_tags_follow_postgresql() {
        let tag = |sql: &str| split(sql).unwrap()[0].tag();
        assert_eq!(
            tag("ALTER INDEX i RENAME TO j").as_deref(),
            Some("ALTER INDEX")
        );
        assert_eq!(
            tag("ALTER TABLE t RENAME COLUMN a TO b").as_deref(),
            Some("ALTER TABLE")
        );
        assert_eq!(
            tag("ALTER TYPE s ADD VALUE 'x'").as_deref(),
            Some("ALTER TYPE")
        );
        assert_eq!(
            tag("DROP INDEX CONCURRENTLY i").as_deref(),
            Some("DROP INDEX")
        );
        assert_eq!(
            tag("CREATE TYPE s AS ENUM ('a')").as_deref(),
            Some("CREATE TYPE")
        );
        assert_eq!(tag("SELECT 1"), None);
    }

    #[test]
    fn concurrent_statements_are_not_transactional() {
        let t = |sql: &str| transactional(&split(sql).unwrap()[0].node);
        assert!(!t("CREATE INDEX CONCURRENTLY i ON t (a)"));
        assert!(!t("DROP INDEX CONCURRENTLY i"));
        assert!(!t("REINDEX INDEX CONCURRENTLY i"));
        assert!(!t("VACUUM t"));
        assert!(!t("ALTER TABLE p DETACH PARTITION c CONCURRENTLY"));
        assert!(t("ALTER TABLE t ADD a int"));
        assert!(t("CREATE INDEX i ON t (a)"));
    }
}
