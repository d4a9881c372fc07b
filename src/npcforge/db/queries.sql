-- The application's queries, one named block each ("-- name: <name>").
-- Loaded once by npcforge.db.queries; reviewed and EXPLAINed as SQL.

-- name: claim_jobs
-- Take up to $1 runnable jobs, oldest first, skipping rows other workers hold and jobs of the
-- owners in $4 (whose daily budget is spent), and return each with its record (NULL columns
-- when the NPC was deleted) and what its last successful generation was made from (for reuse;
-- NULL when there is none).
WITH picked AS (
  SELECT id
    FROM npcs
   WHERE generation_job_status = 'queued'
     AND generation_job_run_after <= now()
     AND owner_id <> ALL($4::uuid[])
   ORDER BY generation_job_run_after, id
   LIMIT $1
   FOR UPDATE SKIP LOCKED
), claimed AS (
  UPDATE npcs AS n
   SET generation_job_status = 'processing',
       generation_job_attempts = n.generation_job_attempts + 1,
       generation_job_lease_owner = $2,
       generation_job_lease_token = gen_random_uuid(),
       generation_job_lease_expires_at = now() + make_interval(secs => $3),
       generation_job_claimed_at = now()
  FROM picked
 WHERE n.id = picked.id
RETURNING n.id, n.generation_job_id AS job_id, n.generation_job_lease_token AS lease_token,
          n.generation_job_attempts AS attempt, n.generation_job_queued_at AS queued_at,
          n.generation_job_claimed_at AS claimed_at,
          coalesce(n.generation_job_force, false) AS job_force
)
SELECT c.id AS claimed_id, c.job_id, c.lease_token, c.attempt, c.queued_at, c.claimed_at,
       c.job_force, g.input_hash AS last_input_hash, g.xml_sha256 AS last_xml_sha256,
       g.size_bytes AS last_size_bytes, r.*
  FROM claimed c
  -- One record lookup per claimed row. As a plain join the planner (which cannot see how few
  -- rows `claimed` returns) scanned the whole view, building every NPC's shop and keyword
  -- lists, and filtered afterwards: 4 ms for one claim at 200 NPCs, growing with the table.
  -- OFFSET 0 keeps the subquery from being flattened into that join.
  LEFT JOIN LATERAL (
    SELECT * FROM npcforge_npc_records v WHERE v.id = c.id OFFSET 0
  ) r ON true
  -- The same for the reuse row: a primary-key lookup per claimed row, never a scan.
  LEFT JOIN LATERAL (
    SELECT * FROM npcforge_generations lg WHERE lg.npc_id = c.id OFFSET 0
  ) g ON true;

-- name: adopt_lost_claims
-- After a claim whose reply never arrived (the connection died around its commit): the rows
-- worker $1 holds but does not know about, i.e. whose lease tokens are not among $2. The
-- claimer runs this between its own claims, so no claim of its own is in flight.
SELECT id, generation_job_id AS job_id, generation_job_lease_token AS lease_token,
       generation_job_attempts AS attempt, generation_job_queued_at AS queued_at,
       generation_job_claimed_at AS claimed_at,
       coalesce(generation_job_force, false) AS job_force
  FROM npcs
 WHERE generation_job_status = 'processing'
   AND generation_job_lease_owner = $1
   AND generation_job_lease_token <> ALL($2::uuid[]);

-- name: renew_leases
-- One statement renews every running job of a worker ($1 owner, $2 its lease tokens). It returns
-- the tokens that are still this worker's; a token missing from the result was lost (reaped,
-- superseded by a new job, or cancelled). A row locked right now (its own publish holds it, or
-- a force waits on it) is skipped rather than waited for, so one slow upload never delays the
-- other renewals; it is renewed next round.
WITH renewable AS (
  SELECT id
    FROM npcs
   WHERE generation_job_status = 'processing'
     AND generation_job_lease_owner = $1
     AND generation_job_lease_token = ANY($2::uuid[])
     FOR UPDATE SKIP LOCKED
), renewed AS (
  UPDATE npcs AS n
     SET generation_job_lease_expires_at = now() + make_interval(secs => $3)
    FROM renewable AS r
   WHERE n.id = r.id
)
SELECT generation_job_lease_token AS lease_token
  FROM npcs
 WHERE generation_job_status = 'processing'
   AND generation_job_lease_owner = $1
   AND generation_job_lease_token = ANY($2::uuid[]);

