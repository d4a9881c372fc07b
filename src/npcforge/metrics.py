"""Prometheus metrics of the worker and the API (one registry per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.claimed = Counter("npcforge_jobs_claimed", "Jobs claimed.", registry=r)
        self.succeeded = Counter(
            "npcforge_jobs_succeeded", "Jobs that ended succeeded.", registry=r
        )
        self.failed = Counter(
            "npcforge_jobs_failed", "Jobs that ended failed, by error code.", ["code"], registry=r
        )
        self.retried = Counter(
            "npcforge_jobs_retried", "Attempts handed back to the queue to retry.", registry=r
        )
        self.upload_retries = Counter(
            "npcforge_upload_retries",
            "Failed uploads of a validated XML tried again in place (no new model call).",
            registry=r,
        )
        self.rescued = Counter(
            "npcforge_jobs_rescued", "Jobs taken back from workers whose lease expired.", registry=r
        )
        self.released = Counter(
            "npcforge_jobs_released",
            "Unfinished jobs handed back to the queue at shutdown (attempt not counted).",
            registry=r,
        )
        self.lease_lost = Counter(
            "npcforge_leases_lost", "Running jobs whose lease was lost (reaped, superseded).",
            registry=r,
        )  # fmt: skip
        self.discarded = Counter(
            "npcforge_results_discarded", "Results not published because the job was fenced off.",
            registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "npcforge_jobs_in_flight", "Jobs running in this worker.", registry=r
        )
        self.queue_depth = Gauge("npcforge_queue_depth", "Queued jobs (all workers).", registry=r)
        self.oldest_age = Gauge(
            "npcforge_queue_oldest_age_seconds", "Age of the oldest queued job.", registry=r
        )
        self.pickup = Histogram(
            "npcforge_pickup_latency_seconds", "Queued to claimed.", buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.provider_latency = Histogram(
            "npcforge_provider_latency_seconds", "Generation time per attempt.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.upload_latency = Histogram(
            "npcforge_upload_latency_seconds", "Storage upload time.", buckets=LATENCY_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.end_to_end = Histogram(
            "npcforge_job_duration_seconds", "Job start (queued) to its final status.",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.notifications = Counter(
            "npcforge_notifications", "NOTIFY messages received on npcforge_jobs.", registry=r
        )
        self.notify_pickups = Counter(
            "npcforge_notify_pickups", "Jobs claimed right after a notification.", registry=r
        )
        self.sweep_pickups = Counter(
            "npcforge_sweep_pickups", "Jobs claimed by the periodic sweep (no notification).",
            registry=r,
        )  # fmt: skip
        self.listener_up = Gauge(
            "npcforge_listener_up", "1 while the LISTEN connection is healthy.", registry=r
        )
        self.listener_reconnects = Counter(
            "npcforge_listener_reconnects", "LISTEN connection re-establishments.", registry=r
        )
        self.loop_crashes = Counter(
            "npcforge_worker_loop_crashes", "Unexpected errors that restarted a worker loop.",
            ["loop"], registry=r,
        )  # fmt: skip
        self.reused = Counter(
            "npcforge_jobs_reused",
            "Jobs that succeeded with the NPC's stored file (unchanged inputs), no model call.",
            registry=r,
        )
        self.budget_limit = Gauge(
            "npcforge_budget_limit_usd", "NPCFORGE_DAILY_BUDGET_USD (0: no fleet cap).", registry=r
        )
        self.budget_spent = Gauge(
            "npcforge_budget_spent_usd",
            "Model spend of the fleet today (UTC), settled plus reserved for calls in flight; "
            "counted while a daily budget is set.",
            registry=r,
        )
        self.budget_remaining = Gauge(
            "npcforge_budget_remaining_usd", "What the fleet's daily budget still allows today.",
            registry=r,
        )  # fmt: skip
        self.budget_held_jobs = Gauge(
            "npcforge_budget_held_jobs", "Queued jobs waiting for a daily budget (fleet or owner).",
            registry=r,
        )  # fmt: skip
        self.budget_refusals = Counter(
            "npcforge_budget_refusals",
            "Attempts refused at admission by a daily budget (handed back uncounted), by scope.",
            ["scope"], registry=r,
        )  # fmt: skip
        self.db_errors = Counter(
            "npcforge_db_errors", "Database errors survived by the worker's loops.", ["loop"],
            registry=r,
        )  # fmt: skip
