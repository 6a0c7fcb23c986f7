//! Order summary projection: orders, customers and status counts across `order-<id>` streams.
//!
//! Events: `OrderPlaced {"customer": "<name>", "total": <number>}`, then `OrderPaid`,
//! `OrderShipped`, `OrderCancelled` (their data is not read).
//!
//! Read model:
//! - `order/<stream>` → `{"customer", "total", "status"}`, status one of `placed`, `paid`,
//!   `shipped`, `cancelled`;
//! - `customer/<customer>` → `{"orders": <orders placed>, "spent": <sum of the totals of
//!   the orders that were paid>}`;
//! - `status/<status>` → `{"count": <orders now in that status>}`.
//!
//! An order's life: placed → paid → shipped, and placed or paid → cancelled; shipped and
//! cancelled are final. Each step moves one count from the old status to the new, and the
//! step to paid adds the total to the customer's `spent` (a paid order that is later
//! cancelled stays counted: it was paid). Events are facts that cannot be taken back, so
//! an event that is not a step of that life changes nothing rather than faulting the
//! projection: a status event for an order never placed, a second `OrderPlaced`, paying
//! twice, shipping an unpaid order, anything after shipping or cancelling.
//! `OrderPlaced` data without a customer or a numeric total faults the module.

use refold_guest::{Event, Filter, Projection, Store};
use serde::{Deserialize, Serialize};
use serde_json::Number;

/// Where an order stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Placed => "placed",
            Status::Paid => "paid",
            Status::Shipped => "shipped",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether an order may go from `self` to `next`.
    fn can_become(self, next: Status) -> bool {
        matches!(
            (self, next),
            (Status::Placed, Status::Paid)
                | (Status::Paid, Status::Shipped)
                | (Status::Placed | Status::Paid, Status::Cancelled)
        )
    }
}

/// The value under `order/<stream>`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub customer: String,
    /// Kept as the number the client sent: integer cents stay integers.
    pub total: Number,
    pub status: Status,
}

/// The value under `customer/<customer>`.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub orders: u64,
    pub spent: Number,
}

impl Default for Customer {
    fn default() -> Self {
        Self {
            orders: 0,
            spent: Number::from(0),
        }
    }
}

/// The value under `status/<status>`.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCount {
    pub count: u64,
}

#[derive(Deserialize)]
struct OrderPlaced {
    customer: String,
    total: Number,
}

/// The projection, exported below.
pub struct OrderSummary;

impl Projection for OrderSummary {
    fn filter() -> Filter {
        Filter::all().categories(["order"]).event_types([
            "OrderPlaced",
            "OrderPaid",
            "OrderShipped",
            "OrderCancelled",
        ])
    }

    fn handle(event: &Event, store: &mut Store) -> Result<(), String> {
        let order_key = format!("order/{}", event.stream());
        let next = match event.event_type() {
            "OrderPlaced" => return place(&order_key, event.data()?, store),
            "OrderPaid" => Status::Paid,
            "OrderShipped" => Status::Shipped,
            "OrderCancelled" => Status::Cancelled,
            _ => return Ok(()),
        };
        let Some(mut order) = store.get::<Order>(&order_key)? else {
            return Ok(());
        };
        if !order.status.can_become(next) {
            return Ok(());
        }
        if next == Status::Paid {
            let total = order.total.clone();
            store.update(&customer_key(&order.customer), |customer: &mut Customer| {
                add(&customer.spent, &total).map(|spent| customer.spent = spent)
            })??;
        }
        move_count(order.status, next, store)?;
        order.status = next;
        store.put(&order_key, &order)
    }
}

fn place(order_key: &str, placed: OrderPlaced, store: &mut Store) -> Result<(), String> {
    if store.get_bytes(order_key).is_some() {
        return Ok(());
    }
    store.update(
        &customer_key(&placed.customer),
        |customer: &mut Customer| customer.orders += 1,
    )?;
    store.update(&status_key(Status::Placed), |placed: &mut StatusCount| {
        placed.count += 1
    })?;
    let order = Order {
        customer: placed.customer,
        total: placed.total,
        status: Status::Placed,
    };
    store.put(order_key, &order)
}

fn move_count(from: Status, to: Status, store: &mut Store) -> Result<(), String> {
    store.update(&status_key(from), |count: &mut StatusCount| {
        count.count = count.count.saturating_sub(1)
    })?;
    store.update(&status_key(to), |count: &mut StatusCount| count.count += 1)
}

fn customer_key(customer: &str) -> String {
    format!("customer/{customer}")
}

fn status_key(status: Status) -> String {
    format!("status/{}", status.name())
}

/// `a + b`, exact while both are integers.
///
/// # Errors
/// When integer addition overflows or a float sum is not finite.
fn add(a: &Number, b: &Number) -> Result<Number, String> {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return a
            .checked_add(b)
            .map(Number::from)
            .ok_or_else(|| "the amount overflows".to_owned());
    }
    let sum = a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0);
    Number::from_f64(sum).ok_or_else(|| "the amount is not a finite number".to_owned())
}

refold_guest::export_projection!(OrderSummary);

#[cfg(test)]
mod tests {
    use super::*;
    use refold_guest::testing::handle_batch;
    use serde_json::{Value, json};