-- name: reap_expired_leases
-- Rows whose lease ran out go back to the queue (the attempt stays counted), or fail with
-- WORKER_LOST once $1 attempts are used up; the lost attempt gets its attempt row either way.
-- $3: the leases the calling worker is renewing itself (never taken from under it).
-- A lease that ran out while the server was down is not held against its worker: for $2 (the
-- lease length) seconds after the server starts, nothing is reaped, so every live worker gets
-- to renew first.
WITH expired AS (
  SELECT id, generation_job_id AS job_id, generation_job_attempts AS attempts,
         generation_job_lease_owner AS owner, generation_job_claimed_at AS claimed_at
    FROM npcs
   WHERE generation_job_status = 'processing'
     AND (generation_job_lease_expires_at IS NULL OR generation_job_lease_expires_at < now())
     AND (generation_job_lease_token IS NULL OR generation_job_lease_token <> ALL($3::uuid[]))
     AND pg_postmaster_start_time() + make_interval(secs => $2) < now()
   ORDER BY generation_job_lease_expires_at NULLS FIRST
   LIMIT 500
   FOR UPDATE SKIP LOCKED
), taken AS (
  UPDATE npcs AS n
     SET generation_job_status = CASE WHEN e.attempts >= $1 THEN 'failed' ELSE 'queued' END::generation_job_status,
         generation_job_error = jsonb_build_object(
           'code', 'WORKER_LOST',
           'message', format('the worker running this job stopped renewing its lease (attempt %s of %s)',
                             e.attempts, $1)),
         generation_job_finished_at = CASE WHEN e.attempts >= $1 THEN now() END,
         generation_job_run_after = now(),
         generation_job_lease_owner = NULL,
         generation_job_lease_token = NULL,
         generation_job_lease_expires_at = NULL
    FROM expired AS e
   WHERE n.id = e.id
  RETURNING n.id, n.generation_job_status::text AS status, e.job_id, e.attempts, e.owner,
            e.claimed_at
), recorded AS (
  INSERT INTO npc_generation_attempts (
    job_id, npc_id, attempt, worker_id, started_at, outcome, error_code, error_message,
    duration_ms)
  SELECT t.job_id, t.id, greatest(t.attempts, 1), coalesce(t.owner, 'unknown'),
         coalesce(t.claimed_at, now()),
         CASE WHEN t.status = 'failed' THEN 'failed' ELSE 'retry' END,
         'WORKER_LOST', 'the worker stopped renewing its lease',
         greatest(0, floor(extract(epoch FROM now() - coalesce(t.claimed_at, now())) * 1000))::int
    FROM taken AS t
   WHERE t.job_id IS NOT NULL
)
SELECT id, job_id, status, attempts, owner FROM taken;

-- name: load_npc
SELECT * FROM npcforge_npc_records WHERE id = $1;

-- name: first_npc
-- `npcforge dev`'s sample: the oldest NPC (NULL when there is none).
SELECT id FROM npcs ORDER BY created_at LIMIT 1;

-- name: insert_profile
-- The owner of an imported NPC, created if missing ($1 id, $2 display name).
INSERT INTO profiles (id, display_name) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING;

-- name: insert_npc
-- `npcforge npc import`: the NPC row; its lists follow (insert_shop_item, insert_keyword).
INSERT INTO npcs (owner_id, name, walk_interval, floor_change, health_now, health_max,
  look_type, look_type_id, look_item_id, look_head, look_body, look_legs, look_feet,
  look_addons, look_mount, greet_message, farewell_message, decline_message,
  no_shop_message, on_close_shop_message, focus_enabled, travel_enabled,
  voice_enabled, shop_enabled, shop_mode, keywords_enabled)
VALUES ($1, $2, $3, $4, $5, $6, $7::npc_look_type, $8, $9, $10, $11, $12, $13, $14,
  $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25::npc_shop_mode, $26)
RETURNING id;

-- name: insert_shop_item
-- Rows inserted one after the other keep that order (their position default).
INSERT INTO npc_shop_items (npc_id, list_type, name, item_id, price, subtype, charges,
  real_name, container_item_id)
VALUES ($1, $2::npc_shop_item_list_type, $3, $4, $5, $6, $7, $8, $9);

