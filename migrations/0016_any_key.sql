-- Keys of any kind (issue 14): a dataset's key may be an integer, a uuid, text (in its
-- collation's order), a date or time, or several columns compared as a row. Key values are
-- stored as text arrays, one element per key column, each PostgreSQL's text of the value (which
-- it reads back as the same value): the export's high-water mark and checkpoint, each range's
-- bounds and checkpoint, and where a run started. The integer columns they replace are
-- converted and dropped.
alter table exports
    add column upper_bound_key text[],
    add column last_processed_key text[];
update exports set upper_bound_key = array[upper_bound_id::text] where upper_bound_id is not null;
update exports set last_processed_key = array[last_processed_id::text] where last_processed_id is not null;
alter table exports drop column upper_bound_id, drop column last_processed_id;
comment on column exports.upper_bound_key is 'the largest key when the export was created (each key column as text): it stops there';
comment on column exports.last_processed_key is 'key of the last row checkpointed (each key column as text); a run resumes after it';

alter table export_runs add column start_key text[];
update export_runs set start_key = array[start_id::text] where start_id is not null;
alter table export_runs drop column start_id;

alter table export_ranges
    add column lower_key text[],
    add column upper_key text[],
    add column last_processed_key text[];
update export_ranges set lower_key = case when lower_id is null then null else array[lower_id::text] end,
    upper_key = array[upper_id::text],
    last_processed_key = case when last_processed_id is null then null else array[last_processed_id::text] end;
alter table export_ranges alter column upper_key set not null;
alter table export_ranges drop column lower_id, drop column upper_id, drop column last_processed_id;

-- The datasets as published: the key's columns, in order (one or more).
alter table exportd.datasets add column key_columns text[];
update exportd.datasets set key_columns = array[key_column];
alter table exportd.datasets alter column key_columns set not null, drop column key_column;

