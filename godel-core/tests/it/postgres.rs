//! Checks of the PostgreSQL backend beyond the shared conformance suite:
//! servers starting at once on a fresh schema, the row-level security wall
//! seen by an ordinary role (for tasks, and for keys, the audit log and
//! cluster messages), bad URL options, poll-only mode, and a database
//! restart under an open handle (on a private PostgreSQL instance this test
//! starts itself; the shared server is never restarted).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use godel_core::store::prelude::*;
use godel_core::store::{ClusterMessage, PostgresStore, TaskQuery};
use godel_core::{
    ApiKey, AuditEntry, AuditOutcome, AuditQuery, KeyHash, KeyId, NewTask, Role, StoreError, TenantId, Timestamp,
};
use sqlx::{Connection, PgConnection};

use crate::conformance::{drop_stale_schemas, fresh_schema, postgres_url, service_missing, with_param};

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

/// A URL on a fresh schema of the test server, or `None` (skip) if it does not answer.
async fn fresh_url() -> Option<String> {
    let base = postgres_url();
    if let Err(e) = PgConnection::connect(&base).await {
        return service_missing("PostgreSQL", e);
    }
    drop_stale_schemas(&base).await;
    Some(with_param(&base, "schema", &fresh_schema()))
}

async fn drop_schema(url: &str, schema: &str) {
    let mut conn = PgConnection::connect(&postgres_url()).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(&mut conn).await.unwrap();
    let _ = url;
}

fn schema_of(url: &str) -> String {
    url.rsplit("schema=").next().unwrap().split('&').next().unwrap().to_owned()
}

/// Servers starting at once on an empty schema all open, and each migration
/// is applied exactly once (sqlx's migrator takes an advisory lock; the
/// schema itself is created under one of ours).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_migrate_a_fresh_schema_once() {
    let Some(url) = fresh_url().await else { return };
    let url = with_param(&url, "max_connections", "2");
    let opens: Vec<_> = (0..6).map(|_| PostgresStore::open(&url)).collect();
    let stores: Vec<PostgresStore> =
        futures::future::join_all(opens).await.into_iter().map(|r| r.expect("a concurrent open failed")).collect();
    let schema = schema_of(&url);
    let mut conn = PgConnection::connect(&postgres_url()).await.unwrap();
    let applied: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {schema}._sqlx_migrations"))
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres")).unwrap().count();
    assert_eq!(applied, files as i64, "each migration applied once");
    // Every handle works on the one schema.
    let t = tenant("acme");
    for store in &stores {
        store.enqueue(&t, NewTask::prompt("hello"), T0).await.unwrap();
    }
    assert_eq!(stores[0].depth(&t, T0).await.unwrap().total(), 6);
    for store in &stores {
        store.close().await;
    }
    drop_schema(&url, &schema).await;
}

