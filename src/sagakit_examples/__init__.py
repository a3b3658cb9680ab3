"""Example applications built on sagakit, shipped in its distribution.

They use only sagakit's public API, as any application would; sagakit never imports them.
``SAGAKIT_IMPORTS=sagakit_examples.slam`` (the default) loads the SLAM exploration mission.
"""
