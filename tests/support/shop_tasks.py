"""A shop's existing Celery tasks, as they were before sagas: no sagakit import."""

from __future__ import annotations

import time

from tests.support.shop_app import app


@app.task(name="shop.reserve")
def reserve(sku: str, qty: int) -> dict[str, object]:
    return {"reservation_id": f"r-{sku}-{qty}"}


@app.task(name="shop.release")
def release(reservation: str) -> dict[str, object]:
    return {"released": reservation}


@app.task(name="shop.charge")
def charge(order_id: str, amount: int) -> dict[str, object]:
    if amount > 100:
        raise ValueError(f"card declined for {amount}")
    return {"charge_id": f"ch-{order_id}", "amount": amount}


@app.task(name="shop.refund")
def refund(charge_id: str) -> dict[str, object]:
    return {"refunded": charge_id}


@app.task(
    name="shop.ship",
    bind=True,
    autoretry_for=(ConnectionError,),
    retry_backoff=0.1,
    retry_jitter=False,
    max_retries=3,
)
def ship(self, order_id: str, address: str, flaky: bool = False) -> dict[str, object]:  # type: ignore[no-untyped-def]
    if flaky and self.request.retries < 1:
        raise ConnectionError("the carrier did not answer")
    if address == "nowhere":
        raise ValueError("no carrier goes there")
    return {"tracking": f"t-{order_id}", "to": address, "tries": self.request.retries + 1}


@app.task(name="shop.weigh", soft_time_limit=0.5)
def weigh(sku: str, seconds: float = 0.0) -> dict[str, object]:
    time.sleep(seconds)
    return {"grams": 250}
