"""A service's own Celery app with no access to the saga log (``celery -A`` target).

Its step tasks still run as saga steps: they send their outcomes to the ``sagakit`` queue,
where a sagakit worker records them.
"""

from __future__ import annotations

import os

from sagakit.runtime.app import make_celery

app = make_celery(os.environ["SAGAKIT_BROKER_URL"], name="remote-service")
app.conf.imports = ["tests.support.workload"]
