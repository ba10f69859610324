-- The export's high-water mark in the primary's WAL: the WAL insert position when the export
-- row was inserted (the default is evaluated by that insert, by the API and by
-- exportd.enqueue_export alike). Every row at or below upper_bound_id that was committed before
-- the export was created is at an earlier position. A run that reads its chunks from a hot
-- standby (EXPORTD_READ_DATABASE_URL) first waits until the standby has replayed past it, so a
-- lagging replica can never make an export skip rows; null for exports created before this.
alter table exports add column created_lsn pg_lsn default pg_current_wal_lsn();