-- name: insert_keyword
INSERT INTO npc_keywords (npc_id, response, sort_index) VALUES ($1, $2, $3) RETURNING id;

-- name: insert_keyword_phrase
INSERT INTO npc_keyword_phrases (keyword_id, npc_id, phrase) VALUES ($1, $2, $3);

-- name: lock_jobs_for_publish
-- Fencing for a batch: hold every row that is still this claim's while the XML is uploaded; a
-- newer job (force) or a cancel waits. Rows not returned were fenced off. Locks in id order.
SELECT n.generation_job_lease_token AS lease_token
  FROM npcs n
  JOIN unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS j(id, job_id, token)
    ON n.id = j.id AND n.generation_job_id = j.job_id AND n.generation_job_lease_token = j.token
 WHERE n.generation_job_status = 'processing'
 ORDER BY n.id
   FOR UPDATE OF n;

-- name: fail_job
-- End the job failed with the error document ($4), fenced: a row that is no longer this
-- claim's ($1 id, $2 job id, $3 lease token) is left alone.
UPDATE npcs
   SET generation_job_status = 'failed',
       generation_job_error = $4::jsonb,
       generation_job_finished_at = now(),
       generation_job_lease_owner = NULL,
       generation_job_lease_token = NULL,
       generation_job_lease_expires_at = NULL
 WHERE id = $1 AND generation_job_id = $2 AND generation_job_lease_token = $3
   AND generation_job_status = 'processing';

-- name: finish_succeeded_jobs
-- The success path of a publish batch in one statement: each job's row marked succeeded with
-- its file's size (fenced like fail_job: $1 ids, $2 job ids, $3 lease tokens, $4 sizes) and
-- its attempt row written ($5..$20, the columns of insert_attempts) only if the row was; so is
-- the file itself ($21) into npc_xml_versions, which keeps each NPC's newest 5 (see 0007), and,
-- for reuse, what it was made from ($22 the inputs' hash, $23 the file's SHA-256; NULL: not
-- remembered) into npcforge_generations: remembered exactly when the job succeeded.
WITH finished AS (
  UPDATE npcs AS n
     SET generation_job_status = 'succeeded',
         generation_job_error = NULL,
         content_size_bytes = j.size,
         generation_job_finished_at = now(),
         generation_job_lease_owner = NULL,
         generation_job_lease_token = NULL,
         generation_job_lease_expires_at = NULL
    FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::integer[]) AS j(id, job_id, token, size)
   WHERE n.id = j.id AND n.generation_job_id = j.job_id AND n.generation_job_lease_token = j.token
     AND n.generation_job_status = 'processing'
  RETURNING n.id, n.generation_job_id
), remembered AS (
  INSERT INTO npcforge_generations (npc_id, job_id, input_hash, xml_sha256, size_bytes)
  SELECT f.id, f.generation_job_id, m.input_hash, m.xml_sha256, m.size
    FROM finished AS f
    JOIN unnest($1::uuid[], $22::text[], $23::text[], $4::integer[])
         AS m(id, input_hash, xml_sha256, size) ON m.id = f.id
   WHERE m.input_hash IS NOT NULL
  ON CONFLICT (npc_id) DO UPDATE
     SET job_id = excluded.job_id, input_hash = excluded.input_hash,
         xml_sha256 = excluded.xml_sha256, size_bytes = excluded.size_bytes,
         generated_at = now()
), versions AS (
  INSERT INTO npc_xml_versions (npc_id, job_id, xml, size_bytes)
  SELECT f.id, f.generation_job_id, x.xml, octet_length(x.xml)
    FROM finished AS f
    JOIN unnest($1::uuid[], $21::text[]) AS x(id, xml) ON x.id = f.id
   -- A file equal to the newest kept one (a reused file, or the model wrote the same) is not
   -- kept twice: the history would fill with copies and the diff would show nothing. Sizes
   -- first: the kept text is read only when they match.
   WHERE NOT EXISTS (
     SELECT 1 FROM (SELECT w.size_bytes, w.xml FROM npc_xml_versions AS w
                     WHERE w.npc_id = f.id ORDER BY w.id DESC LIMIT 1) AS newest
      WHERE newest.size_bytes = octet_length(x.xml) AND newest.xml = x.xml)
  RETURNING npc_id
), pruned AS (
  -- Those beyond the newest 4 already kept (the one inserted above is the fifth).
  DELETE FROM npc_xml_versions AS v
   USING versions AS f
   WHERE v.npc_id = f.npc_id
     AND v.id < (SELECT min(k.id) FROM (SELECT w.id FROM npc_xml_versions AS w
                                          WHERE w.npc_id = f.npc_id ORDER BY w.id DESC LIMIT 4) AS k)
)
INSERT INTO npc_generation_attempts (
  job_id, npc_id, attempt, worker_id, started_at, outcome, error_code, error_message, model,
  generation_id, request_id, prompt_tokens, completion_tokens, cost, retries, duration_ms)
