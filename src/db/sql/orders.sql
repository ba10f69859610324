-- The demo dataset exported by default, created by `exportd seed` (not a migration: a real
-- deployment exports tables it already has). Every statement is idempotent.

create table if not exists orders (
    id              bigserial primary key,
    created_at      timestamptz not null,
    updated_at      timestamptz,
    customer_name   text,
    customer_email  text,
    country         char(2),
    status          text,
    amount          numeric(12, 2),
    currency        char(3),
    quantity        int,
    -- often NULL; otherwise commas, double quotes, CR/LF and non-ASCII text: the hard cases of CSV.
    note            text,
    metadata        jsonb
);

-- The columns a user filters on, each with id so that a filtered keyset scan stays an index scan.
create index if not exists orders_created_at_idx on orders (created_at, id);
create index if not exists orders_status_idx on orders (status, id);
create index if not exists orders_country_idx on orders (country, id);
create index if not exists orders_customer_email_idx on orders (customer_email);
