//! The demo dataset: `orders`, filled by set-based inserts that depend only on the row count.

use std::io::Write;

use anyhow::Context as _;
use sqlx::PgPool;

/// Rows inserted per statement (each one set-based, over `generate_series`); progress is
/// reported between them.
const BATCH: i64 = 100_000;

/// Rows in `orders`, or None when the table does not exist.
pub async fn orders_count(pool: &PgPool) -> anyhow::Result<Option<i64>> {
    let exists: bool = sqlx::query_scalar("select to_regclass('orders') is not null").fetch_one(pool).await?;
    if !exists {
        return Ok(None);
    }
    Ok(Some(sqlx::query_scalar("select count(*) from orders").fetch_one(pool).await?))
}

/// Re-creates `orders` with `rows` deterministic rows (ids 1..=rows), builds its indexes and
/// analyzes it. `progress` is told the rows done so far.
pub async fn seed_orders(pool: &PgPool, rows: i64, mut progress: impl FnMut(i64)) -> anyhow::Result<()> {
    sqlx::raw_sql(concat!("drop table if exists orders;\n", include_str!("sql/orders.sql")))
        .execute(pool)
        .await
        .context("creating table orders")?;
    let mut done = 0;
    while done < rows {
        let to = (done + BATCH).min(rows);
        sqlx::query(INSERT_ORDERS).bind(done + 1).bind(to).execute(pool).await.context("inserting orders")?;
        done = to;
        progress(done);
    }
    sqlx::query("select setval(pg_get_serial_sequence('orders', 'id'), greatest($1, 1), $1 > 0)")
        .bind(rows)
        .execute(pool)
        .await?;
    sqlx::raw_sql(include_str!("sql/orders_indexes.sql")).execute(pool).await.context("indexing orders")?;
    sqlx::query("analyze orders").execute(pool).await?;
    Ok(())
}

/// A terminal progress line for [`seed_orders`].
pub fn print_progress(total: i64) -> impl FnMut(i64) {
    let started = std::time::Instant::now();
    move |done| {
        let pct = if total > 0 { done * 100 / total } else { 100 };
        eprint!("\rseeding orders: {done}/{total} rows ({pct}%) in {:.1}s", started.elapsed().as_secs_f64());
        if done >= total {
            eprintln!();
        }
        let _ = std::io::stderr().flush();
    }
}

/// One set-based insert of ids `$1..=$2`. Every value is a function of the id, so the data
/// depends only on the row count. `note` is NULL in a third of rows, empty in some, and
/// otherwise mixes commas, double quotes, CR/LF and non-ASCII text: the hard cases of CSV.
const INSERT_ORDERS: &str = r#"
insert into orders (id, created_at, updated_at, customer_name, customer_email, country, status,
                    amount, currency, quantity, note, metadata)
select
    g.id,
    timestamptz '2023-01-01 00:00:00+00' + g.id * interval '31 seconds' + (g.id % 1000) * interval '1 microsecond',
    case when g.id % 4 = 0 then null
         else timestamptz '2023-01-01 00:00:00+00' + g.id * interval '31 seconds' + (g.id % 97) * interval '1 hour' end,
    (array['Ada','Björn','Chloé','Dmitri','Eun-ji','Fatima','Gustavo','Hana','Ivan','José','Kenji','Lena'])[1 + g.id % 12]
        || ' ' ||
    (array['Lovelace','Økland','Dubois','Ivanov','Kim','Haddad','Souza','Tanaka','Petrov','García','O''Brien','Müller'])[1 + (g.id / 12) % 12],
    'customer' || (g.id * 7919 % 100003) || '@example.com',
    (array['US','DE','FR','JP','BR','IN','GB','CA','ES','IT'])[1 + (g.id * 7) % 10],
    (array['pending','paid','shipped','delivered','cancelled'])[1 + (g.id * 13) % 5],
    round(((g.id * 7919) % 10000000) / 100.0 - 500, 2),
    (array['USD','EUR','JPY','GBP','BRL'])[1 + (g.id * 3) % 5],
    case when g.id % 50 = 0 then null else 1 + (g.id * 31) % 20 end,
    case
        when g.id % 3 = 0 then null
        when g.id % 17 = 0 then ''
        when g.id % 5 = 0 then 'Deliver to "back door", ring twice' || E'\r\n' || 'Zürich — 東京 ✓'
        when g.id % 7 = 0 then 'multi' || E'\n' || 'line, with "quotes"'
        when g.id % 11 = 0 then ' leading and trailing spaces '
        else 'note ' || g.id || ', gift wrap: ' || (array['yes','no','"maybe"'])[1 + g.id % 3]
    end,
    case when g.id % 10 = 0 then null
         else jsonb_build_object('source', (array['web','app','phone'])[1 + g.id % 3],
                                 'tags', jsonb_build_array('t' || (g.id % 7), 'ünïcode'),
                                 'quote', 'he said "hi"', 'score', (g.id % 100) / 10.0) end
from generate_series($1::bigint, $2::bigint) as g(id)
"#;
