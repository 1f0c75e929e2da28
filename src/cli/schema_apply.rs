//! `shardline schema apply`: a migration on every database of a context.

use std::path::PathBuf;

use shardline_ddl::migration::{self, Database, Migration, Mode, Standing, Wanted};
use shardline_ddl::DdlError;

use super::output::{print_json, Hint};
use super::{Format, Global};

/// Run one SQL migration on every database of a context (all-or-nothing where it can)
///
/// When every statement can run in a transaction, each database runs the
/// file and prepares it (two-phase commit: max_prepared_transactions must
/// not be 0); only when all prepared does any commit. Otherwise (CREATE INDEX
/// CONCURRENTLY, …) databases run one after the other, each recording in
/// shardline.schema_migrations how far it got: run the same command again
/// after a failure or a kill and it resumes, skipping databases done.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline schema apply migrations/0042_risk_score.sql --dry-run
  shardline schema apply migrations/0042_risk_score.sql --context transactions
  shardline --format json schema apply 0043_index.sql --per-database")]
pub struct ApplyArgs {
    /// The SQL file (its name and content identify the migration)
    file: PathBuf,
    /// Only this context's databases [default: every context's]
    #[arg(long, value_name = "NAME")]
    context: Option<String>,
    /// Show the plan (mode, statements, where each database stands) and stop
    #[arg(long)]
    dry_run: bool,
    /// Database by database, resumable, even where all-or-nothing could run
    #[arg(long)]
    per_database: bool,
}

pub async fn apply(args: ApplyArgs, g: &Global) -> anyhow::Result<u8> {
    let topology = g.topology()?;
    let m = Migration::read(&args.file).map_err(hinted)?;
    let mut dbs: Vec<Database> = Vec::new();
    let contexts: Vec<_> = match &args.context {
        Some(name) => vec![topology.context(name).ok_or_else(|| {
            let known: Vec<&str> = topology.contexts.iter().map(|c| c.name.as_str()).collect();
            Hint::error(
                format!("context {name} is not in the topology"),
                format!("use one of: {}", known.join(", ")),
            )
        })?],
        None => topology.contexts.iter().collect(),
    };
    for c in contexts {
        for conn in c.databases() {
            if !dbs.iter().any(|d| d.conn.identity() == conn.identity()) {
                dbs.push(Database {
                    name: conn.to_string(),
                    conn: conn.clone(),
                });
            }
        }
    }
    let wanted = if args.per_database {
        Wanted::PerDatabase
    } else {
        Wanted::Auto
    };
    let plan = migration::plan(&m, &dbs, wanted).await.map_err(hinted)?;
    if args.dry_run {
        match g.format {
            Format::Json => print_json(&plan)?,
            _ => print!("{}", describe(&plan)),
        }
        return Ok(super::exit::OK);
    }
    let text = g.format != Format::Json;
    migration::apply(&m, &dbs, &plan, |db, standing| {
        if text && *standing == Standing::Done {
            eprintln!("{db}: done");
        }
    })
    .await
    .map_err(|e| applied_error(e, plan.mode))?;
    match g.format {
        Format::Json => print_json(&serde_json::json!({
            "migration": plan.migration,
            "mode": plan.mode,
            "databases": dbs.iter().map(|d| &d.name).collect::<Vec<_>>(),
            "applied": true,
        }))?,
        _ => println!(
            "migration {} applied on {} database{} ({})",
            plan.migration,
            dbs.len(),
            if dbs.len() == 1 { "" } else { "s" },
            mode_name(plan.mode)
        ),
    }
    Ok(super::exit::OK)
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::AllOrNothing => "all or nothing",
        Mode::PerDatabase => "database by database",
    }
}

fn describe(plan: &migration::Plan) -> String {
    let mut out = format!(
        "migration {}: {} statement{}, {} ({})\n",
        plan.migration,
        plan.statements.len(),
        if plan.statements.len() == 1 { "" } else { "s" },
        mode_name(plan.mode),
        plan.why
    );
    for (i, s) in plan.statements.iter().enumerate() {
        out.push_str(&format!("  {}. {}\n", i + 1, shardline_ddl::plan::short(s)));
    }
    for d in &plan.databases {
        let state = match &d.standing {
            Standing::Done => "done, skipped".to_string(),
            Standing::Resumes { at } => format!("resumes at statement {at}"),
            Standing::ToRun => "to run".to_string(),
        };
        out.push_str(&format!("  {:<48} {state}\n", d.database));
    }
    out
}

fn hinted(e: DdlError) -> anyhow::Error {
    let hint = match &e {
        DdlError::Connect(c) => c.hint(),
        DdlError::NoPreparedTransactions { .. } => "set max_prepared_transactions (such as 10) on every database of the context and restart them, or run with --per-database (resumable, but not all-or-nothing)".into(),
        DdlError::TransactionControl { .. } => "remove BEGIN, COMMIT and the like from the file".into(),
        DdlError::Changed { .. } => "restore the file as it ran there (run it again to finish), or give the new content a new file name".into(),
        DdlError::ReadFile { .. } | DdlError::EmptyMigration { .. } => "pass the path of a file holding SQL statements".into(),
        DdlError::Syntax { .. } => "fix the SQL; it is read with PostgreSQL's own grammar".into(),
        _ => return e.into(),
    };
    Hint::error(e.to_string(), hint)
}

fn applied_error(e: DdlError, mode: Mode) -> anyhow::Error {
    if let DdlError::Statement {
        index, database, ..
    } = &e
    {
        let hint = match mode {
            Mode::AllOrNothing => "no database changed: fix the migration (or what it fails on), then run it again".to_string(),
            Mode::PerDatabase => format!(
                "databases before {database} are done; fix the cause there and run the same file again: it resumes at statement {index} there and skips databases done"
            ),
        };
        return Hint::error(e.to_string(), hint);
    }
    hinted(e)
}
