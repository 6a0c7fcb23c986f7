//! A reducer that never returns from `filter` (it spins), for the test that a past-state query reports the guest's
//! failure as the guest's (422 `guest_failed`, within the module's time limit), never as
//! a storage failure. Its `init` and `apply` are ordinary: `{"count": N}` per stream.

wit_bindgen::generate!({ path: "../../../wit", world: "reducer" });

struct Misfit;

impl Guest for Misfit {
    fn filter() -> EventFilter {
        loop {
            std::hint::black_box(());
        }
    }

    fn init(_stream_id: String) -> Vec<u8> {
        br#"{"count":0}"#.to_vec()
    }

    fn apply(batches: Vec<StreamBatch>) -> Vec<Result<Vec<u8>, String>> {
        batches
            .into_iter()
            .map(|b| Ok(format!(r#"{{"count":{}}}"#, b.events.len()).into_bytes()))
            .collect()
    }
}

export!(Misfit);
