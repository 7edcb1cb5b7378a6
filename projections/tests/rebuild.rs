//! Rebuilds on a real database: the switched-in table is the freshly migrated one in every
//! name and definition, and holds what the events project to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use colloquy_infra::event_store::{self, StoredEvent};
use colloquy_infra::testing::{eventually, insert_event, TestDatabase};
use colloquy_projections::rebuild::rebuild;
use colloquy_projections::{ApplyError, Projection};
use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A table's shape as the catalog records it, names included.
#[derive(Debug, PartialEq)]
struct Shape {
    /// (name, type, not null, default, identity), in column order.
    columns: Vec<(String, String, bool, Option<String>, String)>,
    /// (name, definition without the index's own name), sorted.
    indexes: Vec<(String, String)>,
    /// (name, type, definition), sorted.
    constraints: Vec<(String, String, String)>,
    /// Names of the sequences the table owns, sorted.
    sequences: Vec<String>,
}

async fn shape(pool: &PgPool, table: &str) -> Shape {
    let columns = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
                a.attidentity::text
           FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap();
    let indexes = sqlx::query_as(
        "SELECT i.relname::text,
                replace(pg_get_indexdef(x.indexrelid), ' INDEX ' || quote_ident(i.relname) || ' ON ', ' INDEX ON ')
           FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
          WHERE x.indrelid = $1::text::regclass
          ORDER BY 1, 2",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap();
    let constraints = sqlx::query_as(
        "SELECT conname::text, contype::text, pg_get_constraintdef(oid) FROM pg_constraint
          WHERE conrelid = $1::text::regclass ORDER BY 1, 2, 3",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap();
    let sequences = sqlx::query_scalar(
        "SELECT s.relname::text FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
          WHERE d.refobjid = $1::text::regclass AND d.deptype IN ('a', 'i') ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
    .unwrap();
    Shape { columns, indexes, constraints, sequences }
}

async fn shapes(pool: &PgPool, tables: &[&str]) -> Vec<(String, Shape)> {
    let mut all = Vec::new();
    for table in tables {
        all.push((table.to_string(), shape(pool, table).await));
    }
    all
}

/// Waits until the commit-order reader (what rebuilds read) sees `count` events: the fence
/// is cluster-wide, so other databases' open transactions may hold them back a moment.
async fn wait_until_readable(pool: &PgPool, count: usize) {
    eventually("the events past the fence", || async {
        let visible = event_store::read_committed(pool, Default::default(), None, 100).await.unwrap();
        (visible.len() == count).then_some(())
    })
    .await;
}

async fn rebuild_ok(pool: &PgPool, projection: &dyn Projection) {
    let table = projection.table();
    rebuild(pool, projection).await.unwrap_or_else(|e| panic!("rebuild {}: {e}", projection.name()));
    let fresh: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("{table}_rebuild"))
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(fresh, None, "{table}_rebuild is left over instead of having become {table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_read_models_keep_the_migrations_names() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    let (user, conversation, message) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    insert_event(
        pool,
        "User",
        user,
        1,
        json!({"UserRegistered": {"user_id": user, "email": "ada@example.com", "full_name": "Ada", "role": "member"}}),
    )
    .await;
    let started = json!({"ConversationStarted": {
        "conversation_id": conversation, "owner_id": user, "title": "t", "kind": "chat", "model": "offline",
        "system_prompt": null
    }});
    insert_event(pool, "Conversation", conversation, 1, started).await;
    insert_event(
        pool,
        "Conversation",
        conversation,
        2,
        json!({"UserMessagePosted": {"message_id": message, "author_id": user, "content": "hello"}}),
    )
    .await;
    wait_until_readable(pool, 3).await;

    let tables = ["rm_users", "rm_conversations", "rm_messages"];
    let migrated = shapes(pool, &tables).await;
    // The migrations' names, so the comparison below cannot pass on an empty catalog.
    let index_names: Vec<&str> =
        migrated.iter().flat_map(|(_, s)| s.indexes.iter().map(|(name, _)| name.as_str())).collect();
    assert_eq!(
        index_names,
        [
            "rm_users_pkey",
            "rm_conversations_owner_activity",
            "rm_conversations_pkey",
            "rm_messages_children",
            "rm_messages_conversation",
            "rm_messages_leaf",
            "rm_messages_pkey"
        ]
    );

    for round in 1..=2 {
        for projection in colloquy_projections::all(&Default::default()) {
            rebuild_ok(pool, projection.as_ref()).await;
        }
        assert_eq!(shapes(pool, &tables).await, migrated, "rebuild {round}: the catalog differs from the migrations'");

        let users: Vec<(Uuid, String, i64)> =
            sqlx::query_as("SELECT user_id, email, version FROM rm_users").fetch_all(pool).await.unwrap();
        assert_eq!(users, [(user, "ada@example.com".to_string(), 1)]);
        let conversations: Vec<(Uuid, Uuid, i64, i64)> =
            sqlx::query_as("SELECT conversation_id, owner_id, message_count, version FROM rm_conversations")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(conversations, [(conversation, user, 1, 2)]);
        let messages: Vec<(Uuid, Uuid, i64, String)> =
            sqlx::query_as("SELECT message_id, conversation_id, sequence, content FROM rm_messages")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(messages, [(message, conversation, 2, "hello".to_string())]);
        // The rebuilt progress went to the live names.
        let progress: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT projection, aggregate_id, last_sequence FROM projection_state ORDER BY 1")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(
            progress,
            [
                ("conversations".to_string(), conversation.to_string(), 2),
                ("messages".to_string(), conversation.to_string(), 2),
                ("shares".to_string(), conversation.to_string(), 2),
                ("usage".to_string(), conversation.to_string(), 2),
                ("users".to_string(), user.to_string(), 1),
            ]
        );
    }
}

/// A read model with every kind of index and constraint a migration might give one.
struct WidgetsProjection;

const WIDGETS: &str = "rm_test_widgets";

#[async_trait]
impl Projection for WidgetsProjection {
    fn name(&self) -> &'static str {
        "test_widgets"
    }

    fn table(&self) -> &'static str {
        WIDGETS
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &["User"]
    }

    async fn apply(&self, conn: &mut PgConnection, table: &str, e: &StoredEvent) -> Result<Option<Uuid>, ApplyError> {
        sqlx::query(&format!("INSERT INTO {table} (widget_id, label, code) VALUES ($1::uuid, $2, $1)"))
            .bind(&e.aggregate_id)
            .bind(&e.event_type)
            .execute(conn)
            .await?;
        Ok(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_index_and_constraint_keeps_its_name() {
    let db = TestDatabase::create().await;
    let pool = &db.pool;
    // A dropped column first, so the copy numbers its columns differently; names unlike
    // those Postgres would generate; two identical indexes; a unique index beside a unique
    // constraint on the same column; an identity column with its sequence.
    sqlx::raw_sql(
        "CREATE TABLE rm_test_widgets
         (
             obsolete  int,
             widget_id uuid   NOT NULL,
             serial_no bigint GENERATED ALWAYS AS IDENTITY,
             label     text   NOT NULL DEFAULT 'none',
             code      text,
             CONSTRAINT widgets_by_id PRIMARY KEY (widget_id),
             CONSTRAINT widget_label_not_blank CHECK (label <> ''),
             CONSTRAINT widget_code_once UNIQUE (code) DEFERRABLE INITIALLY DEFERRED
         );
         ALTER TABLE rm_test_widgets DROP COLUMN obsolete;
         CREATE UNIQUE INDEX widget_code_unique ON rm_test_widgets (code);
         CREATE UNIQUE INDEX widget_coded_label ON rm_test_widgets (lower(label), widget_id) WHERE code IS NOT NULL;
         CREATE INDEX widget_label_a ON rm_test_widgets (label DESC NULLS LAST) INCLUDE (code);
         CREATE INDEX widget_label_b ON rm_test_widgets (label DESC NULLS LAST) INCLUDE (code);
         CREATE INDEX widget_serial ON rm_test_widgets USING hash (serial_no);",
    )
    .execute(pool)
    .await
    .unwrap();
    for n in 0..3 {
        let id = Uuid::new_v4();
        let email = format!("w{n}@example.com");
        insert_event(
            pool,
            "User",
            id,
            1,
            json!({"UserRegistered": {"user_id": id, "email": email, "full_name": "W", "role": "member"}}),
        )
        .await;
    }
    wait_until_readable(pool, 3).await;
    let migrated = shape(pool, WIDGETS).await;
    assert_eq!(migrated.indexes.len(), 7, "{migrated:?}");
    assert_eq!(migrated.constraints.len(), 3, "{migrated:?}");
    assert_eq!(migrated.sequences, ["rm_test_widgets_serial_no_seq"]);

    for round in 1..=2 {
        rebuild_ok(pool, &WidgetsProjection).await;
        assert_eq!(shape(pool, WIDGETS).await, migrated, "rebuild {round}: the catalog differs");
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_test_widgets").fetch_one(pool).await.unwrap();
        assert_eq!(rows, 3);
    }

    // Something LIKE does not copy (a foreign key) stops the switch before the live table
    // is touched.
    sqlx::query(
        "ALTER TABLE rm_test_widgets ADD CONSTRAINT widget_of_user FOREIGN KEY (widget_id) REFERENCES rm_users (user_id) NOT VALID",
    )
    .execute(pool)
    .await
    .unwrap();
    let with_key = shape(pool, WIDGETS).await;
    let err = rebuild(pool, &WidgetsProjection).await.unwrap_err();
    assert!(err.to_string().starts_with("rm_test_widgets: constraint widget_of_user has no counterpart"), "{err}");
    assert_eq!(shape(pool, WIDGETS).await, with_key);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM rm_test_widgets").fetch_one(pool).await.unwrap();
    assert_eq!(rows, 3);
}
