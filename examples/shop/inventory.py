#!/usr/bin/env python3
"""The shop's inventory service, one worker of the consumer group `inventory`: reserves the
items of each `OrderPlaced` (a `StockReserved` event in stream `reservation-<n>`), and parks
orders for items it does not stock, for a person to look at.

    inventory.py --server http://127.0.0.1:7420 --worker inventory-1
"""

import argparse

from refold_http import call, consume, event_id

STOCKED = {"mug", "teapot", "kettle", "spoon"}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="http://127.0.0.1:7420")
    parser.add_argument("--worker", default="inventory")
    args = parser.parse_args()

    def handle(message):
        event = message["event"]
        order = event["data"]["order"]
        missing = [item["sku"] for item in event["data"]["items"] if item["sku"] not in STOCKED]
        if missing:
            print(f"[{args.worker}] order {order}: out of stock: {', '.join(missing)} (parked)", flush=True)
            return ("park", f"out of stock: {', '.join(missing)}")
        reservation = {
            "id": event_id("inventory", order),
            "type": "StockReserved",
            "data": {"order": order, "items": event["data"]["items"]},
            "metadata": {"causation_id": event["id"]},
        }
        status, body = call(args.server, "POST", f"/streams/reservation-{order}", reservation)
        if status != 201:
            return ("retry", f"recording the reservation answered {status}: {body}")
        print(f"[{args.worker}] order {order}: stock reserved", flush=True)
        return "ack"

    consume(args.server, "inventory", args.worker, handle)


if __name__ == "__main__":
    main()
