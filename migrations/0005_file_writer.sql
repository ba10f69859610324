-- exportd schema, part 5: who wrote the checkpointed file, and who released the export.
-- Forward-only.
--
-- A run may continue the previous run's file in place only when that file can no longer
-- change under it: when the run that wrote it is the one that released the export cleanly.
-- "owner is null" alone is not enough: run A writes a.csv and is paused; B takes over, copies
-- the prefix to b.csv, and releases before its first checkpoint (file_name still a.csv);
-- C must not adopt a.csv, since A may wake up and write into it.

-- The run whose token wrote the bytes of file_name (set with every checkpoint and at completion).
alter table exports add column file_writer uuid;
-- The run that last gave the export back cleanly (release at shutdown or after an error, with
-- its writes finished); cleared when the next run claims it.
alter table exports add column released_by uuid;