    fn run(events: &[(&str, &str, &str)]) -> Result<Store, String> {
        let events: Vec<Event> = events
            .iter()
            .enumerate()
            .map(|(position, (stream, event_type, data))| {
                Event::new(*stream, *event_type, *data).with_position(position as u64)
            })
            .collect();
        let mut store = Store::in_memory();
        handle_batch::<OrderSummary, _>(&events, &mut store)?;
        Ok(store)
    }

    fn value(store: &Store, key: &str) -> Value {
        store.get::<Value>(key).unwrap().unwrap_or(Value::Null)
    }

    #[test]
    fn an_order_moves_through_its_statuses_and_the_counts_follow() {
        let store = run(&[
            (
                "order-1",
                "OrderPlaced",
                r#"{"customer":"ada","total":1200}"#,
            ),
            (
                "order-2",
                "OrderPlaced",
                r#"{"customer":"ada","total":300}"#,
            ),
            ("order-1", "OrderPaid", "{}"),
            ("order-1", "OrderShipped", "{}"),
            ("order-2", "OrderCancelled", "{}"),
        ])
        .unwrap();

        assert_eq!(
            value(&store, "order/order-1"),
            json!({"customer":"ada","total":1200,"status":"shipped"})
        );
        assert_eq!(
            value(&store, "order/order-2"),
            json!({"customer":"ada","total":300,"status":"cancelled"})
        );
        assert_eq!(
            value(&store, "customer/ada"),
            json!({"orders":2,"spent":1200})
        );
        assert_eq!(value(&store, "status/placed"), json!({"count":0}));
        assert_eq!(value(&store, "status/paid"), json!({"count":0}));
        assert_eq!(value(&store, "status/shipped"), json!({"count":1}));
        assert_eq!(value(&store, "status/cancelled"), json!({"count":1}));
    }

    #[test]
    fn a_paid_order_that_is_cancelled_stays_in_spent() {
        let store = run(&[
            ("order-1", "OrderPlaced", r#"{"customer":"ada","total":50}"#),
            ("order-1", "OrderPaid", "{}"),
            ("order-1", "OrderCancelled", "{}"),
        ])
        .unwrap();

        assert_eq!(
            value(&store, "customer/ada"),
            json!({"orders":1,"spent":50})
        );
        assert_eq!(value(&store, "status/paid"), json!({"count":0}));
        assert_eq!(value(&store, "status/cancelled"), json!({"count":1}));
    }

    #[test]
    fn events_outside_an_orders_life_change_nothing() {
        let store = run(&[
            ("order-9", "OrderPaid", "{}"),
            ("order-1", "OrderPlaced", r#"{"customer":"ada","total":50}"#),
            ("order-1", "OrderPlaced", r#"{"customer":"bob","total":70}"#),
            ("order-1", "OrderShipped", "{}"),
            ("order-1", "OrderCancelled", "{}"),
            ("order-1", "OrderPaid", "{}"),
        ])
        .unwrap();

        assert_eq!(value(&store, "order/order-9"), Value::Null);
        assert_eq!(value(&store, "customer/bob"), Value::Null);
        assert_eq!(
            value(&store, "order/order-1"),
            json!({"customer":"ada","total":50,"status":"cancelled"})
        );
        assert_eq!(value(&store, "customer/ada"), json!({"orders":1,"spent":0}));
        assert_eq!(value(&store, "status/placed"), json!({"count":0}));
        assert_eq!(value(&store, "status/cancelled"), json!({"count":1}));
        assert_eq!(value(&store, "status/paid"), Value::Null);
        assert_eq!(value(&store, "status/shipped"), Value::Null);
    }

    #[test]
    fn fractional_totals_add_up() {
        let store = run(&[
            (
                "order-1",
                "OrderPlaced",
                r#"{"customer":"ada","total":1.5}"#,
            ),
            ("order-1", "OrderPaid", "{}"),
            ("order-2", "OrderPlaced", r#"{"customer":"ada","total":2}"#),
            ("order-2", "OrderPaid", "{}"),
        ])
        .unwrap();

        assert_eq!(
            value(&store, "customer/ada"),
            json!({"orders":2,"spent":3.5})
        );
    }

    #[test]
    fn an_order_placed_without_a_total_fails_naming_the_event() {
        let error = run(&[("order-1", "OrderPlaced", r#"{"customer":"ada"}"#)]).unwrap_err();

        assert!(
            error.starts_with("position 0 (order-1 revision 0, OrderPlaced"),
            "{error}"
        );
        assert!(error.contains("missing field `total`"), "{error}");
    }

    #[test]
    fn scanning_a_prefix_lists_every_status() {
        let store = run(&[
            ("order-1", "OrderPlaced", r#"{"customer":"ada","total":1}"#),
            ("order-1", "OrderPaid", "{}"),
        ])
        .unwrap();

        let statuses: Vec<(String, StatusCount)> =
            store.scan("status/").collect::<Result<_, _>>().unwrap();

        assert_eq!(
            statuses,
            [
                ("status/paid".to_owned(), StatusCount { count: 1 }),
                ("status/placed".to_owned(), StatusCount { count: 0 })
            ]
        );
    }
}
