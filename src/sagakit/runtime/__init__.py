"""Celery glue: the app configuration, step tasks, dispatchers and worker processes."""
