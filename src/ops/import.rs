//! `upsertd import conversations|chats|participations FILE`: loads a mongoexport of the legacy
//! apps. Documents that share a natural key are merged into one row; broken keys are repaired
//! (fresh session ids and tokens, recomputed participants keys); a malformed document is
//! reported with its line and skipped. A second run of the same file changes nothing: rows are
//! upserted on their natural keys, message ids are derived from the message, and each imported
//! document is remembered in `import_sources`, so counters are never added twice.

mod chats;
mod collection;
mod conversations;
mod extjson;
mod participations;
mod source;
mod summary;

use crate::db::Database;
use crate::domain::ParticipantId;
use crate::error::FieldError;
use crate::settings::Settings;
use anyhow::Context;
pub use collection::Collection;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
pub use summary::{MapRow, Outcome, Rejection, Summary};

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// Which legacy collection the file holds.
    #[arg(value_enum)]
    pub collection: Collection,
    /// A mongoexport file: one Extended JSON document a line, or a JSON array.
    pub file: PathBuf,
    /// Read, merge and write everything in a transaction that is rolled back: a summary, no change.
    #[arg(long)]
    pub dry_run: bool,
    /// Documents written per transaction.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    /// Write a CSV of legacy id -> kept row id (source_id,target_id,key) to this file.
    #[arg(long)]
    pub map_out: Option<PathBuf>,
}

/// A document that parsed, with what it was merged by and what had to be repaired.
pub struct Parsed<D> {
    pub key: String,
    pub doc: D,
    pub fixes: Vec<&'static str>,
}

/// One legacy document and where it came from.
pub struct Sourced<D> {
    pub line: usize,
    pub source_id: String,
    pub doc: D,
}

/// The documents that share one natural key, in file order.
pub struct Group<D> {
    pub key: String,
    pub docs: Vec<Sourced<D>>,
}

/// One legacy collection: how a document is read and how a batch of groups is written.
trait Importer {
    type Doc;
    fn parse(&self, doc: &Value) -> Result<Parsed<Self::Doc>, String>;
    /// Writes the groups in the caller's transaction, counting into `summary`.
    async fn write(
        &mut self,
        tx: &mut PgConnection,
        groups: &[Group<Self::Doc>],
        summary: &mut Summary,
    ) -> anyhow::Result<()>;
}

