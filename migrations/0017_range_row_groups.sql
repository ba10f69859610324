-- Parquet exports read in parallel (issue 14): each key range writes its own row groups into its
-- own piece, so a row group's metadata is saved with its range's checkpoints, keyed by the
-- range's position as well (0 for a serial export's, which has one range in all but name).
-- `base` counts from the start of the range's piece (the file's, for a serial export). When
-- every range is done, the footer over every range's row groups, offsets moved by the bytes of
-- the pieces before, is written as one more piece after them.
alter table export_row_groups add column range_position int4 not null default 0;
alter table export_row_groups drop constraint export_row_groups_pkey;
alter table export_row_groups add primary key (export_id, range_position, position);
