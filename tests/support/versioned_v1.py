"""Version 1 of the ``ordering`` saga: a, then b."""

from sagakit import Saga
from tests.support.versioned import step

ordering = Saga("ordering", [step("a"), step("b")], version=1)
