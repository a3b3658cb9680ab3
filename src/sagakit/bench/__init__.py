"""`sagakit bench`: sagakit side by side with plain Celery, on the configured services.

Its sagas and tasks (`bench.sagas`) are registered only while a bench runs.
"""
