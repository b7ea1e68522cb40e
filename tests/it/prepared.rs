//! The assembler's connection keeps its statements prepared (`db::Session`): each is parsed
//! once per connection, keeps working when a NetBox migration changes the table it reads or
//! when a transaction that used it rolls back, and a new connection starts without them.

use netbox_outbox::db::{Database, Query, Session};
use tokio_postgres::IsolationLevel;

use crate::support::db::TestDb;

async fn session(db: &TestDb) -> Session {
    let database = Database::resolve(Some(&db.url()), &|_| None).unwrap();
    Session::new(database.connect().await.unwrap())
}

/// The statements this connection holds prepared, as the server sees them (but this one).
async fn server_side(session: &Session) -> i64 {
    session
        .client
        .query_one(
            "select count(*) from pg_prepared_statements where statement not like '%pg_prepared_statements%'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

const READ: &str =
    "select t.id::bigint, row_to_json(t)::text from public.widget t where t.id = any($1)";

#[tokio::test]
async fn a_statement_is_prepared_once_and_follows_the_table_it_reads() {
    let db = TestDb::empty().await;
    let admin = db.client().await;
    admin
        .batch_execute(
            "create table public.widget (id bigint primary key, name text);
             insert into public.widget values (1, 'one'), (2, 'two');",
        )
        .await
        .unwrap();
    let mut session = session(&db).await;
    assert_eq!(server_side(&session).await, 0);

    for _ in 0..3 {
        let tx = session
            .transaction(IsolationLevel::RepeatableRead)
            .await
            .unwrap();
        let rows = tx.query(READ, &[&vec![1i64, 2]]).await.unwrap();
        assert_eq!(rows.len(), 2);
        tx.commit().await.unwrap();
    }
    assert_eq!(session.prepared(), 1, "one statement, prepared once");
    assert_eq!(server_side(&session).await, 1);

    // A rolled-back transaction does not take its statements with it.
    let tx = session
        .transaction(IsolationLevel::ReadCommitted)
        .await
        .unwrap();
    tx.query_one("select $1::int + 1", &[&1i32]).await.unwrap();
    tx.rollback().await.unwrap();
    let tx = session
        .transaction(IsolationLevel::ReadCommitted)
        .await
        .unwrap();
    let two: i32 = tx
        .query_one("select $1::int + 1", &[&1i32])
        .await
        .unwrap()
        .get(0);
    assert_eq!(two, 2);
    tx.commit().await.unwrap();
    assert_eq!(session.prepared(), 2);

    // A migration adds a column and renames another: the kept statement reads the table as it
    // is now, not as it was when the statement was prepared.
    admin
        .batch_execute(
            "alter table public.widget add column serial text default 'X1';
             alter table public.widget rename column name to label;",
        )
        .await
        .unwrap();
    let tx = session
        .transaction(IsolationLevel::RepeatableRead)
        .await
        .unwrap();
    let row = tx.query_one(READ, &[&vec![1i64]]).await.unwrap();
    let json: serde_json::Value = serde_json::from_str(row.get::<_, &str>(1)).unwrap();
    assert_eq!(json["label"], "one");
    assert_eq!(json["serial"], "X1");
    assert!(json.get("name").is_none(), "{json}");
    tx.commit().await.unwrap();
    assert_eq!(
        session.prepared(),
        2,
        "the same statement, re-planned by the server"
    );

    // Through the trait the renderer and the rules use, the session's statements are used too.
    let tx = session
        .transaction(IsolationLevel::ReadCommitted)
        .await
        .unwrap();
    let rows = Query::query(&tx, READ, &[&vec![2i64]]).await.unwrap();
    assert_eq!(rows.len(), 1);
    tx.commit().await.unwrap();
    assert_eq!(session.prepared(), 2);

    // A new connection starts with none.
    let fresh = self::session(&db).await;
    assert_eq!(fresh.prepared(), 0);
    assert_eq!(server_side(&fresh).await, 0);
}
