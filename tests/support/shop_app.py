"""A shop's own Celery app (``celery -A tests.support.shop_app worker``).

Its task module (`shop_tasks`) knows nothing of sagas; the one sagakit line is here.
"""

from __future__ import annotations

import os

from celery import Celery

import sagakit

app = Celery("shop", broker=os.environ["SHOP_BROKER_URL"])
app.config_from_object("tests.support.shop_config")
app.conf.imports = ["tests.support.shop_tasks"]
sagakit.adopt(app)
