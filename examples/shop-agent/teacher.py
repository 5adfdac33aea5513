"""The scripted expert for the shop-agent example: given the episode so far (OpenAI chat messages,
the tools' results among them), it writes the next assistant message, a tool call or the final
answer. The requests and their reference answers come from here too (make_data.py), so the data and
the expert can never disagree."""

from __future__ import annotations

import hashlib
import json
import random
import re

from shop import Shop, order_key, refund_refusal

EMAIL = r"(?P<email>[\w.]+@example\.com)"
ORDER = r"(?P<order>\d{4})"
AMOUNT = r"(?P<amount>\d+\.\d\d)"
# intent -> phrasings; a request is one phrasing with the customer's details filled in
REQUESTS = {
    "shipment": [f"Where is order {ORDER}? What is its shipment status?",
                 f"Can you check the shipment status of order {ORDER}?"],
    "count": [f"How many orders have I placed? My email is {EMAIL}.",
              f"I'm {EMAIL}. How many orders do I have with you?"],
    "latest_total": [f"What did my most recent order cost? My email is {EMAIL}.",
                     f"I'm {EMAIL}. What was the total of my latest order?"],
    "latest_carrier": [f"Which carrier is delivering my latest order? My email is {EMAIL}.",
                       f"I'm {EMAIL}. Who is shipping my most recent order?"],
    "refund": [f"I'm {EMAIL}. Please refund {AMOUNT} for order {ORDER}.",
               f"Please refund {AMOUNT} of order {ORDER}. My email is {EMAIL}."],
    "refund_if_arrived": [f"I'm {EMAIL}. Has my latest order arrived? If it has, refund {AMOUNT} for it.",
                          f"If my most recent order was delivered, please refund {AMOUNT} of it. My email is "
                          f"{EMAIL}."],
}
def fill(phrasing: str, **values) -> str:
    return re.sub(r"\(\?P<(\w+)>[^)]*\)", lambda m: str(values[m.group(1)]), phrasing)


def parse_request(text: str) -> tuple[str, dict]:
    """(intent, details) of a request written from REQUESTS."""
    for intent, phrasings in REQUESTS.items():
        for phrasing in phrasings:
            pattern = re.escape(fill(phrasing, email="\0E", order="\0O", amount="\0A"))
            pattern = pattern.replace("\0E", EMAIL).replace("\0O", ORDER).replace("\0A", AMOUNT)
            found = re.fullmatch(pattern, text.strip())
            if found:
                return intent, found.groupdict()
    raise ValueError(f"not a shop request: {text!r}")


# ---- the teacher protege calls (task.yaml: teacher.function) --------------------------------

def teacher(request):
    """purpose act: the expert's next assistant message; write_input: a new request of the same kind
    as the example shown (seed expansion, and new requests like the ones the student failed)."""
    if request.purpose == "act":
        return act(request.messages(), request.tool_schemas())
    if request.purpose == "write_input":
        return new_request(request.examples[0], request.sample)
    return None


def new_request(example: str, sample: int) -> str | None:
    """A request of the example's kind about another customer, drawn by a seed from both."""
    try:
        intent, _ = parse_request(example)
    except ValueError:
        return None
    seed = int(hashlib.sha256(f"{example}|{sample}".encode()).hexdigest()[:12], 16)
    return request(random.Random(seed), Shop(), intent)["input"]


# ---- the expert ----------------------------------------------------------------------------

def act(messages: list[dict], tools: list[dict] | None = None) -> dict:
    """The next assistant message of the episode so far."""
    intent, details = parse_request(next(m["content"] for m in messages if m["role"] == "user"))
    # a call the tools refused (unknown tool, bad arguments) did nothing: the expert makes it again, right
    results = [tool_result(m["content"]) for m in messages if m["role"] == "tool" and not refused(m["content"])]
    step = PLANS[intent](details, results)
    return step if isinstance(step, dict) else {"role": "assistant", "content": step}


def refused(content: str) -> bool:
    return content.startswith(("error: unknown tool", "error: bad arguments", "error: bad JSON"))


def tool_result(content: str):
    """A tool's result as data, or an Exception holding its error line."""
    if content.startswith("error"):
        return RuntimeError(content)
    return json.loads(content)


def call(name: str, **arguments) -> dict:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]}


def plan_shipment(details: dict, results: list):
    if not results:
        return call("get_shipment", order_id=int(details["order"]))
    return failed(results[0]) or results[0]["status"]