-- EXPORTD_MAX_PARALLELISM, as the last exportd to start configured it (SQL-enqueued exports may
-- ask for `parallelism` up to it, as the API's may).
alter table exportd.defaults add column max_parallelism integer not null default 4;

-- exportd.enqueue_export: as migration 0009's, with the high-water mark the last row in key order
-- (each key column as text) and `parallelism` accepted as the API accepts it. It runs with the
-- API's date style and time zone, whatever the caller's session has: a key's text (a date or a
-- time) is then written as the API writes it and read back unambiguously by every run (under
-- `SQL, DMY`, 03/04 would be read back as March 4 by a run's ISO, MDY session), and filter
-- values are read as the API and the runs read them.
create or replace function exportd.enqueue_export(request jsonb default '{}', idempotency_key text default null, for_owner text default '')
returns uuid
language plpgsql
security definer
set search_path = public, pg_temp
set datestyle = 'ISO, MDY'
set timezone = 'UTC'
as $$
declare
    ds exportd.datasets;
    col jsonb;
    fmt jsonb := coalesce(request -> 'format', '{}');
    delimiter text := ',';
    null_text text := '';
    time_zone text := 'UTC';
    formula_guard boolean;
    old_zone text;
    names jsonb;
    headers jsonb := coalesce(request -> 'headers', '{}');
    out_columns jsonb := '[]';
    header text;
    name text;
    filter_col text;
    ops jsonb;
    op text;
    v jsonb;
    vals text[];
    s text;
    filters jsonb := '[]';
    total_values integer := 0;
    spec jsonb;
    chunk_size bigint;
    max_rate bigint;
    new_id uuid := gen_random_uuid();
    job_id text;
    lane text;
    existing exports;
    upper_key text[];
    parallelism bigint;
    estimate bigint;
begin
    for_owner := coalesce(for_owner, '');
    if for_owner <> '' and for_owner !~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$' then
        perform exportd.refuse('for_owner', 'an API key''s name: a letter or digit, then up to 62 letters, digits, ".", "_" or "-"');
    end if;
    request := coalesce(request, '{}');
    if jsonb_typeof(request) <> 'object' then
        perform exportd.refuse('request', 'expected a JSON object like the body of POST /api/export');
    end if;
    s := exportd.unknown_key(request, array['dataset', 'columns', 'headers', 'filters', 'format',
        'compression', 'chunkSize', 'maxRowsPerSecond', 'parallelism']);
    if s is not null then perform exportd.refuse(s, 'unknown field'); end if;

    -- dataset
    s := exportd.text_field(request -> 'dataset', 'dataset');
    select * into ds from exportd.datasets d where d.name = coalesce(s, d.name) order by position limit 1;
    if not found or s is null and ds.position <> 0 then
        perform exportd.refuse('dataset', format('unknown dataset %s (known: %s)', to_jsonb(coalesce(s, '')),
            (select string_agg(d.name, ', ' order by position) from exportd.datasets d)));
    end if;

    chunk_size := coalesce(exportd.int_field(request -> 'chunkSize', 'chunkSize', 100, 100000),
        (select d.chunk_size from exportd.defaults d));
    max_rate := exportd.int_field(request -> 'maxRowsPerSecond', 'maxRowsPerSecond', 1, 10000000);
    parallelism := exportd.int_field(request -> 'parallelism', 'parallelism', 1, 64);
    if parallelism > (select d.max_parallelism from exportd.defaults d) then
        perform exportd.refuse('parallelism', format('%s is more than this server reads at once (at most %s, EXPORTD_MAX_PARALLELISM)',
            parallelism, (select d.max_parallelism from exportd.defaults d)));
    end if;

    -- format
    if jsonb_typeof(fmt) <> 'object' then perform exportd.refuse('format', 'expected an object'); end if;
    s := exportd.unknown_key(fmt, array['delimiter', 'header', 'quoteAll', 'null', 'lineEnding', 'bom',
        'timeZone', 'formulaGuard']);
    if s is not null then perform exportd.refuse('format.' || s, 'unknown field'); end if;
    s := exportd.text_field(fmt -> 'delimiter', 'format.delimiter');
    if s in ('tab', '\t') then delimiter := E'\t';
    elsif s is not null and char_length(s) <> 1 then
        perform exportd.refuse('format.delimiter', format('%s is not one character', to_jsonb(s)));
    elsif s is not null then delimiter := s;
    end if;
    if delimiter not in (',', ';', E'\t', '|') then
        perform exportd.refuse('format.delimiter', format('%s is not supported (use ",", ";", "\t" or "|")', to_jsonb(delimiter)));
    end if;
    null_text := coalesce(exportd.text_field(fmt -> 'null', 'format.null'), '');
    if length(null_text) > 32 then perform exportd.refuse('format.null', 'at most 32 characters'); end if;
    if null_text ~ '[^ -~]|[''"\\]' then
        perform exportd.refuse('format.null', 'printable ASCII without quotes or backslashes only');
    end if;
    if strpos(null_text, delimiter) > 0 then
        perform exportd.refuse('format.null', format('must not contain the delimiter %s', to_jsonb(delimiter)));
    end if;
    s := exportd.text_field(fmt -> 'lineEnding', 'format.lineEnding');
    if s is not null and s not in ('lf', 'crlf') then
        perform exportd.refuse('format.lineEnding', format('%s is not one of lf, crlf', to_jsonb(s)));
    end if;
    time_zone := coalesce(exportd.text_field(fmt -> 'timeZone', 'format.timeZone'), 'UTC');
    if time_zone = '' or octet_length(time_zone) > 64 then
        perform exportd.refuse('format.timeZone', 'must be an IANA time zone name such as "Europe/Berlin"');
    end if;
    if time_zone <> 'UTC' then
        -- The check the API makes (the setting a run makes), undone at once.
        old_zone := current_setting('TimeZone');
        begin
            perform set_config('TimeZone', time_zone, true);
        exception when data_exception or invalid_parameter_value then
            perform exportd.refuse('format.timeZone', sqlerrm);
        end;
        perform set_config('TimeZone', old_zone, true);
    end if;
    formula_guard := coalesce(exportd.bool_field(fmt -> 'formulaGuard', 'format.formulaGuard'), false);

    -- columns and headers
    names := coalesce(request -> 'columns', (select jsonb_agg(c -> 'name') from jsonb_array_elements(ds.columns) c));
    if jsonb_typeof(names) <> 'array' then perform exportd.refuse('columns', 'expected an array of column names'); end if;
    if jsonb_array_length(names) = 0 then perform exportd.refuse('columns', 'must name at least one column'); end if;
    if jsonb_typeof(headers) <> 'object' then perform exportd.refuse('headers', 'expected an object'); end if;
    for v in select * from jsonb_array_elements(names) loop
        name := exportd.text_field(v, 'columns');
        if not exists (select 1 from jsonb_array_elements(ds.columns) c where c ->> 'name' = name) then
            perform exportd.refuse('columns', format('unknown column %s in dataset %s (exportable: %s)', to_jsonb(name),
                ds.name, (select string_agg(c ->> 'name', ', ') from jsonb_array_elements(ds.columns) c)));
        end if;
        if out_columns @> jsonb_build_array(jsonb_build_object('name', name)) then
            perform exportd.refuse('columns', format('%s is listed twice', to_jsonb(name)));
        end if;
        header := coalesce(exportd.text_field(headers -> name, 'headers.' || name), name);
        if header = '' or octet_length(header) > 63 or header ~ '[[:cntrl:]]' then
            perform exportd.refuse('headers.' || name, 'must be 1 to 63 bytes, without control characters');
        end if;
        if formula_guard and left(header, 1) in ('=', '+', '-', '@') then
            perform exportd.refuse('headers.' || name, format('%s starts with %s, which a spreadsheet runs as a formula (format.formulaGuard is on)',
                to_jsonb(header), to_jsonb(left(header, 1))));
        end if;
        if out_columns @> jsonb_build_array(jsonb_build_object('header', header)) then
            perform exportd.refuse('headers.' || name, format('header %s is used twice', to_jsonb(header)));
        end if;
        out_columns := out_columns || jsonb_build_array(jsonb_build_object('name', name, 'header', header));
    end loop;
    s := (select k from jsonb_object_keys(headers) k
          where not out_columns @> jsonb_build_array(jsonb_build_object('name', k)) order by k collate "C" limit 1);
    if s is not null then
        perform exportd.refuse('headers.' || s, format('%s is not one of the exported columns', to_jsonb(s)));
    end if;

    -- filters, in the API's order: by column name, then eq, gt, gte, lt, lte, in, isNull
    if jsonb_typeof(coalesce(request -> 'filters', '{}')) <> 'object' then
        perform exportd.refuse('filters', 'expected an object');
    end if;
    for filter_col, ops in select k, request -> 'filters' -> k from jsonb_object_keys(coalesce(request -> 'filters', '{}')) k
                           order by k collate "C" loop
        select c into col from jsonb_array_elements(ds.columns) c where c ->> 'name' = filter_col;
        if col is null then
            perform exportd.refuse('filters.' || filter_col, format('unknown column %s in dataset %s', to_jsonb(filter_col), ds.name));
        end if;
        if not (col ->> 'filterable')::boolean then
            perform exportd.refuse('filters.' || filter_col, format('column %s cannot be filtered on (filterable: %s)', to_jsonb(filter_col),
                (select string_agg(c ->> 'name', ', ') from jsonb_array_elements(ds.columns) c where (c ->> 'filterable')::boolean)));
        end if;
        if jsonb_typeof(ops) <> 'object' then perform exportd.refuse('filters.' || filter_col, 'expected an object of operators'); end if;
        s := exportd.unknown_key(ops, array['eq', 'in', 'gt', 'gte', 'lt', 'lte', 'isNull']);
        if s is not null then perform exportd.refuse('filters.' || filter_col || '.' || s, 'unknown operator'); end if;
        if ops = '{}' then
            perform exportd.refuse('filters.' || filter_col, 'give at least one of eq, in, gt, gte, lt, lte, isNull');
        end if;
        foreach op in array array['eq', 'gt', 'gte', 'lt', 'lte', 'in', 'isNull'] loop
            continue when not ops ? op;
            s := 'filters.' || filter_col || '.' || op;
            if op = 'isNull' then
                filters := filters || jsonb_build_array(jsonb_build_object('column', filter_col,
                    'op', case when exportd.bool_field(ops -> op, s) then 'isNull' else 'isNotNull' end));
                continue;
            end if;
            if op = 'in' then
                if jsonb_typeof(ops -> op) <> 'array' or jsonb_array_length(ops -> op) not between 1 and 1000 then
                    perform exportd.refuse(s, 'list 1 to 1000 values');
                end if;
                select array_agg(e) into vals from jsonb_array_elements(ops -> op) e;
            else
                vals := array[ops -> op];
            end if;
            -- each value as text, as the API reads it
            vals := (select array_agg(case
                        when jsonb_typeof(e::jsonb) = 'null' then exportd.refuse(s, 'null is not a value; use isNull')::text
                        when jsonb_typeof(e::jsonb) in ('string', 'number', 'boolean') then e::jsonb #>> '{}'
                        else exportd.refuse(s, 'expected a string, number or boolean')::text end order by n)
                     from unnest(vals) with ordinality as u(e, n));
            if exists (select 1 from unnest(vals) x where octet_length(x) > 1024) then
                perform exportd.refuse(s, 'a value longer than 1024 bytes');
            end if;
            if (col ->> 'sqlType' like 'time%' or col ->> 'sqlType' = 'date')
               and exists (select 1 from unnest(vals) x where lower(trim(x)) in ('now', 'today', 'tomorrow', 'yesterday')) then
                perform exportd.refuse(s, 'a relative time would move during the export; give a fixed time');
            end if;
            begin
                execute format('select bool_and((v::%s) is null) from unnest($1::text[]) as u(v)', col ->> 'castType') using vals;
            exception when data_exception then
                perform exportd.refuse(s, sqlerrm);
            end;
            total_values := total_values + cardinality(vals);
            filters := filters || jsonb_build_array(jsonb_build_object('column', filter_col, 'op', op, 'values', to_jsonb(vals)));
        end loop;
    end loop;
    if total_values > 2000 then
        perform exportd.refuse('filters', format('%s values in all; at most 2000 per export', total_values));
    end if;

    s := coalesce(exportd.text_field(request -> 'compression', 'compression'), 'none');
    if s not in ('none', 'gzip') then
        perform exportd.refuse('compression', format('%s is not one of none, gzip', to_jsonb(s)));
    end if;

    -- The stored spec: what the API stores for the same request (tests/api/enqueue.rs).
    spec := jsonb_build_object(
        'chunkSize', chunk_size,
        'columns', out_columns,
        'format', jsonb_build_object(
            'delimiter', delimiter,
            'header', coalesce(exportd.bool_field(fmt -> 'header', 'format.header'), true),
            'quoteAll', coalesce(exportd.bool_field(fmt -> 'quoteAll', 'format.quoteAll'), false),
            'null', null_text,
            'lineEnding', coalesce(fmt ->> 'lineEnding', 'lf'),
            'bom', coalesce(exportd.bool_field(fmt -> 'bom', 'format.bom'), false),
            'timeZone', time_zone,
            'formulaGuard', formula_guard),
        'compression', s);
    if max_rate is not null then spec := spec || jsonb_build_object('maxRowsPerSecond', max_rate); end if;
    if parallelism is not null then spec := spec || jsonb_build_object('parallelism', parallelism); end if;
    if filters <> '[]' then spec := spec || jsonb_build_object('filters', filters); end if;
    if octet_length(spec::text) > 65536 then
        perform exportd.refuse('filters', 'the export''s options take more than 65536 bytes stored; use fewer or shorter filter values');
    end if;

    -- The same request with the same key is the same export; another request with it is refused.
    if idempotency_key = '' then idempotency_key := null; end if;
    if octet_length(idempotency_key) > 200 then perform exportd.refuse('Idempotency-Key', 'at most 200 characters'); end if;
    if idempotency_key is not null then
        select * into existing from exports e
        where e.owned_by = for_owner and e.idempotency_key = enqueue_export.idempotency_key;
        if found then
            if existing.dataset = ds.name and existing.spec = spec then return existing.id; end if;
            perform exportd.refuse('Idempotency-Key', format('this key was already used for export %s with a different request', existing.id));
        end if;
    end if;

    -- The high-water mark; the planner's row count when unfiltered (the API's estimate of a
    -- filtered export comes from its plan, which needs the query the API builds: null here).
    execute format('select array[%s] from %s as t order by %s limit 1',
        (select string_agg(format('t.%I::text', k), ', ' order by n) from unnest(ds.key_columns) with ordinality as u(k, n)),
        ds.table_sql,
        (select string_agg(format('t.%I desc', k), ', ' order by n) from unnest(ds.key_columns) with ordinality as u(k, n)))
    into upper_key;
    if filters = '[]' then
        select case when c.reltuples < 0 then null else c.reltuples::bigint end into estimate
        from pg_class c where c.oid = ds.table_sql::regclass;
    end if;

    -- A ULID, as apalis names jobs: 48 bits of milliseconds, 80 random bits, Crockford base32.
    job_id := (select string_agg(substr('0123456789ABCDEFGHJKMNPQRSTVWXYZ', (floor(n / 32::numeric ^ (25 - i)) % 32)::int + 1, 1), '' order by i)
               from (select floor(extract(epoch from clock_timestamp()) * 1000)::numeric * 2::numeric ^ 80
                            + floor(random() * 2 ^ 40)::numeric * 2::numeric ^ 40 + floor(random() * 2 ^ 40)::numeric as n) t,
                    generate_series(0, 25) as i);
    lane := case when max_rate is null then 'exportd.export' else 'exportd.export.throttled' end;
    perform exportd.admit(for_owner);
    insert into exports (id, dataset, spec, upper_bound_key, total_rows, queue_job_id, idempotency_key, owned_by)
    values (new_id, ds.name, spec, upper_key, estimate, job_id, idempotency_key, for_owner);
    insert into apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata)
    values (job_id, lane, convert_to(jsonb_build_object('exportId', new_id)::text, 'UTF8'), 'Pending', 0, 1000, now(), 0, ''::hstore);
    perform pg_notify('apalis::job::insert', json_build_object('job_type', lane, 'id', job_id, 'run_at', now())::text);
    return new_id;
end $$;

revoke all on function exportd.enqueue_export(jsonb, text, text) from public;
