"""An order saga over the shop's existing tasks (`shop_tasks`), unchanged."""

from __future__ import annotations

from sagakit import RetryPolicy, Saga, Step, StepKind
from tests.support.shop_config import task_routes

ONCE = RetryPolicy(max_attempts=1)

order = Saga(
    "order",
    [
        Step(
            "reserve",
            action="shop.reserve",
            compensation="shop.release",
            args={"sku": "input.sku", "qty": "input.qty"},
            compensation_args={"reservation": "reserve.reservation_id"},
            retry=ONCE,
            timeout=20,
        ),
        Step(
            "charge",
            action="shop.charge",
            compensation="shop.refund",
            args={"order_id": "saga_id", "amount": "input.amount"},
            compensation_args={"charge_id": "charge.charge_id"},
            retry=ONCE,
            timeout=20,
        ),
        Step(
            "ship",
            action="shop.ship",
            kind=StepKind.PIVOT,
            args={"order_id": "saga_id", "address": "input.address", "flaky": "input.flaky"},
            retry=ONCE,
            timeout=20,
        ),
    ],
)

__all__ = ["order", "task_routes", "weighing"]

weighing = Saga(
    "weighing",
    [
        Step(
            "weigh",
            action="shop.weigh",
            compensation="shop.release",
            args={"sku": "input.sku", "seconds": "input.seconds"},
            compensation_args={"reservation": "input.sku"},
            retry=ONCE,
            timeout=20,
        )
    ],
)
