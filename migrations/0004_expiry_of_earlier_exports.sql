-- exportd schema, part 4: exports completed before part 3 get an expiry date.
-- Forward-only. Part 3 sets expires_at at completion; exports that completed before it have
-- none and would be kept for ever. They get the default retention (7 days after they
-- finished), so the retention job deletes their files like any other.
update exports set expires_at = finished_at + interval '7 days'
where status = 'completed' and expires_at is null and finished_at is not null;
