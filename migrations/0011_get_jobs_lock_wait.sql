-- The queue's fetch no longer waits for ever on its lock (found by the chaos test of a
-- paused worker: stopped inside apalis' fetch transaction, it held migration 0009's advisory
-- lock and every other worker's fetch waited on it until the statement timeout, again and
-- again: nothing ran until the paused process resumed). Migration 0009's function with a
-- bounded wait for the lock; everything else is unchanged.
create or replace function apalis.get_jobs(worker_id text, v_job_type text, v_job_count integer default 5)
returns setof apalis.jobs
language plpgsql volatile
set search_path = public, pg_temp
as $$
declare
    cap bigint := coalesce((select max_running_per_owner from exportd.defaults), 2147483647);
begin
    -- Wait for the lock at most a second. apalis fetches inside a transaction of its own
    -- (begin; get_jobs; commit), so a worker frozen between the two (SIGSTOP, a partition)
    -- holds the lock until its session ends: the others then fetch without it, their owners'
    -- caps best-effort for that while, rather than the whole fleet stalling.
    -- (idle_in_transaction_session_timeout, set by exportd on its connections, ends such a
    -- session.)
    begin
        perform set_config('lock_timeout', '1000', true);
        perform pg_advisory_xact_lock(hashtext('exportd.get_jobs'));
    exception when lock_not_available then
        raise log 'exportd get_jobs: the fetch lock is held by a stalled session; fetching without it';
    end;
    perform set_config('lock_timeout', '0', true);
    return query
    with held as (
        select e.owned_by as who, count(*) as n
        from apalis.jobs h join exports e on e.queue_job_id = h.id
        where h.status in ('Queued', 'Running')
        group by e.owned_by
    ), picked as (
        select j.id, e.owned_by
        from apalis.jobs j
        left join exports e on e.queue_job_id = j.id
        left join held on held.who = e.owned_by
        left join exportd.owner_turns t on t.owned_by = e.owned_by
        where (j.status = 'Pending' or (j.status = 'Failed' and j.attempts < j.max_attempts))
          and j.run_at < now()
          and j.job_type = v_job_type
          and (e.id is null or coalesce(held.n, 0) < cap)
        order by coalesce(held.n, 0), t.served_at nulls first, j.priority desc, j.run_at
        limit v_job_count
        for update of j skip locked
    ), turns as (
        insert into exportd.owner_turns (owned_by, served_at)
        select distinct owned_by, clock_timestamp() from picked where owned_by is not null
        on conflict (owned_by) do update set served_at = excluded.served_at
    )
    update apalis.jobs j
    set status = 'Queued', lock_by = worker_id, lock_at = now()
    from picked
    where j.id = picked.id
    returning j.*;
end $$;
