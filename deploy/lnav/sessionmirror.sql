-- SessionMirror's log lines in lnav 0.11, both formats in one view: sessionmirror_log.
--
-- Installed beside sessionmirror.json with `lnav -i deploy/lnav/sessionmirror.json` and
-- `lnav -i deploy/lnav/sessionmirror.sql`; lnav runs it at start. Its JSON lines are read by the
-- sessionmirror_json_log format of sessionmirror.json. Its logfmt lines are read by lnav's built-in
-- logfmt_log format, which wins over any format file for a logfmt line and keeps the fields after
-- ts, level and msg as one JSON object (`fields`); the first half of the view takes them from there.
-- logfmt_log holds every logfmt file lnav opened, so that half keeps only lines shaped like
-- SessionMirror's (ts, level, event first). lnav 0.11.1's logfmt_log gives every line the level
-- info; the `level` column is the daemon's own, read from the line.
-- The columns are the documented fields (docs/metrics.md); any other field of a logfmt line is in
-- `fields`.
--
--   lnav -n -c ';SELECT event, count(*) FROM sessionmirror_log GROUP BY event' /var/log/sessionmirror/*.log
DROP VIEW IF EXISTS sessionmirror_log;
CREATE VIEW sessionmirror_log AS
  SELECT
    log_line, log_time, log_level, log_path, regexp_match('^ts=\S+ level=([a-z]+)', log_text) AS level,
    jget(fields, '/event') AS event, log_body AS msg,
    jget(fields, '/automatic') AS "automatic", jget(fields, '/cache_losses') AS "cache_losses",
    jget(fields, '/changes') AS "changes",
    jget(fields, '/commit_latency_max_ms') AS "commit_latency_max_ms",
    jget(fields, '/commit_latency_p50_ms') AS "commit_latency_p50_ms",
    jget(fields, '/commit_latency_p99_ms') AS "commit_latency_p99_ms",
    jget(fields, '/connected') AS "connected", jget(fields, '/dirty_backlog') AS "dirty_backlog",
    jget(fields, '/duration_s') AS "duration_s", jget(fields, '/elapsed_s') AS "elapsed_s",
    jget(fields, '/error') AS "error", jget(fields, '/errors') AS "errors",
    jget(fields, '/events_received') AS "events_received", jget(fields, '/failed') AS "failed",
    jget(fields, '/full_syncs') AS "full_syncs", jget(fields, '/keys_read') AS "keys_read",
    jget(fields, '/keys_scanned') AS "keys_scanned",
    jget(fields, '/keys_vanished') AS "keys_vanished",
    jget(fields, '/late_commits') AS "late_commits", jget(fields, '/max_wait_ms') AS "max_wait_ms",
    jget(fields, '/reason') AS "reason", jget(fields, '/reconnects') AS "reconnects",
    jget(fields, '/restored') AS "restored", jget(fields, '/restores') AS "restores",
    jget(fields, '/rows_deleted') AS "rows_deleted",
    jget(fields, '/rows_evicted') AS "rows_evicted",
    jget(fields, '/rows_missing') AS "rows_missing",
    jget(fields, '/rows_unexpired') AS "rows_unexpired",
    jget(fields, '/rows_upserted') AS "rows_upserted",
    jget(fields, '/skipped_existing') AS "skipped_existing",
    jget(fields, '/skipped_expired') AS "skipped_expired",
    jget(fields, '/snapshot_bytes') AS "snapshot_bytes",
    jget(fields, '/snapshot_rows_evicted') AS "snapshot_rows_evicted",
    jget(fields, '/snapshot_rows_live') AS "snapshot_rows_live",
    jget(fields, '/version') AS "version", jget(fields, '/writer_queue') AS "writer_queue",
    jget(fields, '/redis.run_id') AS "redis.run_id", fields
  FROM logfmt_log WHERE log_text REGEXP '^ts=\S+ level=[a-z]+ event='
  UNION ALL
  SELECT
    log_line, log_time, log_level, log_path, level, event, log_body AS msg, "automatic", "cache_losses", "changes",
    "commit_latency_max_ms", "commit_latency_p50_ms", "commit_latency_p99_ms", "connected",
    "dirty_backlog", "duration_s", "elapsed_s", "error", "errors", "events_received", "failed",
    "full_syncs", "keys_read", "keys_scanned", "keys_vanished", "late_commits", "max_wait_ms",
    "reason", "reconnects", "restored", "restores", "rows_deleted", "rows_evicted", "rows_missing",
    "rows_unexpired", "rows_upserted", "skipped_existing", "skipped_expired", "snapshot_bytes",
    "snapshot_rows_evicted", "snapshot_rows_live", "version", "writer_queue", "redis.run_id",
    NULL AS fields
  FROM sessionmirror_json_log;