/// The `import` command: exit 0 when every document was imported, 1 when some were rejected;
/// an error (exit 2) when the import could not run.
pub async fn command(settings: &Settings, args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let database = Database::visit(settings).await?;
    let result = async {
        if !settings.no_migrate {
            database.migrate().await?;
        }
        let mut conn = PgConnection::connect_with(&database.options).await.context("cannot connect to the database")?;
        let summary = import_file(&mut conn, args).await;
        conn.close().await.ok();
        summary
    }
    .await;
    database.shutdown().await?;
    let summary = result?;
    print!("{}", summary.render());
    match (&args.map_out, args.dry_run) {
        (Some(path), false) => summary.write_map(path)?,
        (Some(_), true) => println!("dry run: --map-out not written (the ids would not exist)"),
        (None, _) => {}
    }
    Ok(if summary.rejected.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Imports one file on `conn`; what the command runs, and what the tests call.
pub async fn import_file(conn: &mut PgConnection, args: &ImportArgs) -> anyhow::Result<Summary> {
    match args.collection {
        Collection::Conversations => run(conn, args, conversations::Conversations).await,
        Collection::Chats => run(conn, args, chats::Chats).await,
        Collection::Participations => run(conn, args, participations::Participations::default()).await,
    }
}

async fn run<I: Importer>(conn: &mut PgConnection, args: &ImportArgs, mut importer: I) -> anyhow::Result<Summary> {
    let mut summary = Summary::new(args.collection, &args.file, args.dry_run);
    let groups = read_groups(args, &importer, &mut summary)?;
    if !args.dry_run {
        write_batches(conn, args, &mut importer, &groups, &mut summary).await?;
        return Ok(summary);
    }
    let mut tx = conn.begin().await?;
    // One transaction for every batch. On Citus, one that wrote a shard over several
    // connections at once cannot touch it again over one ("placements that were modified over
    // multiple connections"), which a later batch may need: so one connection per node.
    // Plain PostgreSQL keeps the setting as an unused placeholder.
    sqlx::raw_sql("SET LOCAL citus.multi_shard_modify_mode = 'sequential'").execute(&mut *tx).await?;
    let written = write_batches(&mut tx, args, &mut importer, &groups, &mut summary).await;
    tx.rollback().await?;
    written.map(|()| summary)
}

/// Reads every document and groups them by key. Merging needs all documents of a key together
/// (messages are stored in timestamp order), so the file is grouped in memory before writing.
fn read_groups<I: Importer>(
    args: &ImportArgs,
    importer: &I,
    summary: &mut Summary,
) -> anyhow::Result<Vec<Group<I::Doc>>> {
    let mut progress = Progress::new("read");
    let mut groups: Vec<Group<I::Doc>> = Vec::new();
    let mut by_key: HashMap<String, usize> = HashMap::new();
    for document in source::read(&args.file)? {
        summary.read += 1;
        progress.tick(summary.read);
        let parsed = document.value.and_then(|value| Ok((source_id(&value), importer.parse(&value)?)));
        let (source_id, parsed) = match parsed {
            Ok(ok) => ok,
            Err(reason) => {
                summary.rejected.push(Rejection { line: document.line, reason });
                continue;
            }
        };
        for fix in parsed.fixes {
            summary.fix(fix);
        }
        let sourced = Sourced { line: document.line, source_id, doc: parsed.doc };
        match by_key.get(&parsed.key) {
            Some(&index) => {
                summary.merged += 1;
                groups[index].docs.push(sourced);
            }
            None => {
                by_key.insert(parsed.key.clone(), groups.len());
                groups.push(Group { key: parsed.key, docs: vec![sourced] });
            }
        }
    }
    progress.done(summary.read);
    Ok(groups)
}

/// Commits every `batch_size` documents: a failure loses at most one batch, and a re-run
/// skips what was committed.
async fn write_batches<I: Importer>(
    conn: &mut PgConnection,
    args: &ImportArgs,
    importer: &mut I,
    groups: &[Group<I::Doc>],
    summary: &mut Summary,
) -> anyhow::Result<()> {
    let mut progress = Progress::new("written");
    let (mut start, mut written) = (0, 0_u64);
    while start < groups.len() {
        let (mut end, mut docs) = (start, 0_u64);
        while end < groups.len() && (docs == 0 || docs + groups[end].docs.len() as u64 <= args.batch_size) {
            docs += groups[end].docs.len() as u64;
            end += 1;
        }
        let first_line = groups[start].docs[0].line;
        let mut tx = conn.begin().await?;
        importer
            .write(&mut tx, &groups[start..end], summary)
            .await
            .with_context(|| format!("the batch starting at line {first_line} failed; earlier batches are kept"))?;
        tx.commit().await?;
        written += docs;
        progress.tick(written);
        start = end;
    }
    progress.done(written);
    Ok(())
}

/// The legacy `_id`, or for a document without one a hash of its content, so a re-run
/// recognises it either way.
fn source_id(doc: &Value) -> String {
    match extjson::field(doc, "_id").and_then(extjson::id) {
        Some(id) => id,
        None => format!("sha256:{}", hex::encode(Sha256::digest(doc.to_string()))),
    }
}

/// Counts on stderr while it is a terminal; silent in pipes and logs.
struct Progress {
    label: &'static str,
    enabled: bool,
    last: Instant,
}

impl Progress {
    const EVERY: Duration = Duration::from_millis(250);

    fn new(label: &'static str) -> Self {
        Self { label, enabled: std::io::stderr().is_terminal(), last: Instant::now() }
    }

    fn tick(&mut self, count: u64) {
        if self.enabled && self.last.elapsed() >= Self::EVERY {
            self.last = Instant::now();
            let _ = write!(std::io::stderr(), "\r{} {count} documents", self.label);
        }
    }

    fn done(&self, count: u64) {
        if self.enabled {
            let _ = writeln!(std::io::stderr(), "\r{} {count} documents", self.label);
        }
    }
}

/// Why a document is rejected, in the words of the domain type that refused it.
fn reason(error: FieldError) -> String {
    format!("{}: {}", error.field, error.message)
}

/// [`reason`] naming the refused value: the report shows the line, not the document.
fn refused(error: FieldError, value: impl std::fmt::Debug) -> String {
    format!("{}: {value:?} {}", error.field, error.message)
}

fn participant_id(field: &str, raw: &str) -> Result<ParticipantId, String> {
    ParticipantId::parse(field, raw).map_err(|error| refused(error, raw))
}

/// The transaction's `now()`, for an `ON CONFLICT DO UPDATE SET` to stamp: Citus refuses a
/// function that is not IMMUTABLE there (README, "Scaling out"), a bound value it takes.
async fn transaction_time(tx: &mut PgConnection) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    Ok(sqlx::query_scalar!(r#"SELECT now() AS "now!""#).fetch_one(tx).await?)
}

/// Remembers which row each legacy document went into; a document already recorded keeps
/// its first target.
async fn record_sources(
    tx: &mut PgConnection,
    collection: Collection,
    sources: &[String],
    targets: &[uuid::Uuid],
) -> anyhow::Result<()> {
    sqlx::query!(
        "INSERT INTO import_sources (collection, source_id, target_id)
         SELECT $1, s.source_id, s.target_id FROM unnest($2::text[], $3::uuid[]) AS s(source_id, target_id)
         ON CONFLICT (collection, source_id) DO NOTHING",
        collection.name(),
        sources,
        targets,
    )
    .execute(tx)
    .await?;
    Ok(())
}
