//! The bank-account reducer with one rule changed: every withdrawal also costs a fee of
//! one cent. A second version of the example, for the redeploy and diff tests: after a
//! switch, exactly the accounts that saw a withdrawal differ.

use refold_guest::{Event, Filter, Reducer};
use serde::{Deserialize, Serialize};

/// The fee charged per withdrawal, in cents.
const FEE: i64 = 1;

#[derive(Default, Serialize, Deserialize)]
struct Account {
    owner: Option<String>,
    balance: i64,
    transactions: u64,
}

#[derive(Deserialize)]
struct Opened {
    owner: String,
}

#[derive(Deserialize)]
struct Movement {
    amount: i64,
}

struct BankAccountWithFee;

impl Reducer for BankAccountWithFee {
    type State = Account;

    fn filter() -> Filter {
        Filter::all().categories(["account"]).event_types([
            "AccountOpened",
            "Deposited",
            "Withdrawn",
        ])
    }

    fn apply(account: &mut Account, event: &Event) -> Result<(), String> {
        let change = match event.event_type() {
            "AccountOpened" => {
                account.owner = Some(event.data::<Opened>()?.owner);
                return Ok(());
            }
            "Deposited" => event.data::<Movement>()?.amount,
            "Withdrawn" => -(event.data::<Movement>()?.amount + FEE),
            _ => return Ok(()),
        };
        account.balance += change;
        account.transactions += 1;
        Ok(())
    }
}

refold_guest::export_reducer!(BankAccountWithFee);
