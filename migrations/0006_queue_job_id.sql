-- The queue job that carries an export is named for what it is: `queue_job_id` (an id of
-- apalis.jobs), so it is not mistaken for the export's own id (the API's `jobId`).
alter table exports rename column job_id to queue_job_id;

comment on column exports.queue_job_id is 'apalis.jobs.id of the queue job that carries this export to a worker';
