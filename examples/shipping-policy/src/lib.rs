//! A processor (guest contract 0.2): when an order is paid, request its shipment.
//!
//! On `OrderPaid` in stream `order-<id>` it appends `ShipmentRequested` to
//! `shipment-<id>`, expecting that stream not to exist yet. The host appends what it emits
//! exactly once (whatever crashes) with `$causation_id` / `$correlation_id` metadata
//! pointing at the payment. A payment seen twice for one order requests nothing more: the
//! processor remembers the orders it shipped in its read model (`shipped/<id>`), which
//! `GET /projections/shipping-policy/state?prefix=shipped/` lists.

use refold_guest::{Emit, Event, Expected, Filter, Processor, Store};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What `OrderPaid` carries.
#[derive(Deserialize)]
struct OrderPaid {
    amount: i64,
    #[serde(default)]
    address: Option<String>,
}

/// What the read model keeps per shipped order.
#[derive(Serialize, Deserialize)]
struct Shipped {
    /// The position of the payment that requested it.
    paid_at: u64,
}

pub struct ShippingPolicy;

impl Processor for ShippingPolicy {
    fn filter() -> Filter {
        Filter::all()
            .categories(["order"])
            .event_types(["OrderPaid"])
    }

    fn process(event: &Event<'_>, store: &mut Store, emit: &mut Emit) -> Result<(), String> {
        let paid: OrderPaid = event.data()?;
        let order = event.stream().strip_prefix("order-").ok_or_else(|| {
            format!(
                "an order stream is named order-<id>, not {}",
                event.stream()
            )
        })?;
        let key = format!("shipped/{order}");
        if store.get::<Shipped>(&key)?.is_some() {
            return Ok(());
        }
        store.put(
            &key,
            &Shipped {
                paid_at: event.position(),
            },
        )?;
        emit.event(
            format!("shipment-{order}"),
            "ShipmentRequested",
            &json!({ "order": order, "amount": paid.amount, "address": paid.address }),
        )?
        .expect(Expected::NoStream);
        Ok(())
    }
}

refold_guest::export_processor!(ShippingPolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use refold_guest::testing::process_batch;

    #[test]
    fn a_paid_order_requests_one_shipment_however_often_it_is_paid() {
        let paid = || Event::new("order-42", "OrderPaid", r#"{"amount": 1250}"#);
        let mut store = Store::in_memory();

        let emitted = process_batch::<ShippingPolicy, _>([paid(), paid()], &mut store).unwrap();

        assert_eq!(emitted.len(), 1);
        assert_eq!(emitted[0].stream, "shipment-42");
        assert_eq!(emitted[0].event_type, "ShipmentRequested");
        assert_eq!(emitted[0].expected, Expected::NoStream);
        assert!(store.get::<Shipped>("shipped/42").unwrap().is_some());
    }
}
