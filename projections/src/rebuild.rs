//! Rebuilds a projection from the event store alone (Kafka's retention is finite): into a
//! fresh table, then an atomic switch. Readers never see an empty or half-built table; at
//! most they wait for the moment of the switch. The switched-in table keeps the names the
//! migrations gave the live table's indexes and constraints, so later migrations that name
//! them still apply.

use std::collections::BTreeMap;

use colloquy_infra::event_store::{self, LogCursor, StoredEvent};
use sqlx::{PgConnection, PgPool};
use tokio::sync::mpsc;

use crate::projection::{apply_batch, apply_batch_to, ApplyError, HeldProgress, Progress, Projection};
use crate::quarantine::{self, Quarantined};

/// Events read and applied per transaction while building. Pages of 1,000 spent a third of
/// a rebuild's database time on progress rows (2026-11-30, 28k events of 1,000
/// conversations), which larger pages wrote less often and which are now held in memory
/// until the switch-over. A page is also the unit of the set-based insert. At most three
/// pages are in memory (one applied, one waiting, one being read): 5,000 events of about a
/// kilobyte each make that about fifteen megabytes.
const PAGE: i64 = 5_000;

/// Rebuild failures.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// The database failed.
    #[error("rebuild database statement failed")]
    Database(#[from] sqlx::Error),
    /// Reading the event store failed.
    #[error(transparent)]
    EventStore(#[from] event_store::EventStoreError),
    /// An event could not be applied.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// An index, constraint or owned sequence of one table has no counterpart on the other:
    /// the live table's definition changed during the rebuild, or it has something
    /// `LIKE ... INCLUDING ALL` does not copy (a foreign key, a serial column's sequence).
    /// The switch was rolled back; the live table is untouched.
    #[error("{table}: {kind} {name} has no counterpart on {other}; the live table was left as it was")]
    Unmatched {
        /// The table holding it.
        table: String,
        /// `index`, `constraint` or `sequence`.
        kind: String,
        /// Its name.
        name: String,
        /// The table lacking it.
        other: String,
    },
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RebuildReport {
    /// Events read from the store (applied, or skipped for a quarantined aggregate).
    pub events: u64,
    /// Aggregates set aside because one of their events could not be applied: the rebuild
    /// finished without them, and they stay quarantined for the live projection.
    pub quarantined: Vec<Quarantined>,
}

/// Rebuilds `projection` and switches the live table over to the result.
pub async fn rebuild(pool: &PgPool, projection: &dyn Projection) -> Result<RebuildReport, RebuildError> {
    rebuild_paged(pool, projection, PAGE).await
}

/// [`rebuild`], reading and applying `page_size` events per transaction (tests use small pages
/// to cross many page boundaries with few events).
pub async fn rebuild_paged(
    pool: &PgPool,
    projection: &dyn Projection,
    page_size: i64,
) -> Result<RebuildReport, RebuildError> {
    let live = projection.table();
    let fresh = format!("{live}_rebuild");
    let state = format!("{}#rebuild", projection.name());
    let types: Vec<String> = projection.aggregate_types().iter().map(|s| s.to_string()).collect();

    sqlx::query(&format!("DROP TABLE IF EXISTS {fresh}")).execute(pool).await?;
    sqlx::query(&format!("CREATE TABLE {fresh} (LIKE {live} INCLUDING ALL)")).execute(pool).await?;
    sqlx::query("DELETE FROM projection_state WHERE projection = $1").bind(&state).execute(pool).await?;
    quarantine::forget(pool, &state).await?;

    // Build outside any lock, a page per transaction, with the progress held in memory: the
    // pages come in commit order and nobody else writes the fresh table. The next page is
    // read (and decoded) while this one is applied, so the two overlap on two cores.
    let mut progress = HeldProgress::new(&state);
    let (pages, mut ready) = mpsc::channel(1);
    tokio::spawn(read_ahead(pool.clone(), types.clone(), page_size, pages));
    let mut cursor = LogCursor::default();
    let mut events = 0u64;
    while let Some(page) = ready.recv().await {
        let (batch, last) = page?;
        let mut tx = pool.begin().await?;
        // A page is not worth a wait for the disk: a rebuild that stops (a crash, a restart)
        // starts again from an empty table, and the switch-over below commits durably,
        // flushing every page before it.
        sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
        apply_batch_to(&mut tx, projection, &mut Progress::Held(&mut progress), &fresh, &batch).await?;
        tx.commit().await?;
        events += batch.len() as u64;
        cursor = last;
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    progress.store(&mut tx).await?;
    tx.commit().await?;

    // Switch: lock the live table (the live projector waits), catch up with what was
    // committed meanwhile, swap the tables and hand the rebuilt progress to the live name.
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("LOCK TABLE {live} IN ACCESS EXCLUSIVE MODE")).execute(&mut *tx).await?;
    loop {
        let page = event_store::read_committed(&mut *tx, cursor, Some(&types), page_size).await?;
        let Some((_, last)) = page.last() else { break };
        cursor = *last;
        let page: Vec<_> = page.into_iter().map(|(e, _)| e).collect();
        apply_batch(&mut tx, projection, &state, &fresh, &page).await?;
        events += page.len() as u64;
    }
    // Paired before the drop, so a mismatch rolls back with the live table untouched.
    let renames = pair(&owned_objects(&mut tx, live).await?, &owned_objects(&mut tx, &fresh).await?, live, &fresh)?;
    sqlx::query(&format!("DROP TABLE {live}")).execute(&mut *tx).await?;
    sqlx::query(&format!("ALTER TABLE {fresh} RENAME TO {live}")).execute(&mut *tx).await?;
    // The live table's names are free now that it is dropped. A primary key's or unique
    // constraint's index and the constraint share a name: renaming the index renames both.
    for Rename { kind, schema, from, to } in renames {
        let (from, to, schema) = (ident(&from), ident(&to), ident(&schema));
        let sql = match kind.as_str() {
            "index" => format!("ALTER INDEX {schema}.{from} RENAME TO {to}"),
            "sequence" => format!("ALTER SEQUENCE {schema}.{from} RENAME TO {to}"),
            // "constraint"
            _ => format!("ALTER TABLE {live} RENAME CONSTRAINT {from} TO {to}"),
        };
        sqlx::query(&sql).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM projection_state WHERE projection = $1").bind(projection.name()).execute(&mut *tx).await?;
    sqlx::query("UPDATE projection_state SET projection = $1 WHERE projection = $2")
        .bind(projection.name())
        .bind(&state)
        .execute(&mut *tx)
        .await?;
    quarantine::hand_over(&mut tx, &state, projection.name()).await?;
    tx.commit().await?;
    let quarantined = quarantine::list(pool, Some(projection.name())).await?;
    if quarantined.is_empty() {
        tracing::info!(projection = projection.name(), events, "Projection rebuilt and switched over.");
    } else {
        tracing::warn!(
            projection = projection.name(),
            events,
            quarantined = quarantined.len(),
            "Projection rebuilt and switched over without its quarantined aggregates."
        );
    }
    Ok(RebuildReport { events, quarantined })
}

/// A page of events and the cursor after its last one.
type Page = (Vec<StoredEvent>, LogCursor);

/// Reads the committed events of `types` page by page from the start into `pages`, one page
/// ahead of the builder; stops after the last page, after an error (sent on), or when the
/// builder is gone.
async fn read_ahead(pool: PgPool, types: Vec<String>, page_size: i64, pages: mpsc::Sender<Result<Page, RebuildError>>) {
    let mut cursor = LogCursor::default();
    loop {
        let page = match event_store::read_committed(&pool, cursor, Some(&types), page_size).await {
            Ok(page) => page,
            Err(e) => {
                let _ = pages.send(Err(e.into())).await;
                return;
            }
        };
        let Some((_, last)) = page.last() else { return };
        cursor = *last;
        if pages.send(Ok((page.into_iter().map(|(e, _)| e).collect(), cursor))).await.is_err() {
            return;
        }
    }
}

/// An index, constraint or owned sequence of a table, with what it is apart from its name.
#[derive(Debug, sqlx::FromRow)]
struct Owned {
    /// `index`, `constraint` or `sequence`.
    kind: String,
    /// Its schema.
    schema: String,
    /// Its name.
    name: String,
    /// Its definition without its own or its table's name: equal for an object and its
    /// `LIKE ... INCLUDING ALL` copy. `None` when the definition could not be read that way.
    key: Option<String>,
}

/// The indexes, constraints and owned sequences of `table`.
///
/// Each is keyed by its definition rather than by column numbers or creation order: a copy
/// made by `LIKE` numbers its columns afresh (a live table with a dropped column has gaps),
/// and names are exactly what differs. So:
/// - an index by `pg_get_indexdef` minus its head `CREATE [UNIQUE] INDEX <name> ON
///   <schema>.<table> USING ` (uniqueness kept), cut by that exact head's length rather
///   than by searching for the names (a column may contain the table's name). What remains
///   is the access method, columns or expressions with operator classes, collations and
///   ordering, INCLUDE, NULLS NOT DISTINCT, storage parameters and predicate — by column
///   name. The definition of the constraint it backs, if any, is added: a unique index and
///   a unique constraint on the same columns differ only by it, and so do deferrable ones.
///   A definition not starting with that head has no key (and stops the switch);
/// - any other constraint (checks, and not-nulls where the server lists them as
///   constraints) by its type and `pg_get_constraintdef`;
/// - a sequence the table owns (an identity column's) by its column's name and how it is
///   owned (identity or serial).
///
/// Identical keys are possible (two indexes defined alike); [`pair`] matches those in name
/// order, which is harmless since their definitions are the same.
async fn owned_objects(conn: &mut PgConnection, table: &str) -> Result<Vec<Owned>, sqlx::Error> {
    sqlx::query_as(
        "SELECT 'index' AS kind, n.nspname::text AS schema, i.relname::text AS name,
                CASE WHEN starts_with(u.def, h.head)
                     THEN concat_ws(' | ', pg_get_constraintdef(con.oid), u.uniq || substr(u.def, length(h.head) + 1))
                END AS key
           FROM pg_index x
           JOIN pg_class i ON i.oid = x.indexrelid
           JOIN pg_class t ON t.oid = x.indrelid
           JOIN pg_namespace n ON n.oid = t.relnamespace
           LEFT JOIN pg_constraint con
                  ON con.conindid = x.indexrelid AND con.conrelid = x.indrelid AND con.contype IN ('p', 'u', 'x')
          CROSS JOIN LATERAL (SELECT pg_get_indexdef(x.indexrelid) AS def,
                                     CASE WHEN x.indisunique THEN 'UNIQUE ' ELSE '' END AS uniq) u
          CROSS JOIN LATERAL (SELECT format('CREATE %sINDEX %I ON %I.%I USING ', u.uniq, i.relname, n.nspname, t.relname)
                                     AS head) h
          WHERE x.indrelid = $1::text::regclass
         UNION ALL
         SELECT 'constraint', n.nspname::text, c.conname::text, c.contype::text || ' ' || pg_get_constraintdef(c.oid)
           FROM pg_constraint c
           JOIN pg_namespace n ON n.oid = c.connamespace
          WHERE c.conrelid = $1::text::regclass AND c.contype NOT IN ('p', 'u', 'x')
         UNION ALL
         SELECT 'sequence', n.nspname::text, s.relname::text, d.deptype::text || ' ' || a.attname::text
           FROM pg_depend d
           JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
           JOIN pg_namespace n ON n.oid = s.relnamespace
           JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
          WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
            AND d.refobjid = $1::text::regclass AND d.deptype IN ('a', 'i')",
    )
    .bind(table)
    .fetch_all(conn)
    .await
}

/// One copied object to give its live original's name.
#[derive(Debug)]
struct Rename {
    kind: String,
    schema: String,
    from: String,
    to: String,
}

/// Pairs each object of the live table with its copy on the fresh one, by kind and key.
/// Every object must have exactly one counterpart: one missing on either side means the
/// switch would silently lose or gain an index or constraint.
fn pair(live: &[Owned], fresh: &[Owned], live_table: &str, fresh_table: &str) -> Result<Vec<Rename>, RebuildError> {
    let unmatched = |o: &Owned, table: &str, other: &str| RebuildError::Unmatched {
        table: table.to_string(),
        kind: o.kind.clone(),
        name: o.name.clone(),
        other: other.to_string(),
    };
    // Copies by (kind, key), each list in name order; taken from the back, so reversed.
    let mut copies: BTreeMap<(&str, &str), Vec<&Owned>> = BTreeMap::new();
    for o in fresh {
        let key = o.key.as_deref().ok_or_else(|| unmatched(o, fresh_table, live_table))?;
        copies.entry((o.kind.as_str(), key)).or_default().push(o);
    }
    for list in copies.values_mut() {
        list.sort_by(|a, b| b.name.cmp(&a.name));
    }
    let mut originals: Vec<&Owned> = live.iter().collect();
    originals.sort_by(|a, b| a.name.cmp(&b.name));
    let mut renames = Vec::new();
    for o in originals {
        let copy = o
            .key
            .as_deref()
            .and_then(|key| copies.get_mut(&(o.kind.as_str(), key)))
            .and_then(Vec::pop)
            .ok_or_else(|| unmatched(o, live_table, fresh_table))?;
        if copy.name != o.name {
            renames.push(Rename {
                kind: o.kind.clone(),
                schema: copy.schema.clone(),
                from: copy.name.clone(),
                to: o.name.clone(),
            });
        }
    }
    if let Some(extra) = copies.values().flatten().next() {
        return Err(unmatched(extra, fresh_table, live_table));
    }
    Ok(renames)
}

/// `name` as a quoted SQL identifier (catalog names may need quoting).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(kind: &str, name: &str, key: &str) -> Owned {
        Owned { kind: kind.into(), schema: "public".into(), name: name.into(), key: Some(key.into()) }
    }

    #[test]
    fn copies_get_their_originals_names_and_alike_ones_pair_in_order() {
        let live = [
            owned("index", "t_pkey", "PRIMARY KEY (id) | btree (id)"),
            owned("index", "t_b2", "btree (b)"),
            owned("index", "t_b1", "btree (b)"),
            owned("constraint", "t_positive", "c CHECK ((id > 0))"),
        ];
        let fresh = [
            owned("index", "t_rebuild_pkey", "PRIMARY KEY (id) | btree (id)"),
            owned("index", "t_rebuild_b_idx", "btree (b)"),
            owned("index", "t_rebuild_b_idx1", "btree (b)"),
            owned("constraint", "t_positive", "c CHECK ((id > 0))"),
        ];
        let renames = pair(&live, &fresh, "t", "t_rebuild").unwrap();
        let got: Vec<(&str, &str)> = renames.iter().map(|r| (r.from.as_str(), r.to.as_str())).collect();
        assert_eq!(got, [("t_rebuild_b_idx", "t_b1"), ("t_rebuild_b_idx1", "t_b2"), ("t_rebuild_pkey", "t_pkey")]);
    }

    #[test]
    fn an_object_without_counterpart_stops_the_switch() {
        let live = [owned("index", "t_pkey", "btree (id)"), owned("constraint", "t_fk", "f FOREIGN KEY ...")];
        let fresh = [owned("index", "t_rebuild_pkey", "btree (id)")];
        let err = pair(&live, &fresh, "t", "t_rebuild").unwrap_err();
        assert!(matches!(err, RebuildError::Unmatched { ref name, .. } if name == "t_fk"), "{err}");
        let err = pair(&fresh[..0], &fresh, "t", "t_rebuild").unwrap_err();
        assert!(matches!(err, RebuildError::Unmatched { ref name, .. } if name == "t_rebuild_pkey"), "{err}");
        let unreadable = [Owned { key: None, ..owned("index", "t_pkey", "") }];
        assert!(pair(&unreadable, &fresh, "t", "t_rebuild").is_err());
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident(r#"a"b"#), r#""a""b""#);
    }
}
