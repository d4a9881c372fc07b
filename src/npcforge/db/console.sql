-- The web console's queries and the worker roster ("-- name: <name>"), loaded with queries.sql.
-- Every read is bounded: counts stop at a cap ($n "cap" parameters; the page shows "cap+"),
-- lists have a LIMIT and walk an index. $owner NULL means every owner (the service role).

-- name: console_custom_plans
-- The console's reads take an optional owner ($1 NULL: every owner). A generic plan would have
-- to serve both; planned for the values at hand, "NULL OR owner_id = $1" folds away.
SET LOCAL plan_cache_mode = force_custom_plan;

-- name: console_status_counts
-- Jobs per status, and those of them that reached it over the last hour and day; each count
-- stops at $2 + 1 rows, so the page can say "more than $2" (index-only for every owner).
SELECT s.status::text AS status, w.label,
       (SELECT count(*) FROM (
          SELECT 1 FROM npcs n
           WHERE n.generation_job_status = s.status AND n.deleted_at IS NULL
             AND (w.span IS NULL OR n.generation_job_updated_at > now() - w.span)
             AND ($1::uuid IS NULL OR n.owner_id = $1)
           LIMIT $2 + 1) AS capped) AS jobs
  FROM unnest(enum_range(NULL::generation_job_status)) AS s(status)
 CROSS JOIN (VALUES ('all', NULL::interval), ('hour', interval '1 hour'),
                    ('day', interval '1 day')) AS w(label, span)
 WHERE w.label = 'all' OR s.status IN ('succeeded', 'failed');

-- name: console_failures_by_code
-- The newest failed jobs (at most $2) grouped by error code.
SELECT coalesce(f.code, 'INTERNAL') AS code, count(*) AS jobs, max(f.at) AS latest
  FROM (SELECT n.generation_job_error ->> 'code' AS code, n.generation_job_updated_at AS at
          FROM npcs n
         WHERE n.generation_job_status = 'failed' AND n.deleted_at IS NULL
           AND ($1::uuid IS NULL OR n.owner_id = $1)
         ORDER BY n.generation_job_updated_at DESC
         LIMIT $2) AS f
 GROUP BY 1
 ORDER BY count(*) DESC, 1;

-- name: console_upstream
-- The fleet's upstream gates (0003): paused after a 429, and the rate they run at.
SELECT name, paused_until,
       greatest(0.0, coalesce(extract(epoch FROM paused_until - clock_timestamp()), 0.0))::float8
         AS paused_s,
       rate_factor, updated_at
  FROM npcforge_rate_limits
 ORDER BY name
 LIMIT 20;

-- name: console_workers
-- Workers alive now (their heartbeat has not expired).
SELECT worker_id, hostname, pid, concurrency, in_flight, state, started_at, seen_at
  FROM npcforge_workers
 WHERE expires_at > now()
 ORDER BY started_at, worker_id
 LIMIT 100;

-- name: console_running_jobs
-- Jobs running now, with the worker holding each (the partial index of leases; at most $2).
SELECT n.id AS npc_id, n.name, n.generation_job_id AS job_id, n.generation_job_lease_owner AS worker,
       n.generation_job_claimed_at AS claimed_at, n.generation_job_attempts AS attempts
  FROM npcs n
 WHERE n.generation_job_status = 'processing'
   AND ($1::uuid IS NULL OR n.owner_id = $1)
 ORDER BY n.generation_job_lease_expires_at
 LIMIT $2;

