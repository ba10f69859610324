-- Parallel exports (`parallelism` > 1): the key range up to the export's high-water mark is
-- split once, by the first run, into contiguous ranges of similar row counts, each read on its
-- own connection into a piece file of its own and checkpointed here (fenced by the export's
-- owner token, in a transaction that also adds the chunk's rows and bytes to the export's, so
-- progress is the sum over ranges). Positions count from 0 in key order; a range holds the
-- keys in (lower_id, upper_id] (no lower bound for the first). When every range is done, the
-- pieces are joined in position order into the export's file. Rows go with their export.
create table export_ranges (
    export_id uuid not null references exports (id) on delete cascade,
    position int4 not null,
    lower_id int8,
    upper_id int8 not null,
    -- The range's checkpoint, as exports' own: the last key written, rows, bytes of file_name,
    -- what the storage needs to find them (an object store's upload and parts), and the run
    -- (token) that wrote them.
    last_processed_id int8,
    rows_written int8 not null default 0,
    bytes_written int8 not null default 0,
    file_name text,
    file_state jsonb,
    file_writer uuid,
    -- Rows appended past the checkpoint (object storage checkpoints a part at a time): the
    -- export's rows_read is the sum over its ranges.
    rows_read int8,
    -- Every row of the range is in file_name (its last checkpoint).
    done boolean not null default false,
    primary key (export_id, position)
);
