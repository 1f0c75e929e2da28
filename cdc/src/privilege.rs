//! What an applier's role must be allowed on its target, checked before
//! anything streams (and before a cutover stage holds a bucket).
//!
//! Appliers run as PostgreSQL's own apply workers do:
//!
//! - `session_replication_role = replica`: triggers and foreign key checks
//!   ran on the source already; run again on a target, a trigger writes a
//!   second audit row, or a check fails on rows applied in commit order;
//! - a replication origin per target (`pg_replication_origin_create`,
//!   `pg_replication_origin_session_setup`): the reverse stream of a cutover
//!   skips the transactions carrying it. Without it, a rollback's reverse
//!   stream would replay the forward stream's writes into the monolith and
//!   overwrite newer rows.
//!
//! Both need a superuser, or the grants the fixes name (PostgreSQL 15 and
//! later can grant a parameter). A role without them is refused, naming
//! the privilege, instead of streaming with a warning at debug level.

use tokio_postgres::Client;

/// One privilege a target's role lacks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("target {target}: role {role} {missing} (fix: {fix})")]
pub struct Missing {
    pub target: String,
    pub role: String,
    /// What the role may not do, and what that would break.
    pub missing: String,
    /// The statement that grants it (run as a superuser).
    pub fix: String,
}

/// Every privilege the applier's role lacks on `client`'s database;
/// changes nothing there.
pub async fn missing(client: &Client, target: &str) -> Result<Vec<Missing>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper,
                    has_function_privilege('pg_replication_origin_create(text)', 'EXECUTE')
                    AND has_function_privilege('pg_replication_origin_session_setup(text)', 'EXECUTE')
               FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (role, superuser, origins): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if superuser {
        return Ok(Vec::new());
    }
    let quoted = shardline_topology::quote_ident(&role);
    let mut out = Vec::new();
    // SET LOCAL in a transaction that rolls back: the session is left as
    // it was, whatever the outcome.
    let replica = client
        .batch_execute("BEGIN; SET LOCAL session_replication_role = replica")
        .await;
    client.batch_execute("ROLLBACK").await?;
    if let Err(e) = replica {
        if shardline_topology::pgerror::sqlstate(&e) != Some("42501") {
            return Err(e);
        }
        out.push(Missing {
            target: target.to_string(),
            role: role.clone(),
            missing: "may not set session_replication_role = replica, so triggers and foreign key checks would run again on changes the source already checked".into(),
            fix: format!("connect as a superuser, or GRANT SET ON PARAMETER session_replication_role TO {quoted};"),
        });
    }
    if !origins {
        out.push(Missing {
            target: target.to_string(),
            role,
            missing: "may not use replication origins, so a cutover's reverse stream could not tell the changes applied here from the application's".into(),
            fix: format!("connect as a superuser, or GRANT EXECUTE ON FUNCTION pg_replication_origin_create(text), pg_replication_origin_session_setup(text) TO {quoted};"),
        });
    }
    Ok(out)
}
