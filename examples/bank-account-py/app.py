"""Bank account reducer in Python: one balance per `account-<id>` stream.

The same module as the Rust `bank-account` (../bank-account/src/lib.rs), event for event and
byte for byte:
- `AccountOpened {"owner": "<name>"}` sets the owner;
- `Deposited {"amount": n}` adds to the balance, `Withdrawn {"amount": n}` subtracts from it
  (amounts are integers, in cents; the balance may go negative);
- state `{"owner": <string or null>, "balance": <i64>, "transactions": <deposits plus
  withdrawals>}`.
A payload that does not fit (a missing, fractional or repeated amount) faults the module at
that event, as does a balance beyond the range of an i64.

componentize-py generates the `wit_world` package from the `reducer` world of
wit/refold.wit; the class `WitWorld` below implements its exports.
"""

import json

import wit_world
from componentize_py_types import Err, Ok
from json_struct import I64_MAX, I64_MIN, Invalid, i64, optional_string, string, struct, u64
from wit_world.imports.types import Event, EventFilter, StreamBatch


class WitWorld(wit_world.WitWorld):
    def filter(self) -> EventFilter:
        return EventFilter(
            event_types=["AccountOpened", "Deposited", "Withdrawn"], categories=["account"]
        )

    def init(self, stream_id: str) -> bytes:
        return encode(Account())

    def apply(self, batches: list[StreamBatch]) -> list[Ok[bytes] | Err[str]]:
        return [fold(batch) for batch in batches]


class Account:
    def __init__(self, owner: str | None = None, balance: int = 0, transactions: int = 0):
        self.owner = owner
        self.balance = balance
        self.transactions = transactions


def fold(batch: StreamBatch) -> Ok[bytes] | Err[str]:
    try:
        account = Account() if batch.state is None else decode(batch.state, batch.stream_id)
        for event in batch.events:
            try:
                apply_event(account, event)
            except Invalid as failure:
                raise Invalid(describe_failure(event, str(failure))) from None
        return Ok(encode(account))
    except Invalid as failure:
        return Err(str(failure))


def apply_event(account: Account, event: Event) -> None:
    if event.event_type == "AccountOpened":
        (account.owner,) = data(event, owner=string)
        return
    if event.event_type not in ("Deposited", "Withdrawn"):
        return
    (amount,) = data(event, amount=i64)
    signed = amount if event.event_type == "Deposited" else -amount
    balance = account.balance + signed
    # Where Rust's `checked_neg` (of i64::MIN) or `checked_add` fails.
    if not (I64_MIN <= signed <= I64_MAX and I64_MIN <= balance <= I64_MAX):
        raise Invalid("the balance would leave the range of a 64-bit integer")
    account.balance = balance
    account.transactions += 1


def encode(account: Account) -> bytes:
    """The state as the Rust reducer writes it: these fields, in this order, no spaces."""
    owner = json.dumps(account.owner, ensure_ascii=False)
    return (
        f'{{"owner":{owner},"balance":{account.balance},'
        f'"transactions":{account.transactions}}}'
    ).encode()


def decode(state: bytes, stream_id: str) -> Account:
    try:
        owner, balance, transactions = struct(
            state.decode(), owner=optional_string, balance=i64, transactions=u64
        )
    except Invalid as failure:
        raise Invalid(f"stored state of stream {stream_id} does not decode: {failure}") from None
    return Account(owner, balance, transactions)


def describe_failure(event: Event, message: str) -> str:
    """`message` prefixed with where `event` sits, as the Rust SDK words a fault."""
    return (
        f"position {event.position} ({event.stream_id} revision {event.revision}, "
        f"{event.event_type}, id {event.id}): {message}"
    )


def data(event: Event, **readers):
    """The event's data read as a struct with these fields, failing as the Rust SDK words it."""
    try:
        return struct(event.data, **readers)
    except Invalid as failure:
        raise Invalid(f"invalid {event.event_type} data: {failure}") from None