SELECT a.*
  FROM unnest($5::uuid[], $6::uuid[], $7::integer[], $8::text[], $9::timestamptz[], $10::text[],
              $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::integer[],
              $17::integer[], $18::numeric[], $19::integer[], $20::integer[])
       AS a(job_id, npc_id, attempt, worker_id, started_at, outcome, error_code, error_message,
            model, generation_id, request_id, prompt_tokens, completion_tokens, cost, retries,
            duration_ms)
 WHERE a.job_id IN (SELECT generation_job_id FROM finished);

-- name: requeue_for_retry
-- Hand the job back with its id and attempt count; it runs again after $4 seconds.
UPDATE npcs
   SET generation_job_status = 'queued',
       generation_job_error = $5::jsonb,
       generation_job_run_after = now() + make_interval(secs => $4)
 WHERE id = $1 AND generation_job_id = $2 AND generation_job_lease_token = $3
   AND generation_job_status = 'processing';

-- name: release_jobs
-- Shutdown: hand unfinished jobs back at once; the interrupted attempt is not counted.
UPDATE npcs
   SET generation_job_status = 'queued',
       generation_job_attempts = greatest(generation_job_attempts - 1, 0),
       generation_job_run_after = now()
 WHERE generation_job_status = 'processing'
   AND generation_job_lease_owner = $1
   AND generation_job_lease_token = ANY($2::uuid[])
RETURNING id;

-- name: insert_attempts
-- One row per attempt, for any number of attempts at once (arrays in column order).
INSERT INTO npc_generation_attempts (
  job_id, npc_id, attempt, worker_id, started_at, outcome, error_code, error_message, model,
  generation_id, request_id, prompt_tokens, completion_tokens, cost, retries, duration_ms)
SELECT *
  FROM unnest($1::uuid[], $2::uuid[], $3::integer[], $4::text[], $5::timestamptz[], $6::text[],
              $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::integer[],
              $13::integer[], $14::numeric[], $15::integer[], $16::integer[]);

-- name: committed_attempt_outcome
-- A finalize whose reply was lost: did it commit? Its attempt row was written in the same
-- transaction. (Rows the reaper wrote for this attempt carry WORKER_LOST and do not count.)
-- The claim's own start ($4) tells its row apart from a later claim of the same attempt by the
-- same worker, which happens when a crash of PostgreSQL loses an asynchronously committed claim.
SELECT outcome
  FROM npc_generation_attempts
 WHERE job_id = $1 AND attempt = $2 AND worker_id = $3 AND started_at = $4
   AND outcome IN ('succeeded', 'reused', 'failed', 'retry')
   AND error_code IS DISTINCT FROM 'WORKER_LOST'
 ORDER BY id DESC
 LIMIT 1;

-- name: next_run_after
-- When the earliest delayed job becomes runnable (NULL when nothing is queued), leaving out the
-- jobs of the owners in $1 (whose daily budget is spent).
SELECT min(generation_job_run_after) - now() AS wait
  FROM npcs
 WHERE generation_job_status = 'queued'
   AND owner_id <> ALL($1::uuid[]);

-- name: queue_stats
-- Depth counts queued jobs (capped, so a huge backlog costs a bounded scan); the age only counts
-- jobs already due (a job in a long backoff is not "stuck") and reads one index entry.
SELECT (SELECT count(*) FROM (SELECT 1 FROM npcs WHERE generation_job_status = 'queued'
          LIMIT 100000) AS capped) AS depth,
       coalesce(extract(epoch FROM now() - (
         SELECT min(generation_job_run_after) FROM npcs
          WHERE generation_job_status = 'queued' AND generation_job_run_after <= now())), 0)::float8
         AS oldest_age;

