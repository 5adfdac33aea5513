"""The shop a customer-support agent works in: customers, their orders and the orders' shipments,
built from a fixed seed, and four tools. `Shop` is the environment: a new one per episode, so a
refund made in one episode is not there in the next."""

from __future__ import annotations

import datetime as dt
import random

CARRIERS = ["UPS", "DHL", "FedEx", "USPS"]
FIRST_NAMES = ["Ana", "Ben", "Chloe", "Dev", "Eva", "Farid", "Gita", "Hugo", "Ines", "Jon", "Kai", "Lena",
               "Mateo", "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tara"]
LAST_NAMES = ["Alvarez", "Brown", "Chen", "Diaz", "Evans", "Fischer", "Garcia", "Hale", "Ito", "Jensen"]
TODAY = dt.date(2026, 11, 30)
REFUND_DAYS = 30  # a delivered order may be refunded this many days after its date


def build_records(seed: int = 7) -> tuple[dict, dict, dict]:
    """customers by id, orders by id, shipments by order id: the same for every seed-7 shop."""
    rng = random.Random(seed)
    customers, orders, shipments = {}, {}, {}
    names = [(f, last) for f in FIRST_NAMES for last in LAST_NAMES]
    for number, (first, last) in enumerate(rng.sample(names, 60), 1):
        customer_id = f"C{number:03d}"
        customers[customer_id] = {"customer_id": customer_id, "name": f"{first} {last}",
                                  "email": f"{first.lower()}.{last.lower()}@example.com"}
        for _ in range(rng.randint(1, 4)):
            order = new_order(rng, 1000 + len(orders), customer_id)
            orders[order["order_id"]] = order
            if order["status"] != "processing":
                shipments[order["order_id"]] = new_shipment(rng, order)
    return customers, orders, shipments


def new_order(rng: random.Random, order_id: int, customer_id: str) -> dict:
    placed = TODAY - dt.timedelta(days=rng.randint(1, 90))
    status = "processing" if (TODAY - placed).days < 3 else rng.choice(["shipped", "delivered", "delivered"])
    return {"order_id": order_id, "customer_id": customer_id, "date": placed.isoformat(),
            "total": round(rng.uniform(8, 240), 2), "status": status}


def new_shipment(rng: random.Random, order: dict) -> dict:
    delivered = order["status"] == "delivered"
    return {"order_id": order["order_id"], "carrier": rng.choice(CARRIERS),
            "status": "delivered" if delivered else "in transit",
            "tracking": f"TRK{rng.randint(10**7, 10**8 - 1)}"}


class Shop:
    """The environment: each public method is a tool the agent may call."""

    def __init__(self, seed: int = 7):
        self.customers, self.orders, self.shipments = build_records(seed)
        self.refunds: dict[int, float] = {}

    def find_customer(self, email: str) -> dict:
        """Find a customer by email address.

        Args:
            email: The customer's email address.
        """
        found = [c for c in self.customers.values() if c["email"] == email.strip().lower()]
        if not found:
            raise LookupError(f"no customer with email {email}")
        return {"customer_id": found[0]["customer_id"], "name": found[0]["name"]}

    def list_orders(self, customer_id: str) -> list[dict]:
        """List a customer's orders, oldest first.

        Args:
            customer_id: The customer's id, as find_customer returns it (C001, ...).
        """
        if customer_id not in self.customers:
            raise LookupError(f"no customer {customer_id}")
        mine = [o for o in self.orders.values() if o["customer_id"] == customer_id]
        return [{k: o[k] for k in ("order_id", "date", "total", "status")} for o in sorted(mine, key=order_key)]

    def get_shipment(self, order_id: int) -> dict:
        """Get the shipment of an order: carrier, status and tracking number.

        Args:
            order_id: The order's number.
        """
        if order_id not in self.orders:
            raise LookupError(f"no order {order_id}")
        if order_id not in self.shipments:
            return {"order_id": order_id, "status": "not shipped"}
        return dict(self.shipments[order_id])

    def issue_refund(self, order_id: int, amount: float) -> dict:
        """Refund part or all of a delivered order, within 30 days of its date, once per order.

        Args:
            order_id: The order's number.
            amount: The amount to refund, at most the order's total.
        """
        refusal = refund_refusal(self.orders.get(order_id), amount, order_id in self.refunds)
        if refusal:
            raise ValueError(f"refund refused: {refusal}")
        self.refunds[order_id] = amount
        return {"order_id": order_id, "refunded": round(amount, 2)}


def order_key(order: dict) -> tuple:
    return order["date"], order["order_id"]


def refund_refusal(order: dict | None, amount: float, refunded: bool) -> str:
    """Why the shop's rule refuses a refund; empty when it allows it."""
    if order is None:
        return "no such order"
    age = (TODAY - dt.date.fromisoformat(order["date"])).days
    reasons = [(order["status"] != "delivered", "the order is not delivered"),
               (age > REFUND_DAYS, f"the order is older than {REFUND_DAYS} days"),
               (not 0 < amount <= order["total"], "the amount is more than the order's total"),
               (refunded, "the order was refunded already")]
    return next((why for failed, why in reasons if failed), "")
