// JSON read and written the way the Rust examples' serde_json does, so that a JavaScript
// module folds the same events into the same state, byte for byte, and faults on the same
// payloads. `JSON.parse` alone would not: it turns every number into a double (losing
// 64-bit integers and the difference between `5` and `5.0`) and keeps the last of two
// fields of the same name, where serde faults.
//
// Every function takes JSON text the host has already checked (it refuses an append whose
// data is not valid JSON) and throws a message string when the value does not fit.

const I64_MIN = -(2n ** 63n);
const I64_MAX = 2n ** 63n - 1n;
const U64_MAX = 2n ** 64n - 1n;

/**
 * The value `text` read as serde reads a Rust struct, into an array in the order of
 * `readers`, which maps each field's name to the function that reads its JSON text
 * (`{owner: string}`). The struct may be an object (fields in any order, others ignored,
 * none missing, none twice) or an array of exactly those fields, in order.
 */
export function struct(text, readers) {
  const names = Object.keys(readers);
  return fields(text, names).map((raw, index) => readers[names[index]](raw));
}

/** The JSON text of the fields `names` of the struct `text`, in the order of `names`. */
function fields(text, names) {
  const found = new Array(names.length);
  let i = skipSpace(text, 0);
  const open = text[i];
  if (open !== "{" && open !== "[") {
    throw `invalid type: ${text.trim()}, expected an object with ${names.join(", ")}`;
  }
  const items = [];
  for (i = skipSpace(text, i + 1); text[i] !== "}" && text[i] !== "]"; ) {
    let key;
    if (open === "{") {
      const keyEnd = skipValue(text, i);
      key = JSON.parse(text.slice(i, keyEnd));
      i = skipSpace(text, skipSpace(text, keyEnd) + 1); // past the `:`
    }
    const end = skipValue(text, i);
    items.push([key, text.slice(i, end)]);
    i = skipSpace(text, end);
    if (text[i] === ",") i = skipSpace(text, i + 1);
  }
  if (open === "[") {
    if (items.length !== names.length) {
      throw `invalid length ${items.length}, expected an array of ${names.length}`;
    }
    return items.map(([, raw]) => raw);
  }
  for (const [key, raw] of items) {
    const index = names.indexOf(key);
    if (index < 0) continue;
    if (found[index] !== undefined) throw `duplicate field \`${key}\``;
    found[index] = raw;
  }
  const missing = names.findIndex((_, index) => found[index] === undefined);
  if (missing >= 0) throw `missing field \`${names[missing]}\``;
  return found;
}

