-- Parquet exports (format.type parquet): each checkpointed row group's metadata, saved in the
-- checkpoint's transaction, so a resumed run writes the final footer over every row group in
-- the file without reading the file back. `footer` is the Thrift metadata of the row group
-- encoded as a one-row-group file (offsets counted from that file's start); `base` is the
-- offset its bytes start at in the export's file. Positions count from 0 in file order. A
-- checkpoint replaces the positions it writes and any after them (left by a run whose
-- checkpoint was reset), so only row groups some checkpoint covers are ever here.
create table export_row_groups (
    export_id uuid not null references exports (id) on delete cascade,
    position int4 not null,
    base int8 not null,
    footer bytea not null,
    primary key (export_id, position)
);
