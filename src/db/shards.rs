//! Which shard of a Citus table a key lives on, so that a coalesced statement can hold the keys
//! of one shard only.
//!
//! A Citus coordinator sends a statement whose rows all live on one shard to that shard as one
//! task, taking its locks in the order the statement names them. A statement whose rows span
//! shards is split into one task per shard, run in parallel and committed in two phases: two of
//! them can lock the same rows in different orders (a distributed deadlock, 40P01 after about
//! 2 s), and each costs a round of the coordinator with every node it touches. So the
//! coalescers keep one lane per shard (README, "Scaling out").
//!
//! Citus places a row of a hash-distributed table by hashing its distribution column with the
//! column type's hash function - for text and uuid, PostgreSQL's `hashtext` and `uuid_hash`,
//! both Bob Jenkins' lookup3 over the value's bytes - and finding the shard whose range holds
//! the hash. The ranges are read once, at startup; the hash
//! is computed here, and checked against the server's own before it is trusted. On plain
//! PostgreSQL there is one shard and nothing is hashed.

use sqlx::PgPool;
use std::sync::Arc;

/// The shards of one table: the lowest hash of each, ascending.
#[derive(Clone, Debug, Default)]
pub struct Shards {
    lowest: Arc<[i32]>,
}

impl Shards {
    /// One shard: plain PostgreSQL, or a table Citus does not split by hash.
    pub fn one() -> Self {
        Self::default()
    }

    /// The shards Citus splits `table` into, as they are now. A shard split or a changed shard
    /// count after startup leaves lanes grouped by the old ranges: still correct, but a batch
    /// may span two shards again until upsertd restarts. Moving shards between nodes (the
    /// rebalancer) changes no range.
    pub async fn load(pool: &PgPool, table: &str) -> Self {
        match Self::read(pool, table).await {
            Ok(shards) => shards,
            Err(error) => {
                let why = "cannot read the shards of the table; its writes coalesce as if it had one";
                tracing::warn!(%error, table, "{why}");
                Self::one()
            }
        }
    }

    async fn read(pool: &PgPool, table: &str) -> anyhow::Result<Self> {
        let mut conn = pool.acquire().await?;
        let citus =
            sqlx::query_scalar!(r#"SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') AS "citus!""#)
                .fetch_one(&mut *conn)
                .await?;
        if !citus {
            return Ok(Self::one());
        }
        // Citus's catalog exists only where the extension does: not checked at compile time.
        let lowest: Vec<i32> = sqlx::query_scalar(
            "SELECT s.shardminvalue::int4 FROM pg_dist_shard s JOIN pg_dist_partition p USING (logicalrelid)
             WHERE s.logicalrelid = $1::regclass AND p.partmethod = 'h' ORDER BY 1",
        )
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        let probes = ["", "a", "abcd", "abcdefghijkl", "abcdefghijklm", "session-0001", "héllo wörld ✓"];
        let uuids: Vec<uuid::Uuid> = (0..probes.len() as u128)
            .map(|n| uuid::Uuid::from_u128(n.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)))
            .collect();
        let theirs = sqlx::query!(
            r#"SELECT hashtext(p) AS "text!", uuid_hash(u) AS "uuid!"
               FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS t(p, u, n) ORDER BY n"#,
            &probes as &[&str],
            &uuids,
        )
        .fetch_all(&mut *conn)
        .await?;
        let agree = probes.iter().zip(&uuids).zip(&theirs).all(|((probe, uuid), theirs)| {
            hash_bytes(probe.as_bytes()) == theirs.text && hash_bytes(uuid.as_bytes()) == theirs.uuid
        });
        anyhow::ensure!(agree, "the server hashes differently (a big-endian server?)");
        Ok(Self { lowest: lowest.into() })
    }

    /// A table split at these lowest hashes, for tests.
    pub fn split_at(lowest: Vec<i32>) -> Self {
        Self { lowest: lowest.into() }
    }

