//! The clauses that listings, bulk replay and purge append to their
//! statements: filters and pages, written once for both SQL backends over
//! sqlx's [`QueryBuilder`]. The few places where the two dialects differ are
//! the methods of [`Dialect`].

use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::store::sql::{Corrupt, Decoded, split};
use crate::store::{Cursor, Page, SessionQuery, SortOrder, TaskFilter, TaskQuery};
use crate::task::Task;

/// How a SQL backend writes what the shared clauses need.
pub(crate) trait Dialect: Database {
    /// What makes a text parameter compare with a uuid column: `::uuid` or nothing.
    const UUID: &'static str;

    /// ` AND {column} IN (…)` for text values.
    fn push_in_text(qb: &mut QueryBuilder<'_, Self>, column: &str, values: Vec<&'static str>);

    /// ` AND {column} IN (…)` for priority ranks.
    fn push_in_ranks(qb: &mut QueryBuilder<'_, Self>, column: &str, ranks: Vec<i16>);
}

#[cfg(feature = "sqlite")]
impl Dialect for sqlx::Sqlite {
    const UUID: &'static str = "";

    fn push_in_text(qb: &mut QueryBuilder<'_, Self>, column: &str, values: Vec<&'static str>) {
        qb.push(format!(" AND {column} IN ("));
        let mut list = qb.separated(", ");
        for value in values {
            list.push_bind(value);
        }
        qb.push(")");
    }

    fn push_in_ranks(qb: &mut QueryBuilder<'_, Self>, column: &str, ranks: Vec<i16>) {
        qb.push(format!(" AND {column} IN ("));
        let mut list = qb.separated(", ");
        for rank in ranks {
            list.push_bind(rank);
        }
        qb.push(")");
    }
}

#[cfg(feature = "postgres")]
impl Dialect for sqlx::Postgres {
    const UUID: &'static str = "::uuid";

    fn push_in_text(qb: &mut QueryBuilder<'_, Self>, column: &str, values: Vec<&'static str>) {
        qb.push(format!(" AND {column} = ANY(")).push_bind(values).push(")");
    }

    fn push_in_ranks(qb: &mut QueryBuilder<'_, Self>, column: &str, ranks: Vec<i16>) {
        qb.push(format!(" AND {column} = ANY(")).push_bind(ranks).push(")");
    }
}

/// Appends ` AND …` for each constraint of `filter`.
pub(crate) fn push_filter<'a, DB>(qb: &mut QueryBuilder<'a, DB>, filter: &TaskFilter)
where
    DB: Dialect,
    String: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    if !filter.statuses.is_empty() {
        DB::push_in_text(qb, "status", filter.statuses.iter().map(|s| s.as_str()).collect());
    }
    if !filter.priorities.is_empty() {
        DB::push_in_ranks(qb, "priority", filter.priorities.iter().map(|p| i16::from(p.rank())).collect());
    }
    if let Some(agent) = &filter.agent {
        qb.push(" AND agent_id = ").push_bind(agent.as_str().to_owned());
    }
    if let Some(parent) = filter.parent {
        qb.push(" AND parent_id = ").push_bind(parent.to_string()).push(DB::UUID);
    }
    if let Some(t) = filter.created_after {
        qb.push(" AND created_at >= ").push_bind(t.as_millis());
    }
    if let Some(t) = filter.created_before {
        qb.push(" AND created_at < ").push_bind(t.as_millis());
    }
}

/// Appends the page clause of a listing: after the cursor's position
/// (`after`, from [`TaskQuery::validate`]), in the query's order, one row
/// more than the page holds so that [`page`] can tell whether another follows.
pub(crate) fn push_page<'a, DB>(qb: &mut QueryBuilder<'a, DB>, query: &TaskQuery, after: Option<i64>)
where
    DB: Database,
    i64: Encode<'a, DB> + Type<DB>,
{
    let (op, dir) = match query.order {
        SortOrder::Ascending => (" > ", " ASC"),
        SortOrder::Descending => (" < ", " DESC"),
    };
    if let Some(after) = after {
        qb.push(" AND seq").push(op).push_bind(after);
    }
    qb.push(" ORDER BY seq").push(dir).push(" LIMIT ").push_bind(i64::try_from(query.limit + 1).unwrap_or(i64::MAX));
}

/// The page a listing's rows make (see [`push_page`]), and the rows in its
/// range that did not decode, for the backend to quarantine.
pub(crate) fn page(mut rows: Vec<Decoded>, query: &TaskQuery) -> (Page<Task>, Vec<Corrupt>) {
    let next_cursor = (rows.len() > query.limit).then(|| {
        rows.truncate(query.limit);
        let last = match rows.last().expect("non-empty") {
            Ok((seq, ..)) => *seq,
            Err(corrupt) => corrupt.seq,
        };
        Cursor::after(query.order, last)
    });
    let (tasks, corrupt) = split(rows);
    let page = Page { items: tasks.into_iter().map(|(_, t, _)| t).collect(), next_cursor, quarantined: Vec::new() };
    (page, corrupt)
}

/// Appends ` AND …` for each constraint of a session query, then its order and limit.
pub(crate) fn push_session_query<'a, DB>(qb: &mut QueryBuilder<'a, DB>, query: &SessionQuery)
where
    DB: Dialect,
    String: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    if !query.states.is_empty() {
        DB::push_in_text(qb, "state", query.states.iter().map(|s| s.as_str()).collect());
    }
    if let Some(agent) = &query.agent {
        qb.push(" AND agent_id = ").push_bind(agent.as_str().to_owned());
    }
    if let Some(task) = query.task {
        qb.push(" AND task_id = ").push_bind(task.to_string()).push(DB::UUID);
    }
    qb.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(i64::try_from(query.limit).unwrap_or(i64::MAX));
}
