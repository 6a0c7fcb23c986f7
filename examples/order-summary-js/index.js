// Order summary projection in JavaScript: orders, customers and status counts across
// `order-<id>` streams.
//
// The same module as the Rust `order-summary` (../order-summary/src/lib.rs), key for key
// and byte for byte. Read model:
// - `order/<stream>` → `{"customer", "total", "status"}`, status one of `placed`, `paid`,
//   `shipped`, `cancelled`;
// - `customer/<customer>` → `{"orders": <orders placed>, "spent": <sum of the totals of the
//   orders that were paid>}`;
// - `status/<status>` → `{"count": <orders now in that status>}` (kept at 0, not removed).
//
// An order's life: placed → paid → shipped, and placed or paid → cancelled. Each step moves
// one count from the old status to the new, and the step to paid adds the total to the
// customer's `spent`. An event that is not a step of that life changes nothing: a status
// event for an order never placed, a second `OrderPlaced`, paying twice, shipping an unpaid
// order, anything after shipping or cancelling. `OrderPlaced` data without a customer or a
// numeric total faults the module (even for an order already placed: the data is read
// first).
//
// componentize-js maps the `projection` world of wit/refold.wit onto `filter` and `handle`
// below and the imported `state-store` interface onto the module imported here; `handle`
// returns for `ok` and throws a string for `err`.

import { get, put } from "refold:projection/state-store@0.1.0";
import { add, describeFailure, eventData, formatNumber, number, string, struct, u64 } from "../js-lib/json.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The statuses each status may become; shipped and cancelled are final. */
const STEPS = new Map([
  ["placed", ["paid", "cancelled"]],
  ["paid", ["shipped", "cancelled"]],
  ["shipped", []],
  ["cancelled", []],
]);

/** The status each status event asks for. */
const NEXT = new Map([
  ["OrderPaid", "paid"],
  ["OrderShipped", "shipped"],
  ["OrderCancelled", "cancelled"],
]);

// The three kinds of value: where each lives, what it starts as, and its JSON, written as the
// Rust module writes it (these fields, in this order, no spaces).

const orders = {
  key: (stream) => `order/${stream}`,
  decode(text) {
    const [customer, total, status] = struct(text, { customer: string, total: number, status: statusName });
    return { customer, total, status };
  },
  encode: ({ customer, total, status }) =>
    `{"customer":${JSON.stringify(customer)},"total":${formatNumber(total)},"status":"${status}"}`,
};

const customers = {
  key: (customer) => `customer/${customer}`,
  initial: () => ({ orders: 0n, spent: 0n }),
  decode(text) {
    const [placed, spent] = struct(text, { orders: u64, spent: number });
    return { orders: placed, spent };
  },
  encode: ({ orders, spent }) => `{"orders":${orders},"spent":${formatNumber(spent)}}`,
};

const statuses = {
  key: (status) => `status/${status}`,
  initial: () => ({ count: 0n }),
  decode: (text) => ({ count: struct(text, { count: u64 })[0] }),
  encode: ({ count }) => `{"count":${count}}`,
};

export function filter() {
  return {
    eventTypes: ["OrderPlaced", "OrderPaid", "OrderShipped", "OrderCancelled"],
    categories: ["order"],
  };
}

export function handle(events) {
  for (const event of events) {
    try {
      handleEvent(event);
    } catch (message) {
      throw describeFailure(event, message);
    }
  }
}

function handleEvent(event) {
  if (event.eventType === "OrderPlaced") return place(event);
  const next = NEXT.get(event.eventType);
  const order = next && load(orders, event.streamId);
  if (!order || !STEPS.get(order.status).includes(next)) return;
  if (next === "paid") {
    update(customers, order.customer, (customer) => {
      customer.spent = add(customer.spent, order.total);
    });
  }
  update(statuses, order.status, (previous) => {
    previous.count = previous.count > 0n ? previous.count - 1n : 0n;
  });
  update(statuses, next, (status) => {
    status.count += 1n;
  });
  order.status = next;
  save(orders, event.streamId, order);
}

function place(event) {
  // The data is read (and may fault the module) before looking for the order, as in Rust.
  const [customer, total] = eventData(event, { customer: string, total: number });
  if (get(orders.key(event.streamId)) != null) return;
  update(customers, customer, (c) => {
    c.orders += 1n;
  });
  update(statuses, "placed", (placed) => {
    placed.count += 1n;
  });
  save(orders, event.streamId, { customer, total, status: "placed" });
}

function statusName(raw) {
  const status = string(raw);
  if (!STEPS.has(status)) throw `unknown status ${raw}`;
  return status;
}

function load(kind, id) {
  const key = kind.key(id);
  const bytes = get(key);
  if (bytes == null) return undefined;
  try {
    return kind.decode(decoder.decode(bytes));
  } catch (message) {
    throw `value for key ${key} does not decode: ${message}`;
  }
}

function save(kind, id, value) {
  put(kind.key(id), encoder.encode(kind.encode(value)));
}

/** Reads a value (or its initial one), lets `change` modify it, and stores it back. */
function update(kind, id, change) {
  const value = load(kind, id) ?? kind.initial();
  change(value);
  save(kind, id, value);
}
