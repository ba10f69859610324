-- exportd schema, part 1: the exports themselves and the history of who ran them.
-- Forward-only: later changes get a new file, this one is never edited after release.

-- One row per export request. This row, not the queue job, is the source of truth for an
-- export's state: the queue only decides *when* a worker looks at it.
create table exports (
    id                 uuid primary key,
    -- which dataset (table) is exported; only 'orders' exists for now.
    dataset            text not null default 'orders',
    -- the request as accepted (chunk size, throttle, ...), so a resumed run uses the same options.
    spec               jsonb not null default '{}'::jsonb,
    -- queued -> running -> completed | failed | cancelled; never backwards (see trigger below).
    status             text not null default 'queued'
        constraint exports_status_check
        check (status in ('queued', 'running', 'completed', 'failed', 'cancelled')),
    -- high-water mark: the largest key when the export was created; the export covers keys
    -- up to it, so an export of a table under constant inserts still finishes. null = empty table.
    upper_bound_id     bigint,
    -- the fencing token of the run that currently owns the export (null = nobody). Every
    -- checkpoint is an update guarded by `owner = $token`, so a runner that lost ownership
    -- can never move the checkpoint.
    owner              uuid,
    -- checkpoint: the last key written, and the rows and bytes in the file up to it.
    last_processed_id  bigint,
    rows_written       bigint not null default 0,
    bytes_written      bigint not null default 0,
    -- file (relative to the storage directory) holding the checkpointed bytes; each run
    -- writes its own file, so a stale runner can never change the bytes that will be served.
    file_name          text,
    -- planner estimate of the rows to export (may be null).
    total_rows         bigint,
    -- runs started (a run released at shutdown gives its attempt back).
    attempts           integer not null default 0,
    -- consecutive runs that ended without moving the checkpoint; the export fails when this
    -- reaches the configured limit, so a poison export cannot loop forever.
    stalled_attempts   integer not null default 0,
    -- the last error a run met; error is only shown to users when the export failed.
    last_error         text,
    error              text,
    -- the apalis job (ULID) currently carrying this export.
    job_id             text,
    created_at         timestamptz not null default now(),
    started_at         timestamptz,
    finished_at        timestamptz,
    updated_at         timestamptz not null default now(),
    constraint exports_counts_check check (rows_written >= 0 and bytes_written >= 0)
);

-- The worker's "find unfinished exports" query and listings by status.
create index exports_unfinished_idx on exports (created_at) where status in ('queued', 'running');

-- Status moves one way only: a terminal export never changes status again, and a running
-- export never goes back to queued. Enforced here so no code path can get it wrong.
create function exports_status_forward() returns trigger language plpgsql as $$
begin
    if old.status <> new.status and (
        old.status in ('completed', 'failed', 'cancelled')
        or (old.status = 'running' and new.status = 'queued')
    ) then
        raise exception 'export % cannot go from % to %', old.id, old.status, new.status
            using errcode = 'check_violation', constraint = 'exports_status_forward';
    end if;
    new.updated_at := now();
    return new;
end $$;

create trigger exports_status_forward before update on exports
    for each row execute function exports_status_forward();

-- One row per run (attempt) of an export: the owner changes, so that "never worked on by two
-- runners at once" can be checked after the fact.
create table export_runs (
    -- the run's fencing token, equal to exports.owner while the run owns the export.
    token          uuid primary key,
    export_id      uuid not null references exports (id) on delete cascade,
    attempt        integer not null,
    -- the worker process that ran it (unique per process start).
    worker         text not null,
    -- checkpoint the run started from.
    start_id       bigint,
    started_at     timestamptz not null default now(),
    ended_at       timestamptz,
    -- completed | released | failed | superseded | gave_up | lost
    outcome        text,
    error          text
);

create index export_runs_export_idx on export_runs (export_id, started_at);