-- name: worker_db_ping
SELECT 1;

-- name: enqueue
-- `npcforge enqueue NPC_ID...`: every NPC of $1 in order, $2 force. One statement: the first NPC
-- that is missing or busy (without force) raises, and nothing is queued.
SELECT t.npc_id, npcforge_enqueue(t.npc_id, $2) AS job_id
  FROM unnest($1::uuid[]) WITH ORDINALITY AS t(npc_id, ord)
 ORDER BY t.ord;

-- name: enqueue_where
-- `npcforge enqueue --all / --where-status`: every live NPC whose job status is among $1 (NULL:
-- any; 'none': never had a job); $2 force also replaces queued and processing jobs. One
-- statement, so one NOTIFY. A row comes back for each NPC selected, with job_id NULL when it
-- was skipped as busy; the busy test is repeated on the row the UPDATE locks.
WITH chosen AS (
  SELECT id, created_at
    FROM npcs
   WHERE deleted_at IS NULL
     AND ($1::text[] IS NULL OR coalesce(generation_job_status::text, 'none') = ANY($1::text[]))
), queued AS (
  UPDATE npcs AS n
     SET generation_job_status = 'queued', generation_job_id = gen_random_uuid(),
         generation_job_force = $2
    FROM chosen AS c
   WHERE n.id = c.id AND n.deleted_at IS NULL
     AND ($2 OR n.generation_job_status IS NULL
          OR n.generation_job_status NOT IN ('queued', 'processing'))
  RETURNING n.id, n.generation_job_id
)
SELECT c.id AS npc_id, q.generation_job_id AS job_id
  FROM chosen AS c
  LEFT JOIN queued AS q ON q.id = c.id
 ORDER BY c.created_at, c.id;

-- name: enqueue_by_update
-- The plain-SQL way, what a user types in psql (`npcforge demo` enqueues so); the trigger gives
-- the row its job id.
UPDATE npcs SET generation_job_status = 'queued' WHERE id = $1
RETURNING generation_job_id AS job_id;

-- name: job_status
SELECT n.id AS npc_id, n.owner_id, n.deleted_at, n.generation_job_id AS job_id,
       n.generation_job_status::text AS status, n.generation_job_started_at AS started_at,
       n.generation_job_error AS error, n.content_size_bytes,
       coalesce(n.generation_job_updated_at, n.generation_job_started_at) AS updated_at,
       n.generation_job_attempts AS attempts, n.generation_job_run_after AS run_after,
       n.generation_job_finished_at AS finished_at
  FROM npcs n
 WHERE n.id = $1;

-- name: start_job_for_owner
-- The API's enqueue: one statement, conflict decided under the row lock.
WITH target AS (
  SELECT id, generation_job_status
    FROM npcs
   WHERE id = $1 AND deleted_at IS NULL AND ($2::uuid IS NULL OR owner_id = $2)
     FOR UPDATE
), started AS (
  UPDATE npcs AS n
     SET generation_job_status = 'queued', generation_job_id = gen_random_uuid(),
         generation_job_force = $3
    FROM target t
   WHERE n.id = t.id
     AND ($3 OR t.generation_job_status IS NULL
          OR t.generation_job_status NOT IN ('queued', 'processing'))
  RETURNING n.generation_job_id, n.generation_job_started_at
)
SELECT (SELECT count(*) FROM target) AS found,
       (SELECT generation_job_status::text FROM target) AS previous_status,
       s.generation_job_id AS job_id, s.generation_job_started_at AS submitted_at
  FROM (SELECT 1) AS one
  LEFT JOIN started s ON true;

-- name: jobs_list
SELECT n.id AS npc_id, n.owner_id, n.name, n.generation_job_id AS job_id,
       n.generation_job_status::text AS status, n.generation_job_attempts AS attempts,
       n.generation_job_error ->> 'code' AS error_code, n.generation_job_started_at AS started_at,
       n.generation_job_updated_at AS updated_at, n.generation_job_lease_owner AS worker
  FROM npcs n
 WHERE n.generation_job_status IS NOT NULL
   AND ($1::generation_job_status IS NULL OR n.generation_job_status = $1::generation_job_status)
 ORDER BY n.generation_job_updated_at DESC NULLS LAST, n.id
 LIMIT $2;

