// Bank account reducer in JavaScript: one balance per `account-<id>` stream.
//
// The same module as the Rust `bank-account` (../bank-account/src/lib.rs), event for event
// and byte for byte:
// - `AccountOpened {"owner": "<name>"}` sets the owner;
// - `Deposited {"amount": n}` adds to the balance, `Withdrawn {"amount": n}` subtracts from
//   it (amounts are integers, in cents; the balance may go negative);
// - state `{"owner": <string or null>, "balance": <i64>, "transactions": <deposits plus
//   withdrawals>}`.
// A payload that does not fit (a missing, fractional or repeated amount) faults the module
// at that event, as does a balance beyond the range of an i64.
//
// componentize-js maps the `reducer` world of wit/refold.wit onto these exports: WIT names
// in camelCase, `u64` as BigInt, `list<u8>` as Uint8Array, an absent `option` as
// undefined, and each `result` in a list as `{tag: "ok" | "err", val}`.

import { describeFailure, eventData, i64, isI64, optionalString, string, struct, u64 } from "../js-lib/json.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function filter() {
  return { eventTypes: ["AccountOpened", "Deposited", "Withdrawn"], categories: ["account"] };
}

export function init(_streamId) {
  return encode(newAccount());
}

export function apply(batches) {
  return batches.map(({ streamId, state, events }) => {
    try {
      const account = state == null ? newAccount() : decode(state, streamId);
      for (const event of events) {
        try {
          applyEvent(account, event);
        } catch (message) {
          throw describeFailure(event, message);
        }
      }
      return { tag: "ok", val: encode(account) };
    } catch (message) {
      return { tag: "err", val: String(message) };
    }
  });
}

function newAccount() {
  return { owner: null, balance: 0n, transactions: 0n };
}

function applyEvent(account, event) {
  switch (event.eventType) {
    case "AccountOpened":
      [account.owner] = eventData(event, { owner: string });
      return;
    case "Deposited":
    case "Withdrawn": {
      const [amount] = eventData(event, { amount: i64 });
      const signed = event.eventType === "Deposited" ? amount : -amount;
      const balance = account.balance + signed;
      // Where Rust's `checked_neg` (of i64::MIN) or `checked_add` fails.
      if (!isI64(signed) || !isI64(balance)) {
        throw "the balance would leave the range of a 64-bit integer";
      }
      account.balance = balance;
      account.transactions += 1n;
    }
  }
}

/** The state as the Rust reducer writes it: these fields, in this order, no spaces. */
function encode({ owner, balance, transactions }) {
  const ownerJson = owner === null ? "null" : JSON.stringify(owner);
  return encoder.encode(`{"owner":${ownerJson},"balance":${balance},"transactions":${transactions}}`);
}

function decode(bytes, streamId) {
  try {
    const [owner, balance, transactions] = struct(decoder.decode(bytes), {
      owner: optionalString,
      balance: i64,
      transactions: u64,
    });
    return { owner, balance, transactions };
  } catch (message) {
    throw `stored state of stream ${streamId} does not decode: ${message}`;
  }
}
