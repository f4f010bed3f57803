//! SQLite-specific behaviour: reopening keeps data, and a damaged or
//! unreadable file gives an error naming it instead of a panic.

use godel_core::store::{self, SqliteStore, StoreError, TaskStore};
use godel_core::{NewTask, TaskStatus, TenantId, Timestamp};

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

#[tokio::test]
async fn reopening_keeps_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("godel.db");
    let tenant = TenantId::default_tenant();
    let store = SqliteStore::open(&path).await.unwrap();
    let ids: Vec<_> = (0..50).map(|i| NewTask::prompt(format!("task {i}"))).collect::<Vec<_>>();
    let enqueued = store.enqueue_batch(&tenant, ids, T0).await.unwrap();
    store.close().await;

    // Opening twice more also proves migrations are idempotent.
    for _ in 0..2 {
        let store = store::open(&format!("sqlite://{}", path.display())).await.unwrap();
        assert_eq!(store.backend(), "sqlite");
        for e in &enqueued {
            assert_eq!(store.get(&tenant, e.task.id).await.unwrap(), e.task);
        }
        assert_eq!(store.counts(&tenant, T0).await.unwrap().status(TaskStatus::Pending), 50);
    }
}

#[tokio::test]
async fn a_corrupt_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Open { backend: "sqlite", ref location, .. } if *location == path.display().to_string())
    );
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[tokio::test]
async fn a_directory_in_place_of_the_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("is-a-dir.db");
    std::fs::create_dir(&path).unwrap();
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains("is-a-dir.db"), "{err}");
}

#[tokio::test]
async fn a_database_from_an_unknown_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.close().await;
    // Pretend a newer Godel applied a migration this build does not know.
    let pool = sqlx_pool(&path).await;
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99999999999999, 'future', 1, x'00', 0)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let err = SqliteStore::open(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
}

#[tokio::test]
async fn bad_store_urls_are_invalid_input() {
    for url in ["nope", "postgress://x", "sqlite://", "redis-ish:/x"] {
        let err = store::open(url).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidInput(ref e) if e.field == "store url"), "{url}: {err:?}");
    }
    assert_eq!(store::open("memory://").await.unwrap().backend(), "memory");
}

async fn sqlx_pool(path: &std::path::Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect_with(sqlx::sqlite::SqliteConnectOptions::new().filename(path)).await.unwrap()
}
