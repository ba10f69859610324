-- The demo dataset exported by default, created by `exportd seed` (not a migration: a real
-- deployment exports tables it already has). `exportd seed` drops and re-creates it.

create table orders (
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