// Sticky patterns that step over a run of text from a given index: regular expressions run
// far faster than a loop over characters in an interpreted JavaScript engine.
const SPACE = /[ \t\n\r]*/y;
const STRING = /"(?:[^"\\]|\\.)*"/y;
const SCALAR = /[^,:\]}\s]*/y; // a number, true, false or null
const PLAIN = /[^"{}[\]]*/y; // inside an object or array: up to a string or a bracket

/** The index just past what `pattern` matches at `i`. */
function skip(pattern, text, i) {
  pattern.lastIndex = i;
  pattern.test(text);
  return pattern.lastIndex;
}

function skipSpace(text, i) {
  return skip(SPACE, text, i);
}

/** The index just past the JSON value that starts at `i`. */
function skipValue(text, i) {
  if (text[i] === '"') return skip(STRING, text, i);
  if (text[i] !== "{" && text[i] !== "[") return skip(SCALAR, text, i);
  let depth = 0;
  do {
    if (text[i] === '"') {
      i = skip(STRING, text, i);
    } else {
      depth += text[i] === "{" || text[i] === "[" ? 1 : -1;
      i++;
    }
    if (depth > 0) i = skip(PLAIN, text, i);
  } while (depth > 0);
  return i;
}

/** A JSON string. Like serde, refuses one with a lone surrogate (`"\ud800"`). */
export function string(raw) {
  const value = raw.startsWith('"') ? JSON.parse(raw) : undefined;
  if (typeof value !== "string") throw `invalid type: ${raw}, expected a string`;
  if (!value.isWellFormed()) throw `lone surrogate in ${raw}`;
  return value;
}

/** A JSON string or null (a Rust `Option<String>`). */
export function optionalString(raw) {
  return raw === "null" ? null : string(raw);
}

/** The integer a JSON number holds, as serde_json reads it; `undefined` for a float. */
function integer(raw) {
  // serde_json reads `-0` as the float -0.0, and anything with a fraction or an exponent
  // as a float, even `5.0`.
  if (!/^-?\d+$/.test(raw) || raw === "-0") return undefined;
  return BigInt(raw);
}

/** A JSON integer that fits an i64, as a BigInt. */
export function i64(raw) {
  const value = integer(raw);
  if (value === undefined || value < I64_MIN || value > I64_MAX) {
    throw `invalid value: ${raw}, expected i64`;
  }
  return value;
}

/** A JSON integer that fits a u64, as a BigInt. */
export function u64(raw) {
  const value = integer(raw);
  if (value === undefined || value < 0n || value > U64_MAX) {
    throw `invalid value: ${raw}, expected u64`;
  }
  return value;
}

/**
 * Any JSON number, as serde_json's `Number` keeps it: an integer in the range of an i64 or
 * a u64 stays exact (a BigInt); anything else is an f64 (a number).
 */
export function number(raw) {
  const value = integer(raw);
  if (value !== undefined && value >= I64_MIN && value <= U64_MAX) return value;
  const float = /^-?\d/.test(raw) ? Number(raw) : NaN;
  if (Number.isNaN(float)) throw `invalid type: ${raw}, expected a number`;
  if (!Number.isFinite(float)) throw `number out of range: ${raw}`;
  return float;
}

/** Whether a `number()` is an integer that fits an i64 (serde_json's `Number::as_i64`). */
export function isI64(value) {
  return typeof value === "bigint" && value >= I64_MIN && value <= I64_MAX;
}

/** `a + b` for two `number()`s, as the Rust order-summary adds them. */
export function add(a, b) {
  if (isI64(a) && isI64(b)) {
    const sum = a + b;
    if (sum < I64_MIN || sum > I64_MAX) throw "the amount overflows";
    return sum;
  }
  const sum = Number(a) + Number(b);
  if (!Number.isFinite(sum)) throw "the amount is not a finite number";
  return sum;
}

/**
 * The JSON text of a `number()` (or any BigInt) as serde_json writes it. Floats get the
 * shortest digits that read back the same, as a plain decimal when the point falls within
 * 16 digits (with `.0` when integral) and with an exponent otherwise: `1000000000000000.0`,
 * `1e+16`, `0.00001`, `1e-6`.
 */
export function formatNumber(value) {
  if (typeof value === "bigint") return String(value);
  const sign = value < 0 || Object.is(value, -0) ? "-" : "";
  const [mantissa, exponent] = Math.abs(value).toExponential().split("e");
  const digits = mantissa.replace(".", "");
  const point = Number(exponent) + 1; // the value is 0.<digits> × 10^point
  let text;
  if (digits.length <= point && point <= 16) {
    text = `${digits}${"0".repeat(point - digits.length)}.0`;
  } else if (0 < point && point <= 16) {
    text = `${digits.slice(0, point)}.${digits.slice(point)}`;
  } else if (-5 < point && point <= 0) {
    text = `0.${"0".repeat(-point)}${digits}`;
  } else {
    const e = point - 1;
    const head = digits.length === 1 ? digits : `${digits[0]}.${digits.slice(1)}`;
    text = `${head}e${e < 0 ? "-" : "+"}${Math.abs(e)}`;
  }
  return sign + text;
}

/** The event's data read as a `struct()`, failing as the Rust SDK words it. */
export function eventData(event, readers) {
  try {
    return struct(event.data, readers);
  } catch (message) {
    throw `invalid ${event.eventType} data: ${message}`;
  }
}

/** `message` prefixed with where `event` sits, as the Rust SDK words a fault. */
export function describeFailure(event, message) {
  return (
    `position ${event.position} (${event.streamId} revision ${event.revision}, ` +
    `${event.eventType}, id ${event.id}): ${message}`
  );
}