/// Row-level security holds for an ordinary role even when a query forgets
/// its tenant clause, and the store still works under it (the reclaim
/// sweep included). Superusers bypass RLS, so the test makes its own role.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_is_a_second_wall() {
    let Some((url, schema, role, store)) = OrdinaryRole::fresh_store().await else { return };
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    store.enqueue(&acme, NewTask::prompt("a1"), T0).await.unwrap();
    store.enqueue(&acme, NewTask::prompt("a2"), T0).await.unwrap();
    let theirs = store.enqueue(&globex, NewTask::prompt("g1"), T0).await.unwrap().task;
    // The cross-tenant sweep still moves every tenant's lapsed leases.
    for t in [&acme, &globex] {
        let claim = godel_core::store::ClaimRequest {
            tenant: t.clone(),
            agent: godel_core::AgentId::new("a").unwrap(),
            capabilities: Vec::new(),
            limit: 1,
            lease_for: Duration::from_secs(1),
        };
        assert_eq!(store.claim(&claim, T0).await.unwrap().len(), 1);
    }
    assert_eq!(store.reclaim_expired(T0 + Duration::from_secs(1), 10).await.unwrap().len(), 2);

    // Raw SQL as the role: no tenant set sees nothing; a tenant sees only its
    // own rows, even with no WHERE clause at all.
    let mut conn = role.connect(&schema).await;
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    assert_eq!(count("SELECT count(*) FROM tasks").fetch_one(&mut conn).await.unwrap(), 0);
    assert_eq!(count("SELECT count(*) FROM task_history").fetch_one(&mut conn).await.unwrap(), 0);
    sqlx::query("SELECT set_config('godel.tenant', 'acme', false)").execute(&mut conn).await.unwrap();
    assert_eq!(count("SELECT count(*) FROM tasks").fetch_one(&mut conn).await.unwrap(), 2);
    let touched = sqlx::query("UPDATE tasks SET status = 'cancelled' WHERE id = $1::uuid")
        .bind(theirs.id.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(touched.rows_affected(), 0, "acme changed a globex row");
    let deleted = sqlx::query("DELETE FROM tasks WHERE tenant = 'globex'").execute(&mut conn).await.unwrap();
    assert_eq!(deleted.rows_affected(), 0, "acme deleted globex rows");
    let forged = sqlx::query(
        "INSERT INTO tasks (id, tenant, priority, status, payload, max_attempts, run_at, created_at, updated_at) \
         VALUES (gen_random_uuid(), 'globex', 0, 'pending', '{}', 1, 0, 0, 0)",
    )
    .execute(&mut conn)
    .await;
    let code = forged.unwrap_err().as_database_error().and_then(|e| e.code().map(|c| c.into_owned()));
    assert_eq!(code.as_deref(), Some("42501"), "an insert for another tenant must violate the policy");
    // Moving a row to another tenant is refused too.
    let moved = sqlx::query("UPDATE tasks SET tenant = 'globex'").execute(&mut conn).await;
    assert!(moved.is_err(), "acme moved its rows to globex");
    conn.close().await.unwrap();

    // globex's task is untouched.
    let task = store.get(&globex, theirs.id).await.unwrap();
    assert_eq!(task.status, godel_core::TaskStatus::Pending);
    store.close().await;
    drop_schema(&url, &schema).await;
    role.drop().await;
}

