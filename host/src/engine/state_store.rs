//! The `state-store` import as the host serves it to a projection or processor during a
//! call (the same for both contract versions): each write charged against the call's
//! budget, every failure kept for the guest's error.

use super::ENTRY_OVERHEAD_BYTES;
use super::bindings::{self, state_store};
use super::sandbox::{GuestState, Scan, StateStore};

impl bindings::reducer::refold::projection::types::Host for GuestState {}
impl bindings::v2::reducer::refold::projection::types::Host for GuestState {}
impl bindings::v2::reducer::refold::projection::reducing::Host for GuestState {}
impl bindings::v2::processor::refold::projection::emitting::Host for GuestState {}

impl GuestState {
    fn with_state_store<R>(
        &mut self,
        f: impl FnOnce(&mut dyn StateStore) -> Result<R, String>,
    ) -> wasmtime::Result<R> {
        let Some(store) = self.state_store.as_mut() else {
            return Err(wasmtime::Error::msg(
                "state-store used outside a handle call",
            ));
        };
        f(store.as_mut()).map_err(|message| {
            self.store_failure = Some(message.clone());
            wasmtime::Error::msg(message)
        })
    }
}

impl GuestState {
    /// Charges a state-store write of `bytes` (plus its entry) against the call's budget,
    /// and checks the key's length.
    fn charge_write(&mut self, key: &str, bytes: usize) -> wasmtime::Result<()> {
        self.call_write_bytes += key.len() + bytes + ENTRY_OVERHEAD_BYTES;
        let (written, budget) = (self.call_write_bytes, self.max_call_write_bytes);
        let refusal = if key.len() > self.max_key_bytes {
            Some(format!(
                "the guest used a state-store key of {} bytes; the module's limit is {} bytes",
                key.len(),
                self.max_key_bytes
            ))
        } else if written > budget {
            Some(format!(
                "the call wrote {written} bytes through the state store (puts and deletes, \
                 {ENTRY_OVERHEAD_BYTES} bytes more per write); the module's limit is {budget} \
                 bytes per call"
            ))
        } else {
            None
        };
        match refusal {
            Some(message) => {
                self.store_failure = Some(message.clone());
                Err(wasmtime::Error::msg(message))
            }
            None => Ok(()),
        }
    }
}

/// The state store's calls, as both contract versions import them.
impl GuestState {
    fn store_get(&mut self, key: &str) -> wasmtime::Result<Option<Vec<u8>>> {
        self.with_state_store(|s| s.get(key))
    }

    fn store_put(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
        self.charge_write(&key, value.len())?;
        self.with_state_store(|s| s.put(key, value))
    }

    fn store_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.charge_write(&key, 0)?;
        self.with_state_store(|s| s.delete(key))
    }

    fn store_scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
        let max_bytes = self.max_scan_bytes;
        self.with_state_store(|s| {
            s.scan(Scan {
                prefix,
                start_after,
                limit: limit as usize,
                max_bytes,
            })
        })
    }
}

/// Implements a version's generated `state-store` trait by the calls above.
macro_rules! state_store_host {
    ($host:path) => {
        impl $host for GuestState {
            fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
                self.store_get(&key)
            }

            fn put(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<()> {
                self.store_put(key, value)
            }

            fn delete(&mut self, key: String) -> wasmtime::Result<()> {
                self.store_delete(key)
            }

            fn scan(
                &mut self,
                prefix: String,
                start_after: Option<String>,
                limit: u32,
            ) -> wasmtime::Result<Vec<(String, Vec<u8>)>> {
                self.store_scan(&prefix, start_after.as_deref(), limit)
            }
        }
    };
}

state_store_host!(state_store::Host);
state_store_host!(bindings::v2::state_store::Host);
