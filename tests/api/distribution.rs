//! The distribution plan against the schema, on plain PostgreSQL: what Citus would refuse to
//! distribute, or could not keep unique, fails here first (README, "Scaling out"). The plan is
//! read from the migrations' own `create_distributed_table` and `create_reference_table` calls.

use crate::helpers::TestApp;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// Tables the plan leaves on the coordinator: sqlx's own bookkeeping.
const ON_THE_COORDINATOR: &[&str] = &["_sqlx_migrations"];

struct Plan {
    /// Table to its distribution column.
    distributed: BTreeMap<String, String>,
    reference: BTreeSet<String>,
}

/// The quoted arguments of each call of `function` in `sql`.
fn calls(sql: &str, function: &str) -> Vec<Vec<String>> {
    sql.match_indices(&format!("{function}("))
        .map(|(at, call)| {
            let args = &sql[at + call.len()..];
            let args = &args[..args.find(')').unwrap()];
            args.split(',')
                .filter_map(|arg| arg.trim().strip_prefix('\'')?.split('\'').next())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

fn plan() -> Plan {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|entry| entry.unwrap().path()).collect();
    files.sort();
    let (mut distributed, mut reference) = (BTreeMap::new(), BTreeSet::new());
    // In migration order: a later `alter_distributed_table` moves a table to another column.
    for file in files {
        let sql = std::fs::read_to_string(file).unwrap();
        for function in ["create_distributed_table", "alter_distributed_table"] {
            distributed.extend(calls(&sql, function).into_iter().map(|a| (a[0].clone(), a[1].clone())));
        }
        reference.extend(calls(&sql, "create_reference_table").into_iter().map(|a| a[0].clone()));
    }
    Plan { distributed, reference }
}

#[derive(sqlx::FromRow)]
struct Key {
    table_name: String,
    name: String,
    kind: String,
    columns: Vec<String>,
    referenced: Option<String>,
    referenced_columns: Vec<String>,
}

/// Every unique or primary key (constraint or bare unique index) and every foreign key of the
/// public tables, with their columns.
const KEYS: &str = r#"
    SELECT c.conrelid::regclass::text AS table_name, c.conname::text AS name, c.contype::text AS kind,
           array(SELECT a.attname::text FROM unnest(c.conkey) k
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k) AS columns,
           nullif(c.confrelid, 0)::regclass::text AS referenced,
           array(SELECT a.attname::text FROM unnest(coalesce(c.confkey, '{}')) k
                 JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k) AS referenced_columns
    FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
    WHERE t.relnamespace = 'public'::regnamespace AND c.contype IN ('p', 'u', 'x', 'f')
    UNION ALL
    SELECT i.indrelid::regclass::text, i.indexrelid::regclass::text, 'u',
           array(SELECT a.attname::text FROM unnest(i.indkey::int2[]) k
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k), NULL, '{}'
    FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid
    WHERE t.relnamespace = 'public'::regnamespace AND i.indisunique
      AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = i.indexrelid)"#;

#[tokio::test]
async fn every_key_fits_the_distribution_plan() {
    let app = TestApp::spawn().await;
    let plan = plan();
    assert!(plan.distributed.len() >= 5 && plan.reference.len() >= 2, "the plan is read from the migrations");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut wrong = Vec::new();
    for table in &tables {
        let places = [
            plan.distributed.contains_key(table),
            plan.reference.contains(table),
            ON_THE_COORDINATOR.contains(&table.as_str()),
        ];
        if places.iter().filter(|p| **p).count() != 1 {
            wrong.push(format!("{table}: not in the plan exactly once"));
        }
    }
    let keys: Vec<Key> = sqlx::query_as(KEYS).fetch_all(&app.pool).await.unwrap();
    for key in &keys {
        let Some(column) = plan.distributed.get(&key.table_name) else { continue };
        if key.kind != "f" {
            // Citus enforces a unique key shard by shard: only one that holds the distribution
            // column is unique across shards.
            if !key.columns.contains(column) {
                wrong.push(format!(
                    "{}: {} {:?} lacks the distribution column {column}",
                    key.table_name, key.name, key.columns
                ));
            }
            continue;
        }
        let referenced = key.referenced.as_deref().unwrap();
        match plan.distributed.get(referenced) {
            // Between distributed tables only when the distribution columns reference each other.
            Some(referenced_column) => {
                let paired =
                    key.columns.iter().zip(&key.referenced_columns).any(|(c, r)| c == column && r == referenced_column);
                if !paired {
                    wrong.push(format!(
                        "{}: {} does not pair {column} with {referenced}.{referenced_column}",
                        key.table_name, key.name
                    ));
                }
            }
            None if plan.reference.contains(referenced) => {}
            None => {
                wrong.push(format!("{}: {} references {referenced}, which is not shared", key.table_name, key.name))
            }
        }
    }
    for key in keys.iter().filter(|k| k.kind == "f" && plan.reference.contains(&k.table_name)) {
        let referenced = key.referenced.as_deref().unwrap();
        if !plan.reference.contains(referenced) {
            wrong.push(format!("{}: a reference table's {} references {referenced}", key.table_name, key.name));
        }
    }
    assert!(wrong.is_empty(), "the schema does not fit the distribution plan:\n{}", wrong.join("\n"));
}

/// The coalescers keep one lane per shard of `conversations` and of `idempotency_keys`
/// (`upsertd::db::shards`), hashing the key as Citus does: with PostgreSQL's `hashtext` and
/// `uuid_hash`, which holds only while the tables are split by these columns of these types.
#[tokio::test]
async fn lanes_hash_keys_as_postgresql_does() {
    use rand::{Rng, SeedableRng};
    let app = TestApp::spawn().await;
    let plan = plan();
    for (table, column, kind) in [("conversations", "session_id", "text"), ("idempotency_keys", "shard", "uuid")] {
        assert_eq!(plan.distributed.get(table).map(String::as_str), Some(column), "{table}'s lanes hash {column}");
        let found: String = sqlx::query_scalar(
            "SELECT atttypid::regtype::text FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2",
        )
        .bind(table)
        .bind(column)
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert_eq!(found, kind, "{table}.{column}");
    }
    // Every length of tail, several blocks, multibyte characters.
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let keys: Vec<String> = (0..2_000)
        .map(|n| (0..n % 300).map(|_| if rng.gen_ratio(1, 8) { 'é' } else { rng.gen_range('!'..='~') }).collect())
        .collect();
    let uuids: Vec<Uuid> = (0..2_000).map(|_| Uuid::from_u128(rng.gen())).collect();
    let theirs: Vec<(i32, i32)> = sqlx::query_as(
        "SELECT hashtext(k), uuid_hash(u) FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS t(k, u, n) ORDER BY n",
    )
    .bind(&keys)
    .bind(&uuids)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let hash = upsertd::db::shards::hash_bytes;
    let ours: Vec<(i32, i32)> =
        keys.iter().zip(&uuids).map(|(key, id)| (hash(key.as_bytes()), hash(id.as_bytes()))).collect();
    assert_eq!(ours, theirs);
}
