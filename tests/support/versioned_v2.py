"""Version 2 of the ``ordering`` saga: a, then c (new), then b."""

from sagakit import Saga
from tests.support.versioned import step

ordering = Saga("ordering", [step("a"), step("c"), step("b")], version=2)
