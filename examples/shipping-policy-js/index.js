// Shipping policy processor in JavaScript (guest contract 0.2): when an order is paid,
// request its shipment.
//
// The same module as the Rust `shipping-policy` (../shipping-policy/src/lib.rs), emission for
// emission and byte for byte: on `OrderPaid {"amount", "address"?}` in `order-<id>` it emits
// `ShipmentRequested {"address", "amount", "order"}` to `shipment-<id>`, expecting that
// stream not to exist yet, once per order (it remembers `shipped/<id>` → `{"paid_at":
// <position>}` in its read model). The host appends what `process` returns exactly once.
//
// componentize-js maps the `processor` world of wit/0.2/refold.wit onto `filter` and
// `process` below, and the imported `state-store` interface onto the module imported here.
// Contract 0.2 hands a call's events over in one record: stream names and types once each
// (`streams`, `types`, indexed by each event), every payload in one buffer (`text`, sliced
// by each event's `data` span). `process` returns the emitted events, or throws a `failure`
// record naming the event it failed at.

import { get, put } from "refold:projection/state-store@0.2.0";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function filter() {
  return { eventTypes: ["OrderPaid"], categories: ["order"] };
}

/** The text a span of the call's buffer holds. */
function text(events, span) {
  return decoder.decode(events.text.subarray(span.offset, span.offset + span.len));
}

export function process(events) {
  const emitted = [];
  events.events.forEach((event, index) => {
    try {
      const shipment = processEvent(events, event);
      if (shipment) emitted.push({ source: index, ...shipment });
    } catch (message) {
      const stream = events.streams[event.streamIndex];
      const type = events.types[event.typeIndex];
      throw {
        event: index,
        message: `position ${event.position} (${stream} revision ${event.revision}, ${type}): ${message}`,
      };
    }
  });
  return emitted;
}

function processEvent(events, event) {
  const stream = events.streams[event.streamIndex];
  if (!stream.startsWith("order-")) throw `an order stream is named order-<id>, not ${stream}`;
  const order = stream.slice("order-".length);
  const paid = orderPaid(text(events, event.data));
  const key = `shipped/${order}`;
  if (get(key) != null) return undefined;
  put(key, encoder.encode(`{"paid_at":${event.position}}`));
  // Keys in the order Rust's serde_json writes a `json!` object: sorted.
  const data = `{"address":${JSON.stringify(paid.address ?? null)},"amount":${paid.amount},"order":${JSON.stringify(order)}}`;
  return {
    streamId: `shipment-${order}`,
    eventType: "ShipmentRequested",
    data,
    metadata: undefined,
    expectedRevision: { tag: "no-stream" },
  };
}

function orderPaid(json) {
  let paid;
  try {
    paid = JSON.parse(json);
  } catch (err) {
    throw `invalid OrderPaid data: ${err}`;
  }
  if (paid === null || typeof paid !== "object" || !Number.isSafeInteger(paid.amount)) {
    throw "invalid OrderPaid data: missing or fractional field `amount`";
  }
  if (paid.address != null && typeof paid.address !== "string") {
    throw "invalid OrderPaid data: `address` is not a string";
  }
  return paid;
}