/// API keys and audit entries are walled by tenant like tasks, reached across
/// tenants only by the store's own marked transactions, and the audit log
/// cannot be rewritten; cluster messages are reached only by a node's
/// connections. The store still works under all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_level_security_walls_credentials() {
    let Some((url, schema, role, store)) = OrdinaryRole::fresh_store().await else { return };
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let key = |t: &TenantId, byte: u8| ApiKey {
        id: KeyId::new(),
        name: "ci".into(),
        tenant: t.clone(),
        role: Role::Submitter,
        hash: KeyHash([byte; 32]),
        prefix: "gdl_Ab3dE6fG".into(),
        created_at: T0,
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    };
    let (ours, theirs) = (key(&acme, 1), key(&globex, 2));
    store.create_key(&ours).await.unwrap();
    store.create_key(&theirs).await.unwrap();
    assert_eq!(store.key_by_hash(&theirs.hash).await.unwrap(), Some(theirs.clone()));
    assert_eq!(store.list_keys(None).await.unwrap().len(), 2);
    assert_eq!(store.list_keys(Some(&acme)).await.unwrap(), vec![ours.clone()]);
    store.touch_keys(&[(ours.id, T0), (theirs.id, T0)]).await.unwrap();
    assert_eq!(store.revoke_key(&theirs.id, T0).await.unwrap().revoked_at, Some(T0));
    let entry = |t: &TenantId| AuditEntry {
        seq: 0,
        at: T0,
        credential: None,
        tenant: t.clone(),
        role: None,
        action: "auth.failed".into(),
        target: None,
        outcome: AuditOutcome::Denied,
        status: 401,
        request_id: "r".into(),
        source: "127.0.0.1".into(),
    };
    store.append_audit(&[entry(&acme), entry(&globex), entry(&globex)]).await.unwrap();
    assert_eq!(store.list_audit(&AuditQuery::default()).await.unwrap().items.len(), 3);
    let acme_only = AuditQuery { tenant: Some(acme.clone()), ..AuditQuery::default() };
    assert_eq!(store.list_audit(&acme_only).await.unwrap().items.len(), 1);

    // Raw SQL as the role: nothing without a tenant or a mark; a tenant sees
    // only its own rows and cannot rewrite or delete audit entries.
    let mut conn = role.connect(&schema).await;
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    assert_eq!(count("SELECT count(*) FROM api_keys").fetch_one(&mut conn).await.unwrap(), 0);
    assert_eq!(count("SELECT count(*) FROM audit_log").fetch_one(&mut conn).await.unwrap(), 0);
    assert_eq!(count("SELECT count(*) FROM cluster_messages").fetch_one(&mut conn).await.unwrap(), 0);
    let parked = sqlx::query("INSERT INTO cluster_messages (body) VALUES ('{}')").execute(&mut conn).await;
    assert!(parked.is_err(), "a connection without a node id parked a cluster message");
    sqlx::query("SELECT set_config('godel.tenant', 'acme', false)").execute(&mut conn).await.unwrap();
    assert_eq!(count("SELECT count(*) FROM api_keys").fetch_one(&mut conn).await.unwrap(), 1);
    assert_eq!(count("SELECT count(*) FROM audit_log").fetch_one(&mut conn).await.unwrap(), 1);
    let rewritten = sqlx::query("UPDATE audit_log SET action = 'nothing'").execute(&mut conn).await.unwrap();
    assert_eq!(rewritten.rows_affected(), 0, "an audit entry was rewritten");
    let erased = sqlx::query("DELETE FROM audit_log").execute(&mut conn).await.unwrap();
    assert_eq!(erased.rows_affected(), 0, "a tenant erased its audit entries");
    let forged = sqlx::query(
        "INSERT INTO api_keys (id, hash, name, tenant, role, prefix, created_at) \
         VALUES (gen_random_uuid(), 'ff', 'x', 'globex', 'admin', 'gdl_', 0)",
    )
    .execute(&mut conn)
    .await;
    let code = forged.unwrap_err().as_database_error().and_then(|e| e.code().map(|c| c.into_owned()));
    assert_eq!(code.as_deref(), Some("42501"), "a key for another tenant must violate the policy");
    sqlx::query("SELECT set_config('godel.node', 'a-node', false)").execute(&mut conn).await.unwrap();
    sqlx::query("INSERT INTO cluster_messages (body) VALUES ('{}')").execute(&mut conn).await.unwrap();
    assert_eq!(count("SELECT count(*) FROM cluster_messages").fetch_one(&mut conn).await.unwrap(), 1);
    conn.close().await.unwrap();

    // Retention, a store sweep, still deletes.
    assert_eq!(store.prune_audit(T0 + Duration::from_secs(1), 10).await.unwrap(), 3);
    assert!(store.has_keys().await.unwrap());
    store.close().await;
    drop_schema(&url, &schema).await;
    role.drop().await;
}

/// An ordinary role (neither superuser nor BYPASSRLS) with every right on the
/// tables of a migrated schema: superusers skip row-level security, so the
/// tests of the policies connect as this.
struct OrdinaryRole {
    name: String,
    admin: PgConnection,
}

impl OrdinaryRole {
    /// A fresh schema (its URL and name), a new ordinary role, and a store on
    /// the schema opened as that role; `None` (skip) if the server does not answer.
    async fn fresh_store() -> Option<(String, String, Self, PostgresStore)> {
        let url = fresh_url().await?;
        let schema = schema_of(&url);
        // Migrate as the superuser, then hand the tables to an ordinary role.
        PostgresStore::open(&url).await.unwrap().close().await;
        let role = Self::create(&schema).await;
        let store = PostgresStore::open(&role.url(&url)).await.expect("open as an ordinary role");
        Some((url, schema, role, store))
    }

    async fn create(schema: &str) -> Self {
        let name = format!("godel_rls_{:08x}", rand::random::<u32>());
        let mut admin = PgConnection::connect(&postgres_url()).await.unwrap();
        for sql in [
            format!("CREATE ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS"),
            format!("GRANT USAGE, CREATE ON SCHEMA {schema} TO {name}"),
            format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {name}"),
            format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {name}"),
        ] {
            sqlx::query(&sql).execute(&mut admin).await.unwrap();
        }
        Self { name, admin }
    }