-- name: jobs_retry_one
-- A failed job is queued again (the trigger gives it a new id).
UPDATE npcs SET generation_job_status = 'queued'
 WHERE id = $1 AND deleted_at IS NULL AND generation_job_status = 'failed'
RETURNING id AS npc_id, generation_job_id AS job_id;

-- name: jobs_retry_failed
-- Every failed job, or those that failed with code $1. A job an operator cancelled stays
-- cancelled unless $1 names CANCELLED.
UPDATE npcs SET generation_job_status = 'queued'
 WHERE deleted_at IS NULL AND generation_job_status = 'failed'
   AND CASE WHEN $1::text IS NULL
            THEN generation_job_error ->> 'code' IS DISTINCT FROM 'CANCELLED'
            ELSE generation_job_error ->> 'code' = $1 END
RETURNING id AS npc_id, generation_job_id AS job_id;

-- name: jobs_failed_codes
-- The error codes failed jobs hold now (codes written by other systems included).
SELECT DISTINCT generation_job_error ->> 'code' AS code
  FROM npcs
 WHERE generation_job_status = 'failed' AND generation_job_error ->> 'code' IS NOT NULL;

-- name: jobs_cancel
-- Ends a queued or running job as failed/CANCELLED; a running worker sees its lease vanish at
-- its next renewal and stops.
UPDATE npcs
   SET generation_job_status = 'failed',
       generation_job_error = jsonb_build_object('code', 'CANCELLED',
         'message', 'the job was cancelled by an operator'),
       generation_job_finished_at = now(),
       generation_job_lease_owner = NULL,
       generation_job_lease_token = NULL,
       generation_job_lease_expires_at = NULL
 WHERE id = $1 AND generation_job_status IN ('queued', 'processing')
RETURNING id AS npc_id, generation_job_id AS job_id;

-- name: list_generation_jobs
-- The API's job history of one NPC, newest first: the current job (listed even before its first
-- attempt) and every earlier job that left attempts. $1 npc, $2 owner (NULL = any owner),
-- $3/$4 the keyset cursor (sort_at, job_id) of the previous page's last row or NULL, $5 rows.
-- One statement, one snapshot; `found` is 0 when the NPC is missing, foreign or soft-deleted.
WITH npc AS (
  SELECT id, generation_job_id, generation_job_status, generation_job_started_at,
         coalesce(generation_job_updated_at, generation_job_started_at) AS updated_at,
         generation_job_error
    FROM npcs
   WHERE id = $1 AND deleted_at IS NULL AND ($2::uuid IS NULL OR owner_id = $2)
), past AS (
  SELECT a.job_id,
         min(a.started_at) AS started_at,
         max(a.finished_at) AS updated_at,
         bool_or(a.outcome = 'succeeded') AS succeeded,
         (array_agg(a.outcome ORDER BY a.attempt DESC, a.id DESC))[1] AS last_outcome,
         (array_agg(a.error_code ORDER BY a.attempt DESC, a.id DESC))[1] AS last_error_code,
         (array_agg(a.error_message ORDER BY a.attempt DESC, a.id DESC))[1] AS last_error_message,
         jsonb_agg(jsonb_build_object(
           'attempt', a.attempt, 'outcome', a.outcome, 'startedAt', a.started_at,
           'finishedAt', a.finished_at, 'durationMs', a.duration_ms, 'model', a.model,
           'errorCode', a.error_code, 'errorMessage', a.error_message,
           'promptTokens', a.prompt_tokens, 'completionTokens', a.completion_tokens,
           'cost', a.cost, 'retries', a.retries) ORDER BY a.attempt, a.id) AS attempts
    FROM npc_generation_attempts a
   WHERE a.npc_id = (SELECT id FROM npc)
   GROUP BY a.job_id
), jobs AS (
  SELECT coalesce(c.generation_job_id, p.job_id) AS job_id,
         c.generation_job_id IS NOT NULL AS current,
         CASE WHEN c.generation_job_id IS NOT NULL
                THEN coalesce(c.generation_job_status::text, 'queued')
              WHEN p.succeeded THEN 'succeeded'
              WHEN p.last_outcome = 'failed' THEN 'failed'
              ELSE 'superseded' END AS status,
         coalesce(c.generation_job_started_at, p.started_at) AS started_at,
         coalesce(c.updated_at, p.updated_at) AS updated_at,
         CASE WHEN c.generation_job_id IS NOT NULL THEN c.generation_job_error
              WHEN p.last_outcome = 'failed' AND NOT p.succeeded THEN jsonb_build_object(
                'code', coalesce(p.last_error_code, 'INTERNAL'),
                'message', coalesce(p.last_error_message, 'The attempt failed.'))
         END AS error,
         coalesce(p.attempts, '[]'::jsonb) AS attempts,
         coalesce(c.generation_job_started_at, p.started_at, 'epoch'::timestamptz) AS sort_at
    FROM past AS p
    FULL JOIN (SELECT * FROM npc WHERE generation_job_id IS NOT NULL) AS c
      ON p.job_id = c.generation_job_id
), page AS (
  SELECT *
    FROM jobs
   WHERE $3::timestamptz IS NULL OR (sort_at, job_id) < ($3::timestamptz, $4::uuid)
   ORDER BY sort_at DESC, job_id DESC
   LIMIT $5
)
SELECT (SELECT count(*) FROM npc) AS found, page.job_id, page.current, page.status,
       page.started_at, page.updated_at, page.error, page.attempts, page.sort_at
  FROM (SELECT 1) AS one
  LEFT JOIN page ON true
 ORDER BY page.sort_at DESC, page.job_id DESC;

