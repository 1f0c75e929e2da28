//! `shardline verify`: prove the targets hold exactly the source's rows.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shardline_verify::report::Report;
use shardline_verify::{Level, RowHash, VerifyError, VerifyRequest};

use super::output::{print_json, Hint};
use super::progress::Progress;
use super::{exit, Format, Global};

/// Compare every table and read model of the topology with the source
///
/// Per bucket, a count and a checksum computed inside PostgreSQL on every
/// side; buckets that differ are re-checked, then bisected down to the rows:
/// missing, extra, duplicated, changed (with the columns) or misplaced.
/// Exit status: 0 equal, 1 differences found, 2 could not run.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  shardline verify
  shardline verify --tables payments,refunds --level checksums
  shardline --format json verify > report.json
  shardline --format markdown verify > report.md")]
pub struct Args {
    /// Only these tables or read models (comma-separated) [default: all]
    #[arg(long, value_delimiter = ',', value_name = "T,...")]
    tables: Option<Vec<String>>,
    /// How deep to look: counts per bucket, checksums per bucket, or down to rows
    #[arg(long, value_enum, default_value = "rows")]
    level: LevelArg,
    /// Times differing buckets are compared again before they count (changes in flight settle)
    #[arg(long, default_value_t = 2)]
    rechecks: u32,
    /// Seconds between re-checks
    #[arg(long, default_value_t = 1.0)]
    recheck_secs: f64,
    /// Differences listed per table; the rest are counted
    #[arg(long, default_value_t = 100)]
    max_rows: usize,
    /// Average scan rate limit per side, in rows per second (table scans paced slice by slice)
    #[arg(long, value_name = "R")]
    max_rows_per_sec: Option<u64>,
    /// How rows are hashed: native (hash_record_extended, PostgreSQL 14+, same byte
    /// order everywhere), md5 of the row text (any version, any machine), or auto
    #[arg(long, value_enum, default_value = "auto")]
    row_hash: RowHashArg,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RowHashArg {
    Auto,
    Native,
    Md5,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LevelArg {
    Counts,
    Checksums,
    Rows,
}

pub async fn run(args: Args, g: &Global) -> anyhow::Result<u8> {
    let topology = g.topology()?;
    let request = VerifyRequest {
        tables: args.tables,
        level: match args.level {
            LevelArg::Counts => Level::Counts,
            LevelArg::Checksums => Level::Checksums,
            LevelArg::Rows => Level::Rows,
        },
        rechecks: args.rechecks,
        recheck_delay: Duration::from_secs_f64(args.recheck_secs.max(0.0)),
        max_rows: args.max_rows,
        max_rows_per_sec: args.max_rows_per_sec,
        row_hash: match args.row_hash {
            RowHashArg::Auto => RowHash::Auto,
            RowHashArg::Native => RowHash::Native,
            RowHashArg::Md5 => RowHash::Md5,
        },
        ..VerifyRequest::default()
    };
    let show = g.format == Format::Text && !g.quiet;
    let progress = request.progress.clone();
    let display = Progress::new("verify", 0, "rows", !show);
    let verify = shardline_verify::verify(&topology, &request, |t| {
        if show {
            display.println(&format!(
                "verified {}: {}",
                t.table,
                if t.equal { "equal" } else { "DIFFERS" }
            ));
        }
    });
    let report = display
        .follow(verify, |display| {
            display.set_label(&progress.table.lock().expect("progress lock"));
            (
                progress.rows_scanned.load(Ordering::Relaxed),
                progress.rows_estimated.load(Ordering::Relaxed),
            )
        })
        .await;
    let report = report.map_err(|e: VerifyError| Hint::error(e.to_string(), e.hint()))?;
    match g.format {
        Format::Json => print_json(&report)?,
        Format::Markdown => print!("{}", markdown(&report)),
        Format::Text => print!("{}", text(&report)),
    }
    Ok(if report.equal {
        exit::OK
    } else {
        exit::DIFFERENCES
    })
}

/// The report for people; also what `shardline demo` prints.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    for d in &report.schema_drift {
        out.push_str(&format!("schema drift: {}\n", d.describe()));
    }
    for t in &report.tables {
        let state = if t.equal {
            "equal".to_string()
        } else if t.differing_buckets == 0 && t.counts.is_empty() {
            "SCHEMA DRIFT".to_string()
        } else {
            format!("DIFFERS in {} buckets", t.differing_buckets)
        };
        out.push_str(&format!(
            "{:<32} {:>10} rows source, {:>10} rows targets   {state}\n",
            t.table, t.source_rows, t.target_rows
        ));
        for d in &t.schema_drift {
            out.push_str(&format!(
                "    schema drift: column {} only on the {} ({})\n",
                d.column, d.only_on, d.database
            ));
        }
        for (kind, n) in &t.counts {
            out.push_str(&format!("    {n} {}\n", kind.name()));
        }
        for d in &t.differences {
            out.push_str(&format!(
                "    {} {} on {}",
                d.kind.name(),
                d.key,
                d.database
            ));
            for c in &d.columns {
                out.push_str(&format!(
                    " [{}: {} -> {}]",
                    c.column,
                    c.source.as_deref().unwrap_or("NULL"),
                    c.target.as_deref().unwrap_or("NULL")
                ));
            }
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "{} at level {} in {:.1} s ({})\n",
        if report.equal {
            "EQUAL"
        } else {
            "DIFFERENCES FOUND"
        },
        report.level,
        report.seconds,
        report.consistency
    ));
    out
}

fn markdown(report: &Report) -> String {
    let mut out = format!(
        "# Verification: {}\n\nLevel `{}`, {:.1} s. {}.\n\n| table | source rows | target rows | result |\n|---|---|---|---|\n",
        if report.equal { "equal" } else { "differences found" },
        report.level,
        report.seconds,
        report.consistency
    );
    for t in &report.tables {
        let result = if t.equal {
            "equal".to_string()
        } else {
            t.schema_drift
                .iter()
                .map(|d| {
                    format!(
                        "schema drift: {} only on the {} ({})",
                        d.column, d.only_on, d.database
                    )
                })
                .chain(t.counts.iter().map(|(k, n)| format!("{n} {}", k.name())))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            t.table, t.source_rows, t.target_rows, result
        ));
    }
    if !report.schema_drift.is_empty() {
        out.push_str("\n## Schema drift\n\n| database | table | object | source | target |\n|---|---|---|---|---|\n");
        for d in &report.schema_drift {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                d.database,
                d.table,
                d.object,
                d.source.as_deref().unwrap_or("(missing)"),
                d.target.as_deref().unwrap_or("(missing)")
            ));
        }
    }
    for t in report.tables.iter().filter(|t| !t.differences.is_empty()) {
        out.push_str(&format!(
            "\n## {}\n\n| kind | key | database | columns |\n|---|---|---|---|\n",
            t.table
        ));
        for d in &t.differences {
            let cols: Vec<String> = d
                .columns
                .iter()
                .map(|c| {
                    format!(
                        "{}: `{}` → `{}`",
                        c.column,
                        c.source.as_deref().unwrap_or("NULL"),
                        c.target.as_deref().unwrap_or("NULL")
                    )
                })
                .collect();
            out.push_str(&format!(
                "| {} | `{}` | {} | {} |\n",
                d.kind.name(),
                d.key,
                d.database,
                cols.join("; ")
            ));
        }
    }
    out
}
