//! What an import did, for the operator (text) and for `--map-out` (CSV).

use super::collection::Collection;
use anyhow::Context;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub line: usize,
    pub reason: String,
}

/// A legacy document and the row it went into (after merging).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapRow {
    pub source_id: String,
    pub target_id: Uuid,
    pub key: String,
}

/// What writing one group did to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Inserted,
    Updated,
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub collection: Collection,
    pub file: PathBuf,
    pub dry_run: bool,
    /// Documents in the file, rejected ones included.
    pub read: u64,
    /// Documents folded into an earlier document with the same key.
    pub merged: u64,
    pub inserted: u64,
    /// Existing rows that gained something (fields, messages, counters).
    pub updated: u64,
    /// Rows that already held everything (e.g. a second run).
    pub unchanged: u64,
    /// Repairs, by kind.
    pub fixed: BTreeMap<&'static str, u64>,
    /// Other figures, by name (messages stored, events recorded ...).
    pub details: BTreeMap<&'static str, u64>,
    pub rejected: Vec<Rejection>,
    pub map: Vec<MapRow>,
}

impl Summary {
    pub fn new(collection: Collection, file: &Path, dry_run: bool) -> Self {
        Self {
            collection,
            file: file.to_owned(),
            dry_run,
            read: 0,
            merged: 0,
            inserted: 0,
            updated: 0,
            unchanged: 0,
            fixed: BTreeMap::new(),
            details: BTreeMap::new(),
            rejected: Vec::new(),
            map: Vec::new(),
        }
    }

    pub fn fix(&mut self, kind: &'static str) {
        *self.fixed.entry(kind).or_default() += 1;
    }

    pub fn add(&mut self, detail: &'static str, n: u64) {
        *self.details.entry(detail).or_default() += n;
    }

    pub fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Inserted => self.inserted += 1,
            Outcome::Updated => self.updated += 1,
            Outcome::Unchanged => self.unchanged += 1,
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let what = self.collection.name();
        let dry = if self.dry_run { " (dry run: rolled back, nothing written)" } else { "" };
        let _ = writeln!(out, "import {what} from {}{dry}", self.file.display());
        let _ = writeln!(out, "  read       {:>8} documents", self.read);
        let _ = writeln!(out, "  rejected   {:>8}", self.rejected.len());
        let _ = writeln!(out, "  merged     {:>8} documents into one with the same key", self.merged);
        let _ = writeln!(out, "  inserted   {:>8} {what}", self.inserted);
        let _ = writeln!(out, "  updated    {:>8} existing {what}", self.updated);
        let _ = writeln!(out, "  unchanged  {:>8} {what} (already imported)", self.unchanged);
        for (kind, n) in &self.fixed {
            let _ = writeln!(out, "  fixed      {n:>8} {kind}");
        }
        for (name, n) in &self.details {
            let _ = writeln!(out, "  {name}: {n}");
        }
        for rejection in &self.rejected {
            let _ = writeln!(out, "  rejected line {}: {}", rejection.line, rejection.reason);
        }
        out
    }

    /// `source_id,target_id,key`, one line per imported document.
    pub fn write_map(&self, path: &Path) -> anyhow::Result<()> {
        let mut csv = String::from("source_id,target_id,key\n");
        for row in &self.map {
            let _ = writeln!(csv, "{},{},{}", quote(&row.source_id), row.target_id, quote(&row.key));
        }
        std::fs::write(path, csv).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// RFC 4180: keys hold commas (participants keys), so every text field is quoted.
fn quote(field: &str) -> String {
    format!("\"{}\"", field.replace('"', "\"\""))
}
