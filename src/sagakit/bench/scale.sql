-- A saga log of :sagas sagas for `sagakit bench --scale` (PostgreSQL), in one script.
-- 97 % settled over the last 30 days (90 % completed, 6 % compensated, 1 % failed), the
-- last 3 % in flight (started in the last 10 minutes); one step row per saga and one attempt
-- outcome per saga in the history.
WITH g AS (
    SELECT i,
           CASE WHEN i % 10 < 7 THEN 'slam' ELSE 'order' END AS saga_type,
           CASE
               WHEN i > :sagas * 0.97 THEN CASE WHEN i % 3 = 0 THEN 'compensating' ELSE 'running' END
               WHEN i % 100 < 93 THEN 'completed'
               WHEN i % 100 < 99 THEN 'compensated'
               ELSE 'failed'
           END AS status,
           CASE
               WHEN i > :sagas * 0.97
                   THEN now() - interval '10 minutes' * (:sagas - i) / (:sagas * 0.03)
               ELSE now() - interval '30 days' + interval '30 days' * i / :sagas
                    - interval '1 hour'
           END AS created_at
    FROM generate_series(1, :sagas) AS i
)
INSERT INTO sagakit_sagas (
    saga_id, saga_type, definition_version, status, input, idempotency_key, stage, seq,
    pivot_passed, reason, failed_step, cause, cause_step, open_steps, busy_steps, sources,
    created_at, updated_at, finished_at, deadline_at, version
)
SELECT 'g' || lpad(to_hex(i), 15, '0'), saga_type, 1, status,
       jsonb_build_object('robots', 1 + i % 4, 'area', 'hall-' || (i % 97)),
       CASE WHEN i % 4 = 0 THEN 'key-' || i END,
       3, 4, false,
       CASE WHEN status IN ('compensated', 'failed') THEN 'step ''s4'' failed: no' END,
       CASE WHEN status IN ('compensated', 'failed') THEN 's4' END,
       NULL, NULL,
       CASE WHEN status IN ('running', 'compensating') THEN 1 ELSE 0 END,
       CASE WHEN status IN ('running', 'compensating') THEN 1 ELSE 0 END,
       NULL,
       created_at, created_at + interval '2 seconds',
       CASE WHEN status IN ('running', 'compensating') THEN NULL
            ELSE created_at + interval '1 second' * (1 + i % 60) END,
       CASE WHEN status IN ('running', 'compensating') THEN now() + interval '15 minutes' END,
       4
FROM g;

INSERT INTO sagakit_steps (
    saga_id, name, step, stage, idx, item, status, attempt, attempt_base, comp_attempt,
    comp_base, ord, maybe_effect, error, output, task_id, task_name, queue, not_before,
    sent_at, send_count
)
SELECT saga_id, 's4', 's4', 3, NULL, NULL,
       CASE status
           WHEN 'running' THEN 'running'
           WHEN 'compensating' THEN 'compensating'
           WHEN 'completed' THEN 'succeeded'
           ELSE 'failed'
       END,
       1, 0, CASE WHEN status = 'compensating' THEN 1 ELSE 0 END, 0, NULL, false, NULL,
       CASE WHEN status = 'completed' THEN jsonb_build_object('ok', true) END,
       saga_id || '.04.s4.' || CASE WHEN status = 'compensating' THEN 'comp' ELSE 'fwd' END
           || '.1',
       'svc.s4', CASE WHEN saga_type = 'slam' THEN 'robots' ELSE 'orders' END,
       created_at, created_at, 1
FROM sagakit_sagas;

INSERT INTO sagakit_transitions (
    saga_id, event, from_status, to_status, step, attempt, detail, at, started_at
)
SELECT saga_id,
       CASE WHEN status IN ('compensated', 'failed') THEN 'step_failed' ELSE 'step_completed' END,
       'running', status, 's4', 1,
       jsonb_build_object('task_id', saga_id || '.04.s4.fwd.1', 'worker', 'w1@host'),
       coalesce(finished_at, created_at + interval '1 second'), created_at
FROM sagakit_sagas
WHERE status NOT IN ('running', 'compensating');
