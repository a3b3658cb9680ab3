"""The shop's Celery configuration, as a ``celeryconfig`` module (``config_from_object``)."""

task_routes = {
    "shop.charge": {"queue": "payments"},
    "shop.refund": {"queue": "payments"},
    "shop.*": {"queue": "shop"},
}
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_ignore_result = True
