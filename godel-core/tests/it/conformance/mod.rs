//! The store conformance suite: one async function per rule of the store
//! contract (in `rules`, and in `credentials` for keys and the audit log),
//! stamped out by [`conformance!`] once per backend so a failure reads
//! `sqlite::claim_is_exclusive`. Every test gets a fresh
//! namespace: a new memory store, a new SQLite file in a temporary directory,
//! a fresh PostgreSQL schema (with a second handle on it as another node).
//! `model` checks random sequences of calls against a reference model of
//! the contract, on the same fixtures.

mod credentials;
mod model;
mod quarantine;
mod rules;

use std::sync::Arc;

#[cfg(feature = "postgres")]
use godel_core::store::PostgresStore;
#[cfg(feature = "redis")]
use godel_core::store::RedisStore;
#[cfg(feature = "sqlite")]
use godel_core::store::SqliteStore;
use godel_core::store::{MemoryStore, Store};
use tempfile::TempDir;

/// A store for one test, and whatever must live as long as it does.
pub(crate) struct Fixture {
    pub(crate) store: Arc<dyn Store>,
    /// A second handle on the same namespace, as another node would open it;
    /// `None` for single-node backends.
    pub(crate) peer: Option<Arc<dyn Store>>,
    /// How to damage rows behind the store's back; `None` for memory, which
    /// holds values, not stored text.
    pub(crate) raw: Option<Raw>,
    _dir: Option<TempDir>,
}

/// A backend reached through its own client rather than the store, to write
/// what Godel never would.
#[derive(Clone, Debug)]
pub(crate) enum Raw {
    #[cfg(feature = "sqlite")]
    Sqlite(std::path::PathBuf),
    #[cfg(feature = "postgres")]
    Postgres { url: String, schema: String },
    #[cfg(feature = "redis")]
    Redis { url: String, prefix: String },
}

impl Raw {
    /// Overwrites a task's payload with text that is not JSON.
    pub(crate) async fn corrupt_payload(&self, tenant: &godel_core::TenantId, id: godel_core::TaskId) {
        let _ = tenant;
        match self {
            #[cfg(feature = "sqlite")]
            Raw::Sqlite(path) => {
                let url = format!("sqlite://{}", path.display());
                let pool = sqlx::SqlitePool::connect(&url).await.expect("open the SQLite file");
                let done = sqlx::query("UPDATE tasks SET payload = '{not json' WHERE id = ?")
                    .bind(id.to_string())
                    .execute(&pool)
                    .await
                    .expect("corrupt a payload");
                assert_eq!(done.rows_affected(), 1);
                pool.close().await;
            }
            #[cfg(feature = "postgres")]
            Raw::Postgres { url, schema } => {
                let pool = sqlx::PgPool::connect(url).await.expect("connect to PostgreSQL");
                let sql = format!("UPDATE {schema}.tasks SET payload = '{{not json' WHERE id = $1::uuid");
                let done = sqlx::query(&sql).bind(id.to_string()).execute(&pool).await.expect("corrupt a payload");
                assert_eq!(done.rows_affected(), 1);
                pool.close().await;
            }
            #[cfg(feature = "redis")]
            Raw::Redis { url, prefix } => {
                use deadpool_redis::redis;
                let client = redis::Client::open(url.as_str()).expect("a Redis URL");
                let mut conn = client.get_multiplexed_async_connection().await.expect("connect to Redis");
                let key = format!("{prefix}:{tenant}:t:{id}");
                let _: i64 = redis::cmd("HSET")
                    .arg(&key)
                    .arg("pay")
                    .arg("{not json")
                    .query_async(&mut conn)
                    .await
                    .expect("corrupt a payload");
            }
        }
    }
}

pub(crate) async fn memory() -> Option<Fixture> {
    Some(Fixture { store: Arc::new(MemoryStore::new()), peer: None, raw: None, _dir: None })
}

#[cfg(feature = "sqlite")]
pub(crate) async fn sqlite() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("godel.db");
    let store = SqliteStore::open(&path).await.expect("open sqlite store");
    Some(Fixture { store: Arc::new(store), peer: None, raw: Some(Raw::Sqlite(path)), _dir: Some(dir) })
}

