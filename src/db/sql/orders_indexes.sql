-- Indexes of the demo dataset, built after the rows are in (faster than maintaining them row by row).
-- The columns a user filters on, each with id so that a filtered keyset scan stays an index scan.
create index if not exists orders_created_at_idx on orders (created_at, id);
create index if not exists orders_status_idx on orders (status, id);
create index if not exists orders_country_idx on orders (country, id);
create index if not exists orders_customer_email_idx on orders (customer_email);