    /// `url`, connecting as this role.
    fn url(&self, url: &str) -> String {
        let as_role = url.replacen("://postgres@", &format!("://{}@", self.name), 1);
        assert_ne!(as_role, url, "the test URL must name the postgres user");
        as_role
    }

    /// A bare connection as this role, on `schema`.
    async fn connect(&self, schema: &str) -> PgConnection {
        let mut conn = PgConnection::connect(&self.url(&postgres_url())).await.unwrap();
        sqlx::query(&format!("SET search_path TO {schema}")).execute(&mut conn).await.unwrap();
        conn
    }

    async fn drop(mut self) {
        for sql in [format!("DROP OWNED BY {}", self.name), format!("DROP ROLE {}", self.name)] {
            sqlx::query(&sql).execute(&mut self.admin).await.unwrap();
        }
    }
}

/// Bad options are `InvalidInput` naming the parameter; a server that does
/// not answer is `Open` with the URL, without its password.
#[tokio::test]
async fn bad_url_options_are_named() {
    let field = |r: Result<std::sync::Arc<dyn Store>, StoreError>| match r {
        Err(StoreError::InvalidInput(e)) => e.field,
        Err(e) => panic!("expected InvalidInput, got {e}"),
        Ok(_) => panic!("expected InvalidInput, got a store"),
    };
    let base = "postgres://postgres@127.0.0.1:5432/test";
    assert_eq!(field(godel_core::store::open(&format!("{base}?max_connections=lots")).await), "max_connections");
    assert_eq!(field(godel_core::store::open(&format!("{base}?acquire_timeout=-1")).await), "acquire_timeout");
    assert_eq!(field(godel_core::store::open(&format!("{base}?schema=a;b")).await), "schema");
    assert_eq!(field(godel_core::store::open(&format!("{base}?listen=sometimes")).await), "listen");
    assert_eq!(field(godel_core::store::open(&format!("{base}?pool=5")).await), "store url");

    // Nothing listens on port 1.
    let closed = "postgresql://godel:hunter2@127.0.0.1:1/test?acquire_timeout=1s";
    match godel_core::store::open(closed).await {
        Err(StoreError::Open { backend, location, .. }) => {
            assert_eq!(backend, "postgres");
            assert_eq!(location, "postgresql://godel:***@127.0.0.1:1/test");
        }
        Err(e) => panic!("expected Open, got {e}"),
        Ok(_) => panic!("opened a store on a closed port"),
    }
}

/// `listen=false` (for connection poolers): no LISTEN connection and no
/// channel, but the handle's wake-ups and broadcasts still reach nodes that listen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_only_mode_sends_but_does_not_listen() {
    let Some(url) = fresh_url().await else { return };
    let listening = PostgresStore::open(&url).await.unwrap();
    let poll_only = PostgresStore::open(&with_param(&url, "listen", "false")).await.unwrap();
    assert!(poll_only.cluster_messages().is_none());
    let mut messages = listening.cluster_messages().unwrap();
    let t = tenant("acme");
    poll_only.enqueue(&t, NewTask::prompt("wake"), T0).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), messages.recv()).await.expect("woken").unwrap();
    assert_eq!(got, ClusterMessage::Wake { tenant: t.clone() });
    poll_only.broadcast(&ClusterMessage::Wake { tenant: tenant("manual") }).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), messages.recv()).await.expect("delivered").unwrap();
    assert_eq!(got, ClusterMessage::Wake { tenant: tenant("manual") });
    // A scheduled task is not ready now: it wakes nobody.
    poll_only.enqueue(&t, NewTask::prompt("later").run_at(T0 + Duration::from_secs(60)), T0).await.unwrap();
    poll_only.broadcast(&ClusterMessage::Wake { tenant: tenant("marker") }).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), messages.recv()).await.expect("delivered").unwrap();
    assert_eq!(got, ClusterMessage::Wake { tenant: tenant("marker") }, "a scheduled task woke a dispatcher");
    listening.close().await;
    poll_only.close().await;
    drop_schema(&url, &schema_of(&url)).await;
}