#[cfg(feature = "postgres")]
/// The PostgreSQL server the suite uses: `GODEL_TEST_POSTGRES_URL`, or the local default.
pub(crate) fn postgres_url() -> String {
    service_url("GODEL_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
}

#[cfg(feature = "postgres")]
/// `url` with one more query parameter.
pub(crate) fn with_param(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

#[cfg(feature = "postgres")]
/// A fresh schema name for one test, `godel_t_<unix seconds>_<random>`: the
/// time lets a later run drop what an earlier run left behind.
pub(crate) fn fresh_schema() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("godel_t_{secs}_{:08x}", rand::random::<u32>())
}

#[cfg(feature = "postgres")]
/// Drops the test schemas older than ten minutes, once per test process, so
/// that schemas do not pile up in the shared test database (a fixture cannot
/// drop its own: the suite's fixtures have no teardown).
pub(crate) async fn drop_stale_schemas(url: &str) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let Ok(pool) = sqlx::PgPool::connect(url).await else { return };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let names: Vec<String> =
            sqlx::query_scalar("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'godel\\_t\\_%'")
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
        for name in names {
            let born = name.split('_').nth(2).and_then(|s| s.parse::<u64>().ok()).unwrap_or(now);
            if now.saturating_sub(born) > 600 {
                // Another process may be dropping it too; either way it goes.
                let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).execute(&pool).await;
            }
        }
        pool.close().await;
    })
    .await;
}

#[cfg(feature = "postgres")]
/// Two handles (two nodes) on a fresh schema of the test PostgreSQL server.
pub(crate) async fn postgres() -> Option<Fixture> {
    let base = postgres_url();
    drop_stale_schemas(&base).await;
    let schema = fresh_schema();
    let url = with_param(&base, "schema", &schema);
    let store = match PostgresStore::open(&url).await {
        Ok(store) => store,
        Err(e @ godel_core::StoreError::Open { .. }) => return service_missing("PostgreSQL", e),
        Err(e) => panic!("opening the PostgreSQL store failed: {e}"),
    };
    let peer = PostgresStore::open(&url).await.expect("open a second PostgreSQL handle");
    let raw = Raw::Postgres { url: base, schema };
    Some(Fixture { store: Arc::new(store), peer: Some(Arc::new(peer)), raw: Some(raw), _dir: None })
}

#[cfg(feature = "redis")]
/// The Redis server the suite uses: `GODEL_TEST_REDIS_URL`, or the local default.
pub(crate) fn redis_url() -> String {
    service_url("GODEL_TEST_REDIS_URL", "redis://127.0.0.1:6379")
}

#[cfg(feature = "redis")]
/// Deletes the keys of test prefixes older than ten minutes, once per test
/// process, so that they do not pile up in the shared test server (the
/// suite's fixtures have no teardown).
async fn delete_stale_redis_prefixes(url: &str) {
    use deadpool_redis::redis;
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let Ok(client) = redis::Client::open(url.split('?').next().unwrap_or(url)) else { return };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else { return };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("godel-t-*")
                .arg("COUNT")
                .arg(1_000)
                .query_async(&mut conn)
                .await
            else {
                return;
            };
            let stale: Vec<&String> = keys
                .iter()
                .filter(|k| {
                    k.split('-')
                        .nth(2)
                        .and_then(|s| s.parse::<u64>().ok())
                        .is_some_and(|born| now.saturating_sub(born) > 600)
                })
                .collect();
            if !stale.is_empty() {
                let _: Result<i64, _> = redis::cmd("UNLINK").arg(&stale).query_async(&mut conn).await;
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    })
    .await;
}

#[cfg(feature = "redis")]
/// Two handles (two nodes) on a fresh key prefix of the test Redis server,
/// `godel-t-<unix seconds>-<random>`: the time lets a later run delete what
/// an earlier run left behind.
pub(crate) async fn redis() -> Option<Fixture> {
    let base = redis_url();
    delete_stale_redis_prefixes(&base).await;
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let sep = if base.contains('?') { '&' } else { '?' };
    let prefix = format!("godel-t-{secs}-{:08x}", rand::random::<u32>());
    let url = format!("{base}{sep}prefix={prefix}");
    let store = match RedisStore::open(&url).await {
        Ok(store) => store,
        Err(e @ (godel_core::StoreError::Unavailable { .. } | godel_core::StoreError::Open { .. })) => {
            return service_missing("Redis", e);
        }
        Err(e) => panic!("opening the Redis store failed: {e}"),
    };
    let peer = RedisStore::open(&url).await.expect("open a second Redis handle");
    let raw = Raw::Redis { url: base.split('?').next().unwrap_or(&base).to_owned(), prefix };
    Some(Fixture { store: Arc::new(store), peer: Some(Arc::new(peer)), raw: Some(raw), _dir: None })
}