-- name: rate_acquire
-- Fleet rate gate: take the next upstream call slot ($1 limiter, $2 cap per minute, $3 successes
-- since the last call, $4 longest wait worth reserving); see 0003_rate_limit.sql.
SELECT wait_s, granted, seq, pause_s, rate
  FROM npcforge_rate_acquire($1, $2, $3, $4);

-- name: rate_pause
-- Fleet rate gate: the upstream rate-limited us for $2 seconds; pauses every worker (NOTIFY).
SELECT pause_s, seq, rate_factor
  FROM npcforge_rate_pause($1, $2);

-- name: rate_state
-- Fleet rate gate: the pause in force, read when the gate (re)connects.
SELECT pause_seq AS seq,
       greatest(0.0, coalesce(extract(epoch FROM paused_until - clock_timestamp()), 0.0))::float8
         AS pause_s
  FROM npcforge_rate_limits
 WHERE name = $1;

-- name: job_status_many
-- The API's polls, coalesced: `job_status` for every NPC in $1 at once (same columns).
SELECT n.id AS npc_id, n.owner_id, n.deleted_at, n.generation_job_id AS job_id,
       n.generation_job_status::text AS status, n.generation_job_started_at AS started_at,
       n.generation_job_error AS error, n.content_size_bytes,
       coalesce(n.generation_job_updated_at, n.generation_job_started_at) AS updated_at,
       n.generation_job_attempts AS attempts
  FROM npcs n
 WHERE n.id = ANY($1::uuid[]);

