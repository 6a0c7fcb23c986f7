"""A few lines of HTTP against Refold's API, shared by the shop's Python programs
(standard library only)."""

import json
import time
import urllib.error
import urllib.request
import uuid

NAMESPACE = uuid.NAMESPACE_URL


def call(server, method, path, body=None, timeout=40):
    """Sends a request; returns (status, JSON answer or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.rstrip("/") + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            text = response.read()
            return response.status, json.loads(text) if text else None
    except urllib.error.HTTPError as err:
        text = err.read()
        return err.code, json.loads(text) if text else None


def event_id(service, key):
    """An event id derived from what the event is about: a retried delivery records it once."""
    return str(uuid.uuid5(NAMESPACE, f"refold-shop:{service}/{key}"))


def consume(server, group, worker, handle):
    """Polls `group` forever; `handle(message)` answers "ack", ("park", reason) or
    ("retry", reason) for each message."""
    while True:
        try:
            status, body = call(server, "POST", f"/subscriptions/{group}/poll?max=50&wait_ms=5000&worker={worker}")
        except OSError as err:
            print(f"[{worker}] cannot reach Refold: {err}", flush=True)
            time.sleep(0.5)
            continue
        if status != 200:
            print(f"[{worker}] poll answered {status}: {body}", flush=True)
            time.sleep(0.5)
            continue
        settled = {"ack": [], "park": {}, "retry": {}}
        for message in body["messages"]:
            outcome = handle(message)
            if outcome == "ack":
                settled["ack"].append(message["lease"])
            else:
                action, reason = outcome
                settled[action].setdefault(reason, []).append(message["lease"])
        if settled["ack"]:
            call(server, "POST", f"/subscriptions/{group}/ack", {"leases": settled["ack"]})
        for action in ("park", "retry"):
            for reason, leases in settled[action].items():
                call(server, "POST", f"/subscriptions/{group}/nack", {"leases": leases, "action": action, "reason": reason})
