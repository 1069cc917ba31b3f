//! `upsertd audit`: does the database still keep the contract's promises? Unique constraints in
//! place and valid, no key duplicated, null or malformed, counters equal to their ledger, message
//! counts right, audio files on disk, no idempotency key stuck. Most of these cannot break while
//! the constraints stand; the audit is for after a manual fix, a restore or an import.

mod checks;

use crate::conversations::audio::AudioStore;
use crate::db::Database;
use crate::settings::Settings;
use anyhow::Context;
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

/// Exit status when a check found something; 2 (could not check) is the caller's error path.
const FOUND_SOMETHING: u8 = 1;
/// How many rows a finding lists in the text report (the JSON report lists all).
const ROWS_SHOWN: usize = 10;

#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Print the report as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Something that breaks an invariant: where it is and which rows hold it.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub table: String,
    pub key: String,
    pub problem: String,
    pub rows: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub clean: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.checks.iter().flat_map(|check| check.findings.iter())
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let status = if check.findings.is_empty() { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "{status}  {}", check.name);
            for finding in &check.findings {
                let _ = writeln!(out, "      {}.{}: {}", finding.table, finding.key, finding.problem);
                let shown = finding.rows.iter().take(ROWS_SHOWN).map(String::as_str).collect::<Vec<_>>();
                if !shown.is_empty() {
                    let more = finding.rows.len().saturating_sub(ROWS_SHOWN);
                    let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
                    let _ = writeln!(out, "        rows: {}{tail}", shown.join(", "));
                }
            }
        }
        let count = self.findings().count();
        let _ = match count {
            0 => writeln!(out, "clean: every check passed"),
            n => writeln!(out, "{n} finding(s)"),
        };
        out
    }
}

/// Runs every check on one connection; audio files are looked for under `data_dir`.
pub async fn run(conn: &mut PgConnection, data_dir: &Path) -> anyhow::Result<Report> {
    // On Citus the views join tables split by different columns (README, "Scaling out"), which
    // takes repartition joins; plain PostgreSQL keeps the setting as an unused placeholder.
    sqlx::query("SET citus.enable_repartition_joins = on").execute(&mut *conn).await?;
    let checks = vec![
        Check { name: "key constraints present and valid", findings: checks::constraints(conn).await? },
        Check { name: "no duplicated key", findings: checks::duplicate_keys(conn).await? },
        Check { name: "no null or malformed key", findings: checks::malformed_keys(conn).await? },
        Check { name: "each participation claims its pair and token", findings: checks::unclaimed_keys(conn).await? },
        Check { name: "no negative counter", findings: checks::negative_counters(conn).await? },
        Check { name: "counters equal the sums of their events", findings: checks::ledger(conn).await? },
        Check { name: "message counts equal the messages", findings: checks::message_counts(conn).await? },
        Check { name: "audio files on disk match their hash", findings: audio_files(conn, data_dir).await? },
        Check {
            name: "no idempotency key stuck past its lease",
            findings: checks::stuck_idempotency_keys(conn).await?,
        },
        Check {
            name: "every counter record has its answer row",
            findings: checks::records_without_answer(conn).await?,
        },
    ];
    let clean = checks.iter().all(|check| check.findings.is_empty());
    Ok(Report { clean, checks })
}

async fn audio_files(conn: &mut PgConnection, data_dir: &Path) -> anyhow::Result<Vec<Finding>> {
    let stored = checks::stored_audio(conn).await?;
    let folder = data_dir.join("audio");
    if stored.is_empty() {
        return Ok(Vec::new());
    }
    if !folder.is_dir() {
        // One finding, not one per file: the likelier cause is a wrong --data-dir.
        return Ok(vec![Finding {
            table: "audio_files".into(),
            key: "sha256".into(),
            problem: format!("{} rows, but there is no folder {} (wrong --data-dir?)", stored.len(), folder.display()),
            rows: stored.into_iter().map(|(id, _)| id.to_string()).collect(),
        }]);
    }
    let store = AudioStore::open(data_dir).with_context(|| format!("cannot open {}", folder.display()))?;
    Ok(tokio::task::spawn_blocking(move || checks::audio_on_disk(&store, stored)).await?)
}

/// The `audit` command: exit 0 when clean, 1 with a finding; an error (exit 2) when it could not check.
pub async fn command(settings: &Settings, args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let database = Database::visit(settings).await?;
    let result = async {
        let mut conn = PgConnection::connect_with(&database.options).await.context("cannot connect to the database")?;
        let report =
            run(&mut conn, &settings.data_dir).await.context("the audit could not finish (run `upsertd migrate`?)");
        conn.close().await.ok();
        report
    }
    .await;
    let label = database.display.clone();
    database.shutdown().await?;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("upsertd audit of {label}");
        print!("{}", report.render());
    }
    Ok(if report.clean { ExitCode::SUCCESS } else { ExitCode::from(FOUND_SOMETHING) })
}