-- name: doctor_queue
-- `npcforge doctor`: jobs that can never be claimed (queued with no run-after, e.g. written
-- with the enqueue trigger disabled), jobs left running without a lease (by the system npcforge
-- replaced; the reaper takes them back), and Supabase Database Webhooks still on `npcs` (the
-- original's worker would run every job a second time).
SELECT count(*) FILTER (WHERE generation_job_status = 'queued') AS queued,
       count(*) FILTER (WHERE generation_job_status = 'queued'
                          AND generation_job_run_after IS NULL) AS unclaimable,
       count(*) FILTER (WHERE generation_job_status = 'processing'
                          AND generation_job_lease_expires_at IS NULL) AS unleased,
       (SELECT coalesce(array_agg(t.tgname::text ORDER BY t.tgname), '{}')
          FROM pg_trigger t
          JOIN pg_proc p ON p.oid = t.tgfoid
         WHERE t.tgrelid = 'npcs'::regclass AND NOT t.tgisinternal
           AND p.pronamespace::regnamespace::text = 'supabase_functions') AS webhooks
  FROM npcs;

-- name: migrations_lock
-- `npcforge migrate`: one migration at a time, fleet-wide, until the transaction ends (a
-- transaction lock also holds behind a transaction-mode pooler).
SELECT pg_advisory_xact_lock($1);

-- name: migrations_ledger
-- The ledger of applied migrations. On Supabase every table in `public` is reachable through
-- the REST API: with RLS on and no policy, only the owner (and roles that bypass RLS) can read
-- or change it.
CREATE TABLE IF NOT EXISTS npcforge_schema_migrations (
  version text PRIMARY KEY,
  name text NOT NULL,
  checksum text NOT NULL,
  applied_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE npcforge_schema_migrations ENABLE ROW LEVEL SECURITY;

-- name: migrations_ledger_exists
SELECT to_regclass('npcforge_schema_migrations') IS NOT NULL;

-- name: migrations_applied
SELECT version, checksum FROM npcforge_schema_migrations;

-- name: migration_applied
INSERT INTO npcforge_schema_migrations (version, name, checksum) VALUES ($1, $2, $3);

-- name: spend_reserve
-- Cost control: admit one model-calling attempt and reserve its estimated cost, or refuse it at
-- a cap ($1 npc, $2 job, $3 attempt, $4 model, $5 estimate, $6 fleet cap, $7 owner cap; NULL:
-- none); see 0008_cost.sql.
SELECT admitted, scope, fleet_spent, owner_spent
  FROM npcforge_spend_reserve($1, $2, $3, $4, $5, $6, $7);

-- name: spend_state
-- Cost control: today's (UTC) spend of the fleet (settled plus reserved), the part of it still
-- reserved for calls in flight, and the owners whose own spend reached $1 (NULL: no owner cap).
SELECT coalesce((SELECT amount FROM npcforge_spend_days
                  WHERE day = (now() AT TIME ZONE 'UTC')::date AND payer = 'fleet'), 0)
         AS fleet_spent,
       coalesce((SELECT sum(estimate) FROM npcforge_spend
                  WHERE settled_at IS NULL AND day = (now() AT TIME ZONE 'UTC')::date), 0)
         AS fleet_reserved,
       ARRAY(SELECT payer::uuid FROM npcforge_spend_days
              WHERE day = (now() AT TIME ZONE 'UTC')::date AND payer <> 'fleet'
                AND $1::numeric IS NOT NULL AND amount >= $1::numeric
              ORDER BY payer) AS owners_over;

-- name: spend_of_owners
-- Cost control: today's spend of the fleet and of each owner in $1 (rows only where spent).
SELECT payer, amount
  FROM npcforge_spend_days
 WHERE day = (now() AT TIME ZONE 'UTC')::date
   AND (payer = 'fleet' OR payer = ANY($1::text[]));

-- name: spend_of_npc_owner
-- The API's start: the owner of NPC $1 (NULL when missing, deleted or not $2's) and what that
-- owner spent today.
SELECT n.owner_id, coalesce(d.amount, 0) AS spent
  FROM npcs n
  LEFT JOIN npcforge_spend_days d
    ON d.day = (now() AT TIME ZONE 'UTC')::date AND d.payer = n.owner_id::text
 WHERE n.id = $1 AND n.deleted_at IS NULL AND ($2::uuid IS NULL OR n.owner_id = $2);

-- name: spend_held_jobs
-- Cost control: queued jobs waiting on a budget: all of them when the fleet's is spent ($1),
-- else those of the owners in $2.
SELECT count(*) AS held
  FROM npcs
 WHERE generation_job_status = 'queued'
   AND ($1 OR owner_id = ANY($2::uuid[]));

-- name: spend_costs
-- `npcforge costs`: model spend from the attempt rows since $1, per UTC day, model and owner.
SELECT (a.started_at AT TIME ZONE 'UTC')::date AS day, a.model, n.owner_id,
       count(*) AS attempts,
       count(*) FILTER (WHERE a.outcome = 'reused') AS reused,
       coalesce(sum(a.cost), 0) AS cost,
       coalesce(sum(a.prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(a.completion_tokens), 0)::bigint AS completion_tokens
  FROM npc_generation_attempts a
  LEFT JOIN npcs n ON n.id = a.npc_id
 WHERE a.started_at >= $1
 GROUP BY 1, 2, 3
 ORDER BY 1 DESC, 2, 3;

-- name: generation_last
-- Reuse: what the NPC's last successful generation was made from, and its file (a claim
-- brings it along; this is for a job adopted after a lost claim reply).
SELECT input_hash, xml_sha256, size_bytes FROM npcforge_generations WHERE npc_id = $1;