-- name: console_jobs_page
-- The jobs list: newest change first, after the keyset cursor ($5 time, $6 npc id) if any.
-- $1 owner, $2 status, $3 error code, $4 name prefix (lower case, LIKE-escaped), $7 rows.
-- Model and cost are the current job's, from its attempt rows: looked up for the page's rows
-- only, after the LIMIT.
SELECT p.*, a.model, a.cost
  FROM (
    SELECT n.id AS npc_id, n.name, n.generation_job_id AS job_id,
           n.generation_job_status::text AS status, n.generation_job_attempts AS attempts,
           n.generation_job_error ->> 'code' AS error_code,
           n.generation_job_started_at AS started_at, n.generation_job_claimed_at AS claimed_at,
           n.generation_job_finished_at AS finished_at, n.generation_job_updated_at AS updated_at
      FROM npcs n
     WHERE n.generation_job_status IS NOT NULL AND n.deleted_at IS NULL
       AND ($1::uuid IS NULL OR n.owner_id = $1)
       AND ($2::generation_job_status IS NULL OR n.generation_job_status = $2::generation_job_status)
       AND ($3::text IS NULL OR (n.generation_job_status = 'failed'
                                 AND n.generation_job_error ->> 'code' = $3))
       AND ($4::text IS NULL OR lower(n.name) LIKE $4 || '%')
       AND ($5::timestamptz IS NULL
            OR (n.generation_job_updated_at, n.id) < ($5::timestamptz, $6::uuid))
     ORDER BY n.generation_job_updated_at DESC, n.id DESC
     LIMIT $7
  ) AS p
  LEFT JOIN LATERAL (
    SELECT (array_agg(x.model ORDER BY x.attempt DESC, x.id DESC)
              FILTER (WHERE x.model IS NOT NULL))[1] AS model,
           sum(x.cost) AS cost
      FROM npc_generation_attempts x
     WHERE x.job_id = p.job_id
  ) a ON true
 ORDER BY p.updated_at DESC, p.npc_id DESC;

-- name: console_job_changes
-- Jobs whose state changed after $1 (the events feed), oldest change first, at most $2.
SELECT n.id AS npc_id, n.owner_id, n.name, n.generation_job_id AS job_id,
       n.generation_job_status::text AS status, n.generation_job_attempts AS attempts,
       n.generation_job_error ->> 'code' AS error_code,
       n.generation_job_started_at AS started_at, n.generation_job_claimed_at AS claimed_at,
       n.generation_job_finished_at AS finished_at, n.generation_job_updated_at AS updated_at
  FROM npcs n
 WHERE n.generation_job_status IS NOT NULL AND n.deleted_at IS NULL
   AND n.generation_job_updated_at > $1
 ORDER BY n.generation_job_updated_at, n.id
 LIMIT $2;

-- name: console_latest_change
-- Where the events feed starts: the newest job change now.
SELECT coalesce(max(generation_job_updated_at), now()) AS at
  FROM npcs
 WHERE generation_job_status IS NOT NULL;

-- name: console_npc_attempts
-- The NPC's attempts, newest first (at most $2).
SELECT a.job_id, a.attempt, a.worker_id, a.started_at, a.finished_at, a.outcome, a.error_code,
       a.error_message, a.model, a.generation_id, a.request_id, a.prompt_tokens,
       a.completion_tokens, a.cost, a.retries, a.duration_ms
  FROM npc_generation_attempts a
 WHERE a.npc_id = $1
 ORDER BY a.started_at DESC, a.id DESC
 LIMIT $2;

-- name: console_xml_versions
-- The NPC's kept XML files, newest first (at most $2).
SELECT id, job_id, xml, size_bytes, created_at
  FROM npc_xml_versions
 WHERE npc_id = $1
 ORDER BY id DESC
 LIMIT $2;

-- name: worker_heartbeat
-- A worker says it is alive ($1 id, $2 host, $3 pid, $4 concurrency, $5 in flight, $6 state)
-- for $7 seconds; rows of workers whose time ran out (they died) go at the same time.
WITH expired AS (
  DELETE FROM npcforge_workers WHERE expires_at < now() AND worker_id <> $1
)
INSERT INTO npcforge_workers AS w (worker_id, hostname, pid, concurrency, in_flight, state,
                                   expires_at)
VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
ON CONFLICT (worker_id) DO UPDATE
   SET in_flight = excluded.in_flight, state = excluded.state, seen_at = now(),
       expires_at = excluded.expires_at;

-- name: worker_gone
-- A worker that drained takes its row with it.
DELETE FROM npcforge_workers WHERE worker_id = $1;