    /// The shard (its index in the table's ranges) that holds `key`: a text's bytes, or a
    /// uuid's 16.
    pub fn of(&self, key: &[u8]) -> usize {
        if self.lowest.len() < 2 {
            return 0;
        }
        let hash = hash_bytes(key);
        self.lowest.partition_point(|lowest| *lowest <= hash).saturating_sub(1)
    }
}

/// PostgreSQL's `hash_bytes`, as `hashtext` (a text under a deterministic collation) and
/// `uuid_hash` apply it: lookup3 (public domain) with PostgreSQL's seed, always finalised, read
/// little-endian as PostgreSQL does on the machines upsertd runs on ([`Shards::load`] checks).
pub fn hash_bytes(key: &[u8]) -> i32 {
    let seed = 0x9e37_79b9_u32.wrapping_add(key.len() as u32).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (seed, seed, seed);
    let word = |bytes: &[u8]| u32::from_le_bytes(bytes.try_into().expect("four bytes"));
    let mut blocks = key.chunks_exact(12);
    for block in &mut blocks {
        a = a.wrapping_add(word(&block[0..4]));
        b = b.wrapping_add(word(&block[4..8]));
        c = c.wrapping_add(word(&block[8..12]));
        mix(&mut a, &mut b, &mut c);
    }
    // The last 0-11 bytes, zero-padded; the lowest byte of c is left to the length.
    let mut last = [0u8; 12];
    last[..blocks.remainder().len()].copy_from_slice(blocks.remainder());
    a = a.wrapping_add(word(&last[0..4]));
    b = b.wrapping_add(word(&last[4..8]));
    c = c.wrapping_add(word(&last[8..12]) << 8);
    finish(&mut a, &mut b, &mut c);
    c as i32
}

fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    for (r1, r2, r3) in [(4, 6, 8), (16, 19, 4)] {
        *a = a.wrapping_sub(*c) ^ c.rotate_left(r1);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a) ^ a.rotate_left(r2);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b) ^ b.rotate_left(r3);
        *b = b.wrapping_add(*a);
    }
}

fn finish(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(14));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(11));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(25));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(16));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(4));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(14));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(24));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each from PostgreSQL 15's `SELECT hashtext(...)`: every length of tail, a second block,
    /// multibyte UTF-8, a long key.
    #[test]
    fn text_hashes_as_postgresql_hashes_it() {
        let long = "x".repeat(200);
        let known: [(&str, i32); 13] = [
            ("", -1477818771),
            ("a", 1075015857),
            ("ab", 1718550461),
            ("abc", -785388649),
            ("abcd", -393934804),
            ("abcde", -445659580),
            ("abcdefgh", -1960928205),
            ("abcdefghijk", -1483803693),
            ("abcdefghijkl", -1586087212),
            ("abcdefghijklm", 405849808),
            ("session-0001", 1046019063),
            ("héllo wörld ✓", 1332018444),
            (&long, 1341586837),
        ];
        for (text, hash) in known {
            assert_eq!(hash_bytes(text.as_bytes()), hash, "hashtext({text:?})");
        }
    }

    #[test]
    fn a_key_falls_in_the_range_that_holds_its_hash() {
        // Four ranges as Citus makes them: [MIN, -2^30), [-2^30, 0), [0, 2^30), [2^30, MAX].
        let shards = Shards::split_at(vec![i32::MIN, -(1 << 30), 0, 1 << 30]);
        // hashtext: "a" 1075015857, "abc" -785388649, "abcd" -393934804, "" -1477818771,
        // "abcdefghijklm" 405849808.
        assert_eq!(shards.of(b"a"), 3);
        assert_eq!(shards.of(b"abc"), 1);
        assert_eq!(shards.of(b"abcd"), 1);
        assert_eq!(shards.of(b""), 0);
        assert_eq!(shards.of(b"abcdefghijklm"), 2);
        assert_eq!(Shards::one().of(b"a"), 0, "one shard: everything in it");
    }
}
