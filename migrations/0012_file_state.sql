-- What a checkpoint records of its file besides the name and length, for storage backends that
-- need more to find the checkpointed bytes again: for S3-compatible object storage, the run's
-- multipart upload id and the ETag and size of every uploaded part ({"id": ..., "parts":
-- [{"etag": ..., "size": ...}, ...]}). Null for files in a local directory, and once an export
-- is completed (its file is then a whole object). Written with the checkpoint, fenced alike.
alter table exports add column file_state jsonb;

-- Rows the owning run has appended, checkpointed or not: with object storage a checkpoint
-- waits for a part's worth of bytes, so at each chunk end in between the run records its
-- progress here (fenced by its token, which is also how it notices a cancel or a takeover
-- within a chunk). Status shows the greater of this and rows_written; resume uses only the
-- checkpoint. Null when nothing was recorded past the checkpoint.
alter table exports add column rows_read int8;