/// A private PostgreSQL server in a temporary directory, stopped on drop.
struct PrivateServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivateServer {
    /// Creates and starts one, or says why it cannot.
    fn start() -> Result<Self, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("no /usr/lib/postgresql: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|bin| bin.join("initdb").exists())
            .ok_or("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")?;
        let dir = tempfile::Builder::new().prefix("godel-pg-").tempdir().map_err(|e| e.to_string())?;
        // initdb refuses to run as root: the server runs as the postgres user.
        run(Command::new("chown").arg("postgres:postgres").arg(dir.path()))?;
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let server = Self { bin, dir, port };
        server.as_postgres(&["initdb", "-D", &server.data(), "-U", "postgres", "-A", "trust", "--no-sync"])?;
        server.pg_ctl_start()?;
        Ok(server)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let log = self.dir.path().join("server.log").display().to_string();
        self.as_postgres(&["pg_ctl", "-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"])
    }

    fn pg_ctl_stop(&self, mode: &str) -> Result<(), String> {
        self.as_postgres(&["pg_ctl", "-D", &self.data(), "-m", mode, "-w", "stop"])
    }

    fn as_postgres(&self, argv: &[&str]) -> Result<(), String> {
        let program = self.bin.join(argv[0]);
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(&argv[1..])
            .current_dir(Path::new("/")))
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop("immediate");
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Polls `f` until it returns `Some` or the deadline passes.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut f: impl FnMut() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The database restarts under open handles: calls fail with `Unavailable`
/// while it is down, then the same handles recover on their own (the pool
/// reconnects, LISTEN resumes) and every acknowledged task is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_recover_from_a_database_restart() {
    let server = match PrivateServer::start() {
        Ok(server) => server,
        Err(why) => return service_missing::<()>("a private PostgreSQL server", why).unwrap_or(()),
    };
    let url = format!("{}?schema=godel&acquire_timeout=500ms&max_connections=4", server.url());
    let store = PostgresStore::open(&url).await.unwrap();
    let peer = PostgresStore::open(&url).await.unwrap();
    let mut messages = peer.cluster_messages().unwrap();
    let t = tenant("acme");
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        acknowledged.push(store.enqueue(&t, NewTask::prompt(format!("before {i}")), T0).await.unwrap().task.id);
    }
    let batch = (0..30).map(|i| NewTask::prompt(format!("batch {i}"))).collect();
    acknowledged.extend(store.enqueue_batch(&t, batch, T0).await.unwrap().into_iter().map(|e| e.task.id));

    server.pg_ctl_stop("fast").unwrap();
    for _ in 0..3 {
        match store.enqueue(&t, NewTask::prompt("while down"), T0).await {
            Err(e) => assert!(matches!(e, StoreError::Unavailable { .. }), "expected Unavailable, got {e:?}"),
            Ok(_) => panic!("an enqueue succeeded while the database was down"),
        }
    }
    assert!(matches!(store.ping().await, Err(StoreError::Unavailable { .. })));

    server.pg_ctl_start().unwrap();
    eventually("the pool to reconnect", || async { store.ping().await.ok() }).await;
    let listed = eventually("listing to work again", || async {
        store.list(&t, &TaskQuery { limit: 1_000, ..TaskQuery::default() }).await.ok()
    })
    .await;
    let listed: Vec<_> = listed.items.iter().map(|task| task.id).collect();
    assert_eq!(listed, acknowledged, "every acknowledged task survives, in order, and nothing else");

    // LISTEN resumes on its own: an enqueue on one handle wakes the other.
    while messages.try_recv().is_ok() {}
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "LISTEN did not resume");
        if store.enqueue(&t, NewTask::prompt("after"), T0).await.is_err() {
            continue;
        }
        match tokio::time::timeout(Duration::from_millis(200), messages.recv()).await {
            Ok(Ok(got)) => {
                assert_eq!(got, ClusterMessage::Wake { tenant: t.clone() });
                break;
            }
            _ => continue,
        }
    }
    store.close().await;
    peer.close().await;
}
