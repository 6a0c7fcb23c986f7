#!/usr/bin/env python3
"""The shop's order service: places orders, each an `OrderPlaced` event in stream
`order-<n>`. Every ninth order asks for an item nobody stocks.

    order_service.py --server http://127.0.0.1:7420 --orders 60
"""

import argparse

from refold_http import call, event_id

CATALOGUE = [("mug", 8), ("teapot", 25), ("kettle", 40), ("spoon", 3)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="http://127.0.0.1:7420")
    parser.add_argument("--orders", type=int, default=60)
    args = parser.parse_args()
    for n in range(1, args.orders + 1):
        sku, price = CATALOGUE[n % len(CATALOGUE)]
        items = [{"sku": sku, "quantity": 1 + n % 3}]
        if n % 9 == 0:
            items.append({"sku": "unobtainium", "quantity": 1})
            price += 1000
        total = sum(price * item["quantity"] for item in items)
        order = {"id": event_id("orders", n), "type": "OrderPlaced", "data": {"order": n, "items": items, "total": total}}
        status, body = call(args.server, "POST", f"/streams/order-{n}?expected_revision=no_stream", order)
        if status not in (201, 409):
            raise SystemExit(f"placing order {n} answered {status}: {body}")
    print(f"[orders] placed {args.orders} orders", flush=True)


if __name__ == "__main__":
    main()
