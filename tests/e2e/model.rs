//! Independent computations of what the example modules must produce, and random event
//! sequences to feed them.

use std::collections::{BTreeMap, HashMap};

use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::{Value, json};

/// One event to append: stream, type, data.
pub type Planned = (String, &'static str, Value);

/// `bank-account`'s state per stream.
#[derive(Default)]
pub struct Banks {
    pub accounts: BTreeMap<String, (Option<String>, i64, u64)>,
}

impl Banks {
    pub fn apply(&mut self, stream: &str, event_type: &str, data: &Value) {
        if !stream.starts_with("account-") {
            return;
        }
        let touched = matches!(event_type, "AccountOpened" | "Deposited" | "Withdrawn");
        if !touched {
            return;
        }
        let account = self.accounts.entry(stream.to_owned()).or_default();
        match event_type {
            "AccountOpened" => account.0 = Some(data["owner"].as_str().unwrap().to_owned()),
            "Deposited" => {
                account.1 += data["amount"].as_i64().unwrap();
                account.2 += 1;
            }
            "Withdrawn" => {
                account.1 -= data["amount"].as_i64().unwrap();
                account.2 += 1;
            }
            _ => {}
        }
    }

    pub fn expected(&self, stream: &str) -> Value {
        let (owner, balance, transactions) = &self.accounts[stream];
        json!({"owner": owner, "balance": balance, "transactions": transactions})
    }
}

/// `order-summary`'s keys.
#[derive(Default)]
pub struct Orders {
    orders: HashMap<String, (String, i64, &'static str)>,
    customers: BTreeMap<String, (u64, i64)>,
    statuses: BTreeMap<&'static str, u64>,
}

impl Orders {
    pub fn apply(&mut self, stream: &str, event_type: &str, data: &Value) {
        if !stream.starts_with("order-") {
            return;
        }
        let next = match event_type {
            "OrderPlaced" => {
                if self.orders.contains_key(stream) {
                    return;
                }
                let customer = data["customer"].as_str().unwrap().to_owned();
                let total = data["total"].as_i64().unwrap();
                self.customers.entry(customer.clone()).or_default().0 += 1;
                *self.statuses.entry("placed").or_default() += 1;
                self.orders
                    .insert(stream.to_owned(), (customer, total, "placed"));
                return;
            }
            "OrderPaid" => "paid",
            "OrderShipped" => "shipped",
            "OrderCancelled" => "cancelled",
            _ => return,
        };
        let Some(order) = self.orders.get_mut(stream) else {
            return;
        };
        let allowed = matches!(
            (order.2, next),
            ("placed", "paid") | ("paid", "shipped") | ("placed" | "paid", "cancelled")
        );
        if !allowed {
            return;
        }
        if next == "paid" {
            self.customers.entry(order.0.clone()).or_default().1 += order.1;
        }
        let count = self.statuses.entry(order.2).or_default();
        *count = count.saturating_sub(1);
        *self.statuses.entry(next).or_default() += 1;
        order.2 = next;
    }

    /// Every key the projection must hold, with its value.
    pub fn expected(&self) -> BTreeMap<String, Value> {
        let mut keys = BTreeMap::new();
        for (stream, (customer, total, status)) in &self.orders {
            keys.insert(
                format!("order/{stream}"),
                json!({"customer": customer, "total": total, "status": status}),
            );
        }
        for (customer, (orders, spent)) in &self.customers {
            keys.insert(
                format!("customer/{customer}"),
                json!({"orders": orders, "spent": spent}),
            );
        }
        for (status, count) in &self.statuses {
            keys.insert(format!("status/{status}"), json!({"count": count}));
        }
        keys
    }
}

/// Random events over `accounts` account streams and `orders` order streams, including
/// events the modules must ignore (other types, other categories, out-of-order statuses).
pub fn random_events(count: usize, accounts: usize, orders: usize) -> Vec<Planned> {
    let mut rng = rand::rng();
    let customers = ["ann", "bob", "cyd", "dee"];
    (0..count)
        .map(|_| {
            let roll = rng.random_range(0..100);
            if roll < 50 {
                let stream = format!("account-{}", rng.random_range(0..accounts));
                match rng.random_range(0..10) {
                    0 => (stream, "AccountOpened", json!({"owner": customers.choose(&mut rng).unwrap()})),
                    1..=5 => (stream, "Deposited", json!({"amount": rng.random_range(1..10_000)})),
                    6..=8 => (stream, "Withdrawn", json!({"amount": rng.random_range(1..5_000)})),
                    _ => (stream, "Renamed", json!({"to": "x"})),
                }
            } else if roll < 95 {
                let stream = format!("order-{}", rng.random_range(0..orders));
                match rng.random_range(0..10) {
                    0..=3 => (
                        stream,
                        "OrderPlaced",
                        json!({"customer": customers.choose(&mut rng).unwrap(), "total": rng.random_range(1..500)}),
                    ),
                    4..=6 => (stream, "OrderPaid", json!({})),
                    7..=8 => (stream, "OrderShipped", json!({})),
                    _ => (stream, "OrderCancelled", json!({})),
                }
            } else {
                (format!("audit-{}", rng.random_range(0..3)), "Deposited", json!({"amount": 1}))
            }
        })
        .collect()
}