def with_orders(details: dict, results: list, then):
    """find_customer, list_orders, then `then(orders, rest of the results)`."""
    if not results:
        return call("find_customer", email=details["email"])
    if failed(results[0]):
        return failed(results[0])
    if len(results) == 1:
        return call("list_orders", customer_id=results[0]["customer_id"])
    return failed(results[1]) or then(results[1], results[2:])


def plan_count(details: dict, results: list):
    return with_orders(details, results, lambda orders, rest: str(len(orders)))


def plan_latest_total(details: dict, results: list):
    return with_orders(details, results, lambda orders, rest: f"{orders[-1]['total']:.2f}")


def plan_latest_carrier(details: dict, results: list):
    def carrier(orders, rest):
        if not rest:
            return call("get_shipment", order_id=orders[-1]["order_id"])
        return failed(rest[0]) or rest[0].get("carrier", "not shipped")
    return with_orders(details, results, carrier)


def plan_refund(details: dict, results: list):
    def refund(orders, rest):
        if int(details["order"]) not in {o["order_id"] for o in orders}:
            return "that order is not yours"
        if not rest:
            return call("issue_refund", order_id=int(details["order"]), amount=float(details["amount"]))
        return "refund refused" if failed(rest[0]) else f"refunded {details['amount']}"
    return with_orders(details, results, refund)


def plan_refund_if_arrived(details: dict, results: list):
    def refund(orders, rest):
        latest = orders[-1]["order_id"]
        if not rest:
            return call("get_shipment", order_id=latest)
        if failed(rest[0]) or rest[0]["status"] != "delivered":
            return "not delivered yet"
        if len(rest) == 1:
            return call("issue_refund", order_id=latest, amount=float(details["amount"]))
        return "refund refused" if failed(rest[1]) else f"refunded {details['amount']}"
    return with_orders(details, results, refund)


def failed(result) -> str:
    """The final answer when a lookup failed; empty when it did not."""
    return "I could not find that" if isinstance(result, Exception) else ""


PLANS = {"shipment": plan_shipment, "count": plan_count, "latest_total": plan_latest_total,
         "latest_carrier": plan_latest_carrier, "refund": plan_refund, "refund_if_arrived": plan_refund_if_arrived}


# ---- requests and their reference answers --------------------------------------------------

def requests(n: int, seed: int) -> list[dict]:
    """n distinct {input, output} items: a request of each intent in turn, details drawn from the shop."""
    rng, shop, made = random.Random(seed), Shop(), {}
    intents = list(REQUESTS)
    while len(made) < n:
        item = request(rng, shop, intents[len(made) % len(intents)])
        made.setdefault(item["input"], item)
    return list(made.values())


def request(rng: random.Random, shop: Shop, intent: str) -> dict:
    customer = rng.choice(list(shop.customers.values()))
    orders = sorted((o for o in shop.orders.values() if o["customer_id"] == customer["customer_id"]), key=order_key)
    order = rng.choice(orders)
    # mostly amounts the rule allows, some over the order's total
    amount = round(rng.uniform(1, order["total"]) if rng.random() < 0.8 else order["total"] + rng.uniform(1, 20), 2)
    details = {"email": customer["email"], "order": order["order_id"], "amount": f"{amount:.2f}"}
    text = fill(rng.choice(REQUESTS[intent]), **details)
    return {"input": text, "output": reference_answer(shop, intent, details, orders)}


def reference_answer(shop: Shop, intent: str, details: dict, orders: list[dict]) -> str:
    """What the shop's data says, computed apart from the expert's plans."""
    latest = orders[-1]
    shipment = shop.shipments.get(latest["order_id"], {"status": "not shipped"})
    order = shop.orders[int(details["order"])]
    answers = {
        "shipment": lambda: shop.shipments.get(order["order_id"], {"status": "not shipped"})["status"],
        "count": lambda: str(len(orders)),
        "latest_total": lambda: f"{latest['total']:.2f}",
        "latest_carrier": lambda: shipment.get("carrier", "not shipped"),
        "refund": lambda: refund_answer(order, details["amount"]),
        "refund_if_arrived": lambda: "not delivered yet" if shipment["status"] != "delivered"
        else refund_answer(latest, details["amount"]),
    }
    return answers[intent]()


def refund_answer(order: dict, amount: str) -> str:
    return "refund refused" if refund_refusal(order, float(amount), False) else f"refunded {amount}"