#[cfg(any(feature = "postgres", feature = "redis"))]
/// The URL of a service the suite needs: `var` if set, else `default`.
pub(crate) fn service_url(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

#[cfg(any(feature = "postgres", feature = "redis"))]
/// What to do when a service does not answer: locally, skip with a printed
/// reason; under `GODEL_TEST_REQUIRE_SERVICES=1` (CI), fail.
#[allow(clippy::print_stderr, reason = "a skipped test says why on the test's output")]
pub(crate) fn service_missing<T>(service: &str, why: impl std::fmt::Display) -> Option<T> {
    if std::env::var("GODEL_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
        panic!("{service} is required (GODEL_TEST_REQUIRE_SERVICES=1) but unavailable: {why}");
    }
    eprintln!("skipping: {service} unavailable: {why}");
    None
}

/// Stamps out one `#[tokio::test]` per rule for a backend. A fixture that
/// returns `None` (its service is missing) skips the test after printing why.
macro_rules! conformance {
    ($backend:ident => $fixture:path) => {
        mod $backend {
            conformance!(@rules rules $fixture;
                claim_is_exclusive,
                strict_priority_order,
                claim_respects_capabilities,
                scheduled_tasks_wait_for_run_at,
                stale_leases_are_fenced,
                expired_leases_are_reclaimed,
                failures_back_off_then_dead_letter,
                cancel_pending_and_running,
                purge_refuses_live_tasks,
                idempotency_keys_return_the_first_task,
                text_with_nul_is_refused,
                depth_is_exact_after_every_transition,
                tenants_are_walls,
                pagination_neither_skips_nor_repeats,
                bad_listing_input_is_rejected,
                dead_letters_replay_one_and_in_bulk,
                replay_if_refuses_other_statuses,
                output_is_recorded_per_attempt,
                release_keeps_the_attempt_and_the_place,
                batches_are_atomic_and_fenced_per_task,
                write_batch_is_fenced_per_entry,
                repeated_batch_entries_act_in_turn,
                large_batches_keep_order_and_keys,
                counts_for_health_are_exact,
                task_fields_round_trip,
                sessions_are_saved_and_scoped,
                history_records_every_transition,
                registry_members_expire_and_are_scoped,
                spend_adds_up_per_tenant_and_period,
            );
            conformance!(@rules credentials $fixture;
                keys_round_trip_and_are_found_by_hash,
                duplicate_keys_conflict,
                revocation_is_idempotent,
                expiry_only_moves_earlier,
                touch_only_moves_later,
                audit_lists_newest_first_with_filters,
                audit_pagination_is_stable,
                audit_prune_is_bounded,
            );
            conformance!(@raw quarantine $fixture;
                a_corrupt_row_never_blocks_a_claim,
                listings_name_corrupt_rows_and_keep_paging,
            );
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster_messages_reach_other_nodes_only() {
                let Some(fixture) = $fixture().await else { return };
                crate::conformance::rules::cluster_messages_reach_other_nodes_only(fixture.store.clone(), fixture.peer.clone()).await;
            }
        }
    };
    (@raw $module:ident $fixture:path; $($rule:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $rule() {
                let Some(fixture) = $fixture().await else { return };
                crate::conformance::$module::$rule(fixture.store.clone(), fixture.raw.clone()).await;
            }
        )*
    };
    (@rules $module:ident $fixture:path; $($rule:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $rule() {
                let Some(fixture) = $fixture().await else { return };
                crate::conformance::$module::$rule(fixture.store.clone()).await;
            }
        )*
    };
}

conformance!(memory => crate::conformance::memory);
#[cfg(feature = "sqlite")]
conformance!(sqlite => crate::conformance::sqlite);
#[cfg(feature = "postgres")]
conformance!(postgres => crate::conformance::postgres);
#[cfg(feature = "redis")]
conformance!(redis => crate::conformance::redis);
