//! The rules of the `Credentials` contract: API keys and the audit log, one
//! async function each, written against `dyn Store` only.

use std::collections::HashSet;
use std::sync::Arc;

use godel_core::store::{Cursor, Store, StoreError};
use godel_core::{ApiKey, AuditEntry, AuditOutcome, AuditQuery, KeyHash, KeyId, Role, TenantId, Timestamp};

type Db = Arc<dyn Store>;

const T0: Timestamp = Timestamp::from_millis(1_800_000_000_000);

fn at(secs: i64) -> Timestamp {
    Timestamp::from_millis(T0.as_millis() + secs * 1_000)
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

fn key(tenant: &TenantId, name: &str, role: Role, created: Timestamp) -> ApiKey {
    let mut hash = [0u8; 32];
    hash[..16].copy_from_slice(&rand::random::<[u8; 16]>());
    ApiKey {
        id: KeyId::new(),
        name: name.into(),
        tenant: tenant.clone(),
        role,
        hash: KeyHash(hash),
        prefix: "gdl_Ab3dE6fG".into(),
        created_at: created,
        expires_at: None,
        last_used_at: None,
        revoked_at: None,
    }
}

fn entry(
    tenant: &TenantId,
    at: Timestamp,
    action: &str,
    outcome: AuditOutcome,
    credential: Option<&str>,
) -> AuditEntry {
    AuditEntry {
        seq: 0,
        at,
        credential: credential.map(str::to_owned),
        tenant: tenant.clone(),
        role: credential.map(|_| Role::Operator),
        action: action.into(),
        target: Some("0190c0de-0000-7000-8000-000000000000".into()),
        outcome,
        status: if outcome == AuditOutcome::Allowed { 201 } else { 403 },
        request_id: format!("req-{}", at.as_millis()),
        source: "127.0.0.1".into(),
    }
}

async fn actions(store: &Db, query: &AuditQuery) -> Vec<String> {
    store.list_audit(query).await.unwrap().items.into_iter().map(|e| e.action).collect()
}

/// Keys read back exactly as created, by id and by hash across tenants, and
/// list newest first per tenant or all together.
pub(crate) async fn keys_round_trip_and_are_found_by_hash(store: Db) {
    let (a, b) = (tenant("acme"), tenant("globex"));
    assert!(!store.has_keys().await.unwrap());
    let mut first = key(&a, "ci", Role::Submitter, at(1));
    first.expires_at = Some(at(1_000));
    first.last_used_at = Some(at(2));
    let second = key(&a, "ops", Role::Operator, at(5));
    let other = key(&b, "admin", Role::Admin, at(3));
    for k in [&first, &second, &other] {
        store.create_key(k).await.unwrap();
    }
    assert!(store.has_keys().await.unwrap());

    assert_eq!(store.get_key(&first.id).await.unwrap(), first);
    assert_eq!(store.key_by_hash(&other.hash).await.unwrap(), Some(other.clone()));
    assert_eq!(store.key_by_hash(&KeyHash([7; 32])).await.unwrap(), None);
    let missing = KeyId::new();
    assert!(matches!(store.get_key(&missing).await, Err(StoreError::KeyNotFound(id)) if id == missing));

    assert_eq!(store.list_keys(Some(&a)).await.unwrap(), vec![second.clone(), first.clone()]);
    assert_eq!(store.list_keys(Some(&b)).await.unwrap(), vec![other.clone()]);
    assert_eq!(store.list_keys(None).await.unwrap(), vec![second, other, first]);
    assert!(store.list_keys(Some(&tenant("initech"))).await.unwrap().is_empty());
}

/// A key whose id or hash is taken is refused with `Conflict`, and the first one stays.
pub(crate) async fn duplicate_keys_conflict(store: Db) {
    let t = tenant("acme");
    let first = key(&t, "ci", Role::Submitter, at(1));
    store.create_key(&first).await.unwrap();

    let same_id = ApiKey { hash: KeyHash([9; 32]), ..key(&t, "other", Role::Admin, at(2)) };
    let same_id = ApiKey { id: first.id, ..same_id };
    assert!(matches!(store.create_key(&same_id).await, Err(StoreError::Conflict(_))));
    let same_hash = ApiKey { hash: first.hash, ..key(&tenant("globex"), "other", Role::Admin, at(2)) };
    assert!(matches!(store.create_key(&same_hash).await, Err(StoreError::Conflict(_))));

    assert_eq!(store.get_key(&first.id).await.unwrap(), first);
    assert_eq!(store.key_by_hash(&first.hash).await.unwrap(), Some(first.clone()));
    assert!(store.key_by_hash(&KeyHash([9; 32])).await.unwrap().is_none());
    assert!(matches!(store.get_key(&same_hash.id).await, Err(StoreError::KeyNotFound(_))));
    assert_eq!(store.list_keys(None).await.unwrap(), vec![first]);
}

/// Revoking keeps the first `revoked_at`; revoking again changes nothing; the
/// key is still found (and still counts for `has_keys`).
pub(crate) async fn revocation_is_idempotent(store: Db) {
    let t = tenant("acme");
    let k = key(&t, "ci", Role::Submitter, at(1));
    store.create_key(&k).await.unwrap();

    let revoked = store.revoke_key(&k.id, at(10)).await.unwrap();
    assert_eq!(revoked, ApiKey { revoked_at: Some(at(10)), ..k.clone() });
    assert!(!revoked.usable(at(11)));
    assert_eq!(store.revoke_key(&k.id, at(20)).await.unwrap().revoked_at, Some(at(10)));
    assert_eq!(store.revoke_key(&k.id, at(5)).await.unwrap().revoked_at, Some(at(10)));
    assert_eq!(store.key_by_hash(&k.hash).await.unwrap().unwrap().revoked_at, Some(at(10)));
    assert!(store.has_keys().await.unwrap());

    let missing = KeyId::new();
    assert!(matches!(store.revoke_key(&missing, at(10)).await, Err(StoreError::KeyNotFound(id)) if id == missing));
}

/// `expire_key` only ever moves the expiry earlier.
pub(crate) async fn expiry_only_moves_earlier(store: Db) {
    let t = tenant("acme");
    let k = key(&t, "ci", Role::Submitter, at(1));
    store.create_key(&k).await.unwrap();

    assert_eq!(store.expire_key(&k.id, at(50)).await.unwrap().expires_at, Some(at(50)));
    assert_eq!(store.expire_key(&k.id, at(90)).await.unwrap().expires_at, Some(at(50)));
    let expired = store.expire_key(&k.id, at(30)).await.unwrap();
    assert_eq!(expired, ApiKey { expires_at: Some(at(30)), ..k.clone() });
    assert_eq!(store.get_key(&k.id).await.unwrap().expires_at, Some(at(30)));
    assert!(expired.usable(at(29)) && !expired.usable(at(30)));
    assert!(matches!(store.expire_key(&KeyId::new(), at(1)).await, Err(StoreError::KeyNotFound(_))));
}

/// `touch_keys` only ever moves `last_used_at` later, also within one batch,
/// and ignores keys that do not exist.
pub(crate) async fn touch_only_moves_later(store: Db) {
    let t = tenant("acme");
    let (k1, k2) = (key(&t, "one", Role::Viewer, at(1)), key(&t, "two", Role::Viewer, at(2)));
    store.create_key(&k1).await.unwrap();
    store.create_key(&k2).await.unwrap();

    store.touch_keys(&[]).await.unwrap();
    store.touch_keys(&[(k1.id, at(50)), (k1.id, at(30)), (KeyId::new(), at(60))]).await.unwrap();
    assert_eq!(store.get_key(&k1.id).await.unwrap().last_used_at, Some(at(50)));
    assert_eq!(store.get_key(&k2.id).await.unwrap().last_used_at, None);

    store.touch_keys(&[(k1.id, at(40)), (k2.id, at(45))]).await.unwrap();
    assert_eq!(store.get_key(&k1.id).await.unwrap().last_used_at, Some(at(50)));
    assert_eq!(store.get_key(&k2.id).await.unwrap().last_used_at, Some(at(45)));
    store.touch_keys(&[(k1.id, at(70))]).await.unwrap();
    assert_eq!(store.get_key(&k1.id).await.unwrap(), ApiKey { last_used_at: Some(at(70)), ..k1 });
}

/// Audit entries read back exactly, newest first, numbered by the store, and
/// every filter narrows the listing.
pub(crate) async fn audit_lists_newest_first_with_filters(store: Db) {
    let (a, b) = (tenant("acme"), tenant("globex"));
    let written = vec![
        entry(&a, at(1), "tasks.create", AuditOutcome::Allowed, Some("key-1")),
        entry(&a, at(2), "tasks.cancel", AuditOutcome::Denied, Some("key-2")),
        entry(&b, at(3), "keys.create", AuditOutcome::Allowed, Some("jwt:alice")),
        entry(&a, at(4), "auth.failed", AuditOutcome::Denied, None),
        entry(&a, at(5), "tasks_x.create", AuditOutcome::Failed, Some("key-1")),
    ];
    store.append_audit(&written[..2]).await.unwrap();
    store.append_audit(&[]).await.unwrap();
    store.append_audit(&written[2..]).await.unwrap();

    let all = store.list_audit(&AuditQuery::default()).await.unwrap();
    assert!(all.next_cursor.is_none());
    assert_eq!(all.items.len(), 5);
    let seqs: Vec<u64> = all.items.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "newest first with increasing seqs: {seqs:?}");
    for (read, wrote) in all.items.iter().rev().zip(&written) {
        assert_eq!(*read, AuditEntry { seq: read.seq, ..wrote.clone() });
    }

    let q = |f: fn(&mut AuditQuery)| {
        let mut query = AuditQuery::default();
        f(&mut query);
        query
    };
    assert_eq!(
        actions(&store, &q(|q| q.tenant = Some(tenant("acme")))).await,
        ["tasks_x.create", "auth.failed", "tasks.cancel", "tasks.create"]
    );
    assert_eq!(actions(&store, &q(|q| q.tenant = Some(tenant("globex")))).await, ["keys.create"]);
    assert!(actions(&store, &q(|q| q.tenant = Some(tenant("initech")))).await.is_empty());
    assert_eq!(actions(&store, &q(|q| q.since = Some(at(4)))).await, ["tasks_x.create", "auth.failed"]);
    assert_eq!(actions(&store, &q(|q| q.until = Some(at(2)))).await, ["tasks.create"]);
    assert_eq!(actions(&store, &q(|q| q.action = Some("tasks.".into()))).await, ["tasks.cancel", "tasks.create"]);
    assert_eq!(actions(&store, &q(|q| q.action = Some("tasks.create".into()))).await, ["tasks.create"]);
    assert!(actions(&store, &q(|q| q.action = Some("tasks".into()))).await.is_empty());
    assert_eq!(actions(&store, &q(|q| q.outcome = Some(AuditOutcome::Denied))).await, ["auth.failed", "tasks.cancel"]);
    assert_eq!(actions(&store, &q(|q| q.credential = Some("key-1".into()))).await, ["tasks_x.create", "tasks.create"]);
    let combined = q(|q| {
        q.tenant = Some(tenant("acme"));
        q.outcome = Some(AuditOutcome::Denied);
        q.since = Some(at(3));
    });
    assert_eq!(actions(&store, &combined).await, ["auth.failed"]);

    let zero = AuditQuery { limit: 0, ..AuditQuery::default() };
    assert!(matches!(store.list_audit(&zero).await, Err(StoreError::InvalidInput(e)) if e.field == "limit"));
    let huge = AuditQuery { limit: 101, ..AuditQuery::default() };
    assert!(matches!(store.list_audit(&huge).await, Err(StoreError::InvalidInput(e)) if e.field == "limit"));
    let garbage = AuditQuery { cursor: Some("garbage!".into()), ..AuditQuery::default() };
    assert!(matches!(store.list_audit(&garbage).await, Err(StoreError::InvalidInput(e)) if e.field == "cursor"));
}

