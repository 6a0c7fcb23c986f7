//! A reducer downstream of the `shipping-policy` processor: per `shipment-<id>` stream,
//! how many shipments were requested, for what amount, and which events caused them (the
//! `$causation_id` the host put in each emitted event's metadata).

use refold_guest::{Event, Filter, Reducer};
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Ledger {
    requests: u64,
    amount: i64,
    caused_by: Vec<String>,
}

#[derive(Deserialize)]
struct Requested {
    amount: i64,
}

#[derive(Deserialize)]
struct Causation {
    #[serde(rename = "$causation_id")]
    causation_id: String,
}

pub struct ShipmentLedger;

impl Reducer for ShipmentLedger {
    type State = Ledger;

    fn filter() -> Filter {
        Filter::all()
            .categories(["shipment"])
            .event_types(["ShipmentRequested"])
    }

    fn apply(state: &mut Ledger, event: &Event<'_>) -> Result<(), String> {
        state.requests += 1;
        state.amount += event.data::<Requested>()?.amount;
        state
            .caused_by
            .push(event.metadata::<Causation>()?.causation_id);
        Ok(())
    }
}

refold_guest::export_reducer!(ShipmentLedger);
