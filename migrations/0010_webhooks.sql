-- Signed webhooks (issue 12): an export created with a `callbackUrl` is announced there when it
-- ends (completed, failed, cancelled), by a POST signed per Standard Webhooks 1.0 with its
-- owner's secret. Each announcement is a delivery, sent by a queue job in the same queue as
-- the exports (lane `exportd.webhook`); every attempt is recorded, and a failed one schedules
-- the next (a new job with a later run_at) in the transaction that records it, so retries
-- survive restarts.
alter table exports add column callback_url text;
comment on column exports.callback_url is 'where the end of the export is announced (POST, Standard Webhooks); null: nowhere';

-- Each owner's signing secret (`whsec_<base64>`), made when it is first needed or asked for
-- (`exportd keys create` prints it).
create table webhook_secrets (
    owned_by text primary key,
    secret text not null check (secret like 'whsec_%'),
    created_at timestamptz not null default now()
);

create table webhook_deliveries (
    id text primary key,               -- the `webhook-id`, the same on every attempt
    export_id uuid not null references exports (id) on delete cascade,
    event text not null,               -- export.completed | export.failed | export.cancelled
    url text not null,
    body text,                         -- as sent (built at the first attempt, then kept)
    created_at timestamptz not null default now(),
    next_attempt_at timestamptz,       -- null once delivered or given up
    delivered_at timestamptz,
    gave_up_at timestamptz
);
create index webhook_deliveries_export_idx on webhook_deliveries (export_id, created_at);

create table webhook_attempts (
    delivery_id text not null references webhook_deliveries (id) on delete cascade,
    attempt integer not null,
    started_at timestamptz not null,
    duration_ms integer not null,
    status_code integer,               -- null: no answer (refused address, connection error, timeout)
    error text,                        -- null: delivered (2xx)
    primary key (delivery_id, attempt)
);

-- The end of an export with a callbackUrl gets its delivery and queue job in the transaction
-- that ends it, whoever ends it (a worker, a cancel): none is missed, none is sent for a
-- transaction that rolls back.
create function exportd.announce_end() returns trigger
language plpgsql
set search_path = public, pg_temp
as $$
declare
    delivery text := 'msg_' || replace(gen_random_uuid()::text, '-', '');
    job_id text := apalis.generate_ulid();
begin
    insert into webhook_deliveries (id, export_id, event, url, next_attempt_at)
    values (delivery, new.id, 'export.' || new.status, new.callback_url, now());
    insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
    values (job_id, 'exportd.webhook', convert_to(jsonb_build_object('deliveryId', delivery)::text, 'UTF8'),
            'Pending', 0, 1000, now(), 0, ''::hstore);
    perform pg_notify('apalis::job::insert', json_build_object('job_type', 'exportd.webhook', 'id', job_id, 'run_at', now())::text);
    return null;
end $$;

create trigger exports_announce_end after update of status on exports
    for each row
    when (new.callback_url is not null and old.status is distinct from new.status
          and new.status in ('completed', 'failed', 'cancelled'))
    execute function exportd.announce_end();
