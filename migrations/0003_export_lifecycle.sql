-- exportd schema, part 3: the rest of an export's life (cancel, expiry, listing, idempotent creation).
-- Forward-only: adds to parts 1 and 2, never edits them.

-- A new terminal status: `expired`, a completed export whose file was deleted (its retention
-- ran out, or its owner deleted it). Completed is the only status that can still move (to expired).
alter table exports drop constraint exports_status_check;
alter table exports add constraint exports_status_check
    check (status in ('queued', 'running', 'completed', 'failed', 'cancelled', 'expired'));

create or replace function exports_status_forward() returns trigger language plpgsql as $$
begin
    if old.status <> new.status and (
        old.status in ('failed', 'cancelled', 'expired')
        or (old.status = 'completed' and new.status <> 'expired')
        or (old.status = 'running' and new.status = 'queued')
    ) then
        raise exception 'export % cannot go from % to %', old.id, old.status, new.status
            using errcode = 'check_violation', constraint = 'exports_status_forward';
    end if;
    new.updated_at := now();
    return new;
end $$;

-- When a completed export's file is deleted by the retention job (set at completion).
alter table exports add column expires_at timestamptz;
create index exports_expiry_idx on exports (expires_at) where status = 'completed';

-- `Idempotency-Key` of the request that created the export: the same key returns the same
-- export instead of creating a second one.
alter table exports add column idempotency_key text;
create unique index exports_idempotency_key_idx on exports (idempotency_key) where idempotency_key is not null;

-- Listing newest first, with keyset pagination on (created_at, id), all or by status.
create index exports_list_idx on exports (created_at desc, id desc);
create index exports_status_list_idx on exports (status, created_at desc, id desc);
