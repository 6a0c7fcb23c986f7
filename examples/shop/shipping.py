#!/usr/bin/env python3
"""The shop's shipping service, one worker of the consumer group `shipping`: once an order
is both paid (`payment-<n>`) and reserved (`reservation-<n>`), it requests one shipment
(`ShipmentRequested` in stream `shipment-<n>`, appended with expected revision `no_stream`,
so two workers seeing the order complete at once still request it once).

    shipping.py --server http://127.0.0.1:7420 --worker shipping-1
"""

import argparse

from refold_http import call, consume, event_id


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default="http://127.0.0.1:7420")
    parser.add_argument("--worker", default="shipping")
    args = parser.parse_args()

    def handle(message):
        order = message["event"]["data"]["order"]
        paid, _ = call(args.server, "GET", f"/streams/payment-{order}?limit=1")
        reserved, _ = call(args.server, "GET", f"/streams/reservation-{order}?limit=1")
        if paid != 200 or reserved != 200:
            return "ack"  # the other half has not happened yet; its event will bring us back
        shipment = {
            "id": event_id("shipping", order),
            "type": "ShipmentRequested",
            "data": {"order": order},
            "metadata": {"causation_id": message["event"]["id"]},
        }
        status, body = call(args.server, "POST", f"/streams/shipment-{order}?expected_revision=no_stream", shipment)
        if status == 201:
            print(f"[{args.worker}] order {order}: paid and reserved, shipment requested", flush=True)
        elif status != 409:
            return ("retry", f"requesting the shipment answered {status}: {body}")
        return "ack"

    consume(args.server, "shipping", args.worker, handle)


if __name__ == "__main__":
    main()
