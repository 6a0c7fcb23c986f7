//! Bank account reducer: one balance per `account-<id>` stream.
//!
//! Events (amounts are integers, in cents):
//! - `AccountOpened {"owner": "<name>"}` sets the owner;
//! - `Deposited {"amount": n}` adds to the balance;
//! - `Withdrawn {"amount": n}` subtracts from it (the balance may go negative: the log
//!   records what happened, and the reducer does not second-guess it).
//!
//! State: `{"owner": <string or null>, "balance": <i64>, "transactions": <deposits plus
//! withdrawals>}`. A wanted event whose data does not fit (a missing or fractional amount)
//! faults the module at that event, as does a balance beyond the range of an i64.

use refold_guest::{Event, Filter, Reducer};
use serde::{Deserialize, Serialize};

/// The state of one account.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Who opened the account; `None` until `AccountOpened`.
    pub owner: Option<String>,
    /// Deposits minus withdrawals, in cents.
    pub balance: i64,
    /// How many deposits and withdrawals there were.
    pub transactions: u64,
}

#[derive(Deserialize)]
struct AccountOpened {
    owner: String,
}

/// The payload of both `Deposited` and `Withdrawn`.
#[derive(Deserialize)]
struct Movement {
    amount: i64,
}

/// The reducer, exported below.
pub struct BankAccount;

impl Reducer for BankAccount {
    type State = Account;

    fn filter() -> Filter {
        Filter::all().categories(["account"]).event_types([
            "AccountOpened",
            "Deposited",
            "Withdrawn",
        ])
    }

    fn apply(account: &mut Account, event: &Event) -> Result<(), String> {
        let signed_amount = match event.event_type() {
            "AccountOpened" => {
                account.owner = Some(event.data::<AccountOpened>()?.owner);
                return Ok(());
            }
            "Deposited" => Some(event.data::<Movement>()?.amount),
            "Withdrawn" => event.data::<Movement>()?.amount.checked_neg(),
            _ => return Ok(()),
        };
        account.balance = signed_amount
            .and_then(|amount| account.balance.checked_add(amount))
            .ok_or("the balance would leave the range of a 64-bit integer")?;
        account.transactions += 1;
        Ok(())
    }
}

refold_guest::export_reducer!(BankAccount);

#[cfg(test)]
mod tests {
    use super::*;
    use refold_guest::testing::{apply_batch, fold};

    fn event(revision: u64, event_type: &str, data: &str) -> Event {
        Event::new("account-1", event_type, data)
            .with_revision(revision)
            .with_position(revision)
    }

    #[test]
    fn deposits_and_withdrawals_move_the_balance_and_count_as_transactions() {
        let events = [
            event(0, "AccountOpened", r#"{"owner":"ada"}"#),
            event(1, "Deposited", r#"{"amount":1000}"#),
            event(2, "Withdrawn", r#"{"amount":250}"#),
            event(3, "Renamed", r#"{"owner":"bob"}"#),
        ];

        let account = fold::<BankAccount>("account-1", &events).unwrap();

        assert_eq!(
            account,
            Account {
                owner: Some("ada".into()),
                balance: 750,
                transactions: 2
            }
        );
    }

    #[test]
    fn state_is_stored_as_the_documented_json() {
        let encoded = apply_batch::<BankAccount, _>(
            "account-1",
            None,
            [event(0, "Deposited", r#"{"amount":5}"#)],
        )
        .unwrap();

        assert_eq!(
            String::from_utf8(encoded).unwrap(),
            r#"{"owner":null,"balance":5,"transactions":1}"#
        );
    }

    #[test]
    fn a_batch_continues_from_the_stored_state() {
        let stored = br#"{"owner":"ada","balance":10,"transactions":1}"#;

        let encoded = apply_batch::<BankAccount, _>(
            "account-1",
            Some(stored),
            [event(1, "Withdrawn", r#"{"amount":15}"#)],
        )
        .unwrap();

        assert_eq!(
            String::from_utf8(encoded).unwrap(),
            r#"{"owner":"ada","balance":-5,"transactions":2}"#
        );
    }

    #[test]
    fn a_movement_without_an_amount_fails_naming_the_event() {
        let error = fold::<BankAccount>(
            "account-1",
            &[event(0, "Deposited", r#"{"amt":5}"#).with_position(41)],
        )
        .unwrap_err();

        assert!(error.starts_with("position 41 "), "{error}");
        assert!(error.contains("missing field `amount`"), "{error}");
    }

    #[test]
    fn an_overflowing_balance_fails_instead_of_wrapping() {
        let events = [
            event(0, "Deposited", &format!(r#"{{"amount":{}}}"#, i64::MAX)),
            event(1, "Deposited", r#"{"amount":1}"#),
        ];

        assert!(fold::<BankAccount>("account-1", &events).is_err());
    }
}
