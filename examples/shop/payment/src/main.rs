//! The shop's payment service, one worker of the consumer group `payment`.
//!
//! It polls `OrderPlaced` events, charges each order (a pretend card gateway that times
//! out on the first try for some orders: those are nacked with `retry` and come back), and
//! records `PaymentCaptured` in stream `payment-<order>`. The event id is derived from the
//! order, so a delivery that comes twice (a lease that expired, a crash before the ack)
//! records the payment once: Refold answers a retried id with the original append.
//!
//!     shop-payment --server http://127.0.0.1:7420 --worker payment-1

use serde_json::{Value, json};
use ureq::Agent;

struct Args {
    server: String,
    worker: String,
}

fn args() -> Args {
    let mut args = Args {
        server: "http://127.0.0.1:7420".into(),
        worker: "payment".into(),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().unwrap_or_default();
        match flag.as_str() {
            "--server" => args.server = value.trim_end_matches('/').to_owned(),
            "--worker" => args.worker = value,
            other => {
                eprintln!("unknown argument {other}; usage: shop-payment --server URL --worker NAME");
                std::process::exit(2);
            }
        }
    }
    args
}

/// Sends a JSON request; the answer's status and body.
fn call(agent: &Agent, method: &str, url: &str, body: Option<&Value>) -> Result<(u16, Value), String> {
    let response = match (method, body) {
        ("POST", Some(body)) => agent.post(url).send_json(body),
        ("POST", None) => agent.post(url).send_empty(),
        _ => agent.get(url).call(),
    };
    let mut response = response.map_err(|err| err.to_string())?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_json::<Value>().unwrap_or(Value::Null);
    Ok((status, body))
}

/// Whether the pretend gateway times out on this delivery.
fn gateway_times_out(order: u64, delivery: u64) -> bool {
    delivery == 1 && order % 7 == 3
}

fn main() {
    let args = args();
    let agent: Agent = Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let group = format!("{}/subscriptions/payment", args.server);
    loop {
        let poll = format!("{group}/poll?max=50&wait_ms=5000&worker={}", args.worker);
        let messages = match call(&agent, "POST", &poll, None) {
            Ok((200, body)) => body["messages"].as_array().cloned().unwrap_or_default(),
            Ok((status, body)) => {
                eprintln!("[{}] poll answered {status}: {body}", args.worker);
                std::thread::sleep(std::time::Duration::from_millis(500));
                continue;
            }
            Err(err) => {
                eprintln!("[{}] cannot reach Refold: {err}", args.worker);
                std::thread::sleep(std::time::Duration::from_millis(500));
                continue;
            }
        };
        let (mut done, mut retry) = (Vec::new(), Vec::new());
        for message in &messages {
            let lease = message["lease"].clone();
            let event = &message["event"];
            let order = event["data"]["order"].as_u64().unwrap_or_default();
            let delivery = message["delivery"].as_u64().unwrap_or(1);
            if gateway_times_out(order, delivery) {
                println!("[{}] order {order}: card gateway timed out (delivery {delivery}), retry later", args.worker);
                retry.push(lease);
                continue;
            }
            let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("refold-shop:payment/{order}").as_bytes());
            let payment = json!({
                "id": id.to_string(),
                "type": "PaymentCaptured",
                "data": {"order": order, "amount": event["data"]["total"]},
                "metadata": {"causation_id": event["id"]},
            });
            match call(&agent, "POST", &format!("{}/streams/payment-{order}", args.server), Some(&payment)) {
                Ok((201, _)) => {
                    println!("[{}] order {order}: payment of {} captured", args.worker, event["data"]["total"]);
                    done.push(lease);
                }
                Ok((status, body)) => {
                    eprintln!("[{}] order {order}: recording the payment answered {status}: {body}", args.worker);
                    retry.push(lease);
                }
                Err(err) => {
                    eprintln!("[{}] order {order}: {err}", args.worker);
                    retry.push(lease);
                }
            }
        }
        if !done.is_empty() {
            if let Err(err) = call(&agent, "POST", &format!("{group}/ack"), Some(&json!({"leases": done}))) {
                eprintln!("[{}] ack failed (the events will come again): {err}", args.worker);
            }
        }
        if !retry.is_empty() {
            let body = json!({"leases": retry, "action": "retry", "reason": "card gateway timed out"});
            if let Err(err) = call(&agent, "POST", &format!("{group}/nack"), Some(&body)) {
                eprintln!("[{}] nack failed (the leases will expire): {err}", args.worker);
            }
        }
    }
}