/// Paging through the audit log neither skips nor repeats an entry, even when
/// entries are appended between pages (they come before the first cursor).
pub(crate) async fn audit_pagination_is_stable(store: Db) {
    let (a, b) = (tenant("acme"), tenant("globex"));
    let batch: Vec<AuditEntry> = (0..25)
        .flat_map(|i| {
            [
                entry(&a, at(i), &format!("tasks.n{i}"), AuditOutcome::Allowed, Some("key-1")),
                entry(&b, at(i), &format!("other.n{i}"), AuditOutcome::Allowed, Some("key-9")),
            ]
        })
        .collect();
    store.append_audit(&batch).await.unwrap();

    let mut seen = Vec::new();
    let mut query = AuditQuery { tenant: Some(a.clone()), limit: 10, ..AuditQuery::default() };
    let mut pages = 0;
    loop {
        let page = store.list_audit(&query).await.unwrap();
        pages += 1;
        seen.extend(page.items.iter().map(|e| e.action.clone()));
        // Appended mid-listing: newer than every cursor handed out, so never on a later page.
        store.append_audit(&[entry(&a, at(100 + pages), "tasks.late", AuditOutcome::Allowed, None)]).await.unwrap();
        match page.next_cursor {
            Some(cursor) => query.cursor = Some(cursor.as_str().to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).rev().map(|i| format!("tasks.n{i}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), 25);
    assert!("garbage!".parse::<Cursor>().is_err());
}

/// Pruning deletes only entries older than the cutoff, oldest first and at
/// most `limit` per call.
pub(crate) async fn audit_prune_is_bounded(store: Db) {
    let t = tenant("acme");
    let entries: Vec<AuditEntry> =
        (0..10).map(|i| entry(&t, at(i), &format!("tasks.n{i}"), AuditOutcome::Allowed, None)).collect();
    store.append_audit(&entries).await.unwrap();

    assert_eq!(store.prune_audit(at(6), 4).await.unwrap(), 4);
    let left = actions(&store, &AuditQuery::default()).await;
    assert_eq!(left.last().map(String::as_str), Some("tasks.n4"));
    assert_eq!(left.len(), 6);
    assert_eq!(store.prune_audit(at(6), 100).await.unwrap(), 2);
    assert_eq!(store.prune_audit(at(6), 100).await.unwrap(), 0);
    assert_eq!(store.prune_audit(at(100), 0).await.unwrap(), 0);
    let left = actions(&store, &AuditQuery::default()).await;
    assert_eq!(left, (6..10).rev().map(|i| format!("tasks.n{i}")).collect::<Vec<_>>());
}
