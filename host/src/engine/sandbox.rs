//! The sandbox a guest runs in: what its store holds, and the sealed WASI it may see.
//!
//! A guest gets no files (no preopened directories), no network (sockets are refused at
//! upload, and every socket capability is off), no environment or arguments, and nothing
//! that changes between calls: both clocks stand still (the wall clock at the Unix epoch,
//! the monotonic clock at 0) and every draw of randomness returns the same bytes. So what a
//! guest can observe besides its events is constant: independent of how events are
//! batched, of instance reuse, of the second instance, of restarts and traps, and a replay
//! gives the same state byte for byte. (A counter of reads or a seeded generator would
//! not do: the n-th draw would depend on how many calls came before.) Per-event values
//! come from the event itself (the SDK's `Event::seed`/`Event::random`; `recorded-at` is
//! the event's time). Whatever a guest prints goes to its bounded [`GuestLog`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::Serialize;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView,
    WasiView,
};

use super::ModuleLimits;

/// A projection's key-value read model as the guest sees it during one call.
pub trait StateStore: Send + std::any::Any {
    /// # Errors
    /// A message that faults the guest (a storage failure, a limit).
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// # Errors
    /// As for `get`.
    fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), String>;
    /// # Errors
    /// As for `get`.
    fn delete(&mut self, key: String) -> Result<(), String>;
    /// The entries `scan` asks for, in key order.
    ///
    /// # Errors
    /// As for `get`; also when the entries would add up to more than `scan.max_bytes` (keys
    /// and values): the call is refused rather than cut short, since a guest takes a page
    /// shorter than `limit` for the end.
    fn scan(&mut self, scan: Scan<'_>) -> Result<Vec<(String, Vec<u8>)>, String>;
}

/// One state-store scan: up to `limit` entries under `prefix` after `start_after`, holding
/// at most `max_bytes` (keys and values).
#[derive(Clone, Copy, Debug)]
pub struct Scan<'a> {
    pub prefix: &'a str,
    pub start_after: Option<&'a str>,
    pub limit: usize,
    pub max_bytes: usize,
}

/// What a guest's wasmtime store holds.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) limits: GuestLimiter,
    /// The read model a projection call writes through; `None` outside calls.
    pub(super) state_store: Option<Box<dyn StateStore>>,
    /// Why the last state-store call trapped, to report it instead of a bare trap.
    pub(super) store_failure: Option<String>,
    /// Bytes written through the state store in the current call, and the limit.
    pub(super) call_write_bytes: usize,
    pub(super) max_call_write_bytes: usize,
    pub(super) max_key_bytes: usize,
    pub(super) max_scan_bytes: usize,
}

impl GuestState {
    pub(super) fn new(limits: &ModuleLimits, log: &GuestLog) -> Self {
        let wasi = WasiCtxBuilder::new()
            .stdout(LogPipe::new(log.clone(), LogSource::Stdout))
            .stderr(LogPipe::new(log.clone(), LogSource::Stderr))
            .wall_clock(EpochClock)
            .monotonic_clock(FrozenClock)
            .secure_random(ConstantRandom::new(0x5eed_0001))
            .insecure_random(ConstantRandom::new(0x5eed_0002))
            .insecure_random_seed(0x5eed_0003)
            .max_random_size(limits.max_random_bytes as u64)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        Self {
            wasi,
            table: ResourceTable::new(),
            limits: GuestLimiter {
                memory_bytes: limits.memory_bytes,
                table_elements: limits.table_elements,
            },
            state_store: None,
            store_failure: None,
            call_write_bytes: 0,
            max_call_write_bytes: limits.max_call_write_bytes,
            max_key_bytes: limits.max_key_bytes,
            max_scan_bytes: limits.max_scan_bytes,
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The guest's memories and tables, each held to the module's limit. Growing past it traps
/// with a [`LimitHit`], which the caller recognises by type.
pub(super) struct GuestLimiter {
    memory_bytes: usize,
    table_elements: usize,
}

/// A guest tried to grow a memory or a table past its module's limit.
#[derive(Debug, thiserror::Error)]
#[error("the guest tried to grow {what} to {desired} {unit}; the module's limit is {limit} {unit}")]
pub struct LimitHit {
    pub what: &'static str,
    pub unit: &'static str,
    pub desired: usize,
    pub limit: usize,
}

impl ResourceLimiter for GuestLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            return Err(LimitHit {
                what: "its memory",
                unit: "bytes",
                desired,
                limit: self.memory_bytes,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(LimitHit {
                what: "a table",
                unit: "elements",
                desired,
                limit: self.table_elements,
            }
            .into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// A wall clock that always reads the Unix epoch.
struct EpochClock;

impl HostWallClock for EpochClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

/// A monotonic clock that always reads 0.
struct FrozenClock;

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Randomness that is the same on every draw: `next_u64` and `next_u32` return one
/// constant each, and `fill_bytes` always fills from the start of one fixed SplitMix64
/// sequence. So a draw depends only on its size, never on earlier draws.
struct ConstantRandom {
    seed: u64,
}

impl ConstantRandom {
    fn new(seed: u64) -> Self {
        Self { seed }
    }

    /// The `n`-th value of the SplitMix64 sequence from `seed`.
    fn splitmix(seed: u64, n: u64) -> u64 {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(n + 1));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl rand_core::TryRng for ConstantRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        Ok((Self::splitmix(self.seed, 0) >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        Ok(Self::splitmix(self.seed, 0))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        for (n, chunk) in dst.chunks_mut(8).enumerate() {
            let bytes = Self::splitmix(self.seed, n as u64).to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

/// Which output a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    Stdout,
    Stderr,
}

/// One line a guest printed.
#[derive(Clone, Debug, Serialize)]
pub struct LogLine {
    pub source: LogSource,
    pub line: String,
}

/// A page of a module's log (see [`GuestLog::since`]).
pub struct LogPage {
    pub lines: Vec<LogLine>,
    /// The number of the first line in `lines`.
    pub first: u64,
    /// Lines ever written: the number the next line will get.
    pub written: u64,
    /// Lines dropped to keep the log within its bound, overall.
    pub dropped: u64,
}

#[derive(Default)]
struct LogBuffer {
    lines: VecDeque<LogLine>,
    bytes: usize,
    capacity: usize,
    dropped: u64,
    /// Lines ever written (kept or dropped).
    written: u64,
    partial: [Vec<u8>; 2],
}

/// What a module printed: the most recent lines, bounded in bytes (oldest dropped first).
#[derive(Clone)]
pub struct GuestLog(Arc<Mutex<LogBuffer>>);

/// The longest line kept; longer output is cut into lines of this size.
const MAX_LINE_BYTES: usize = 4096;

impl GuestLog {
    pub fn new(capacity_bytes: usize) -> Self {
        Self(Arc::new(Mutex::new(LogBuffer {
            capacity: capacity_bytes,
            ..LogBuffer::default()
        })))
    }

    fn write(&self, source: LogSource, mut bytes: &[u8]) {
        let mut buffer = self.0.lock();
        let slot = source as usize;
        while !bytes.is_empty() {
            let room = MAX_LINE_BYTES - buffer.partial[slot].len().min(MAX_LINE_BYTES);
            let newline = bytes.iter().position(|&b| b == b'\n');
            let take = newline.map_or(bytes.len(), |i| i + 1).min(room.max(1));
            buffer.partial[slot].extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            let complete = buffer.partial[slot].last() == Some(&b'\n')
                || buffer.partial[slot].len() >= MAX_LINE_BYTES;
            if complete {
                let raw = std::mem::take(&mut buffer.partial[slot]);
                let text = String::from_utf8_lossy(&raw)
                    .trim_end_matches('\n')
                    .to_owned();
                buffer.push(LogLine { source, line: text });
            }
        }
    }

    /// How many lines were ever written; see [`GuestLog::stderr_since`].
    pub fn written(&self) -> u64 {
        self.0.lock().written
    }

    /// The stderr lines written after `written` lines (those still kept), including a
    /// partial last line.
    pub fn stderr_since(&self, written: u64) -> Vec<String> {
        let buffer = self.0.lock();
        let new = (buffer.written.saturating_sub(written)) as usize;
        let skip = buffer.lines.len().saturating_sub(new);
        let mut lines: Vec<String> = buffer
            .lines
            .iter()
            .skip(skip)
            .filter(|l| l.source == LogSource::Stderr)
            .map(|l| l.line.clone())
            .collect();
        let partial = &buffer.partial[LogSource::Stderr as usize];
        if !partial.is_empty() {
            lines.push(String::from_utf8_lossy(partial).into_owned());
        }
        lines
    }

    /// Up to `limit` kept lines numbered `from` on (lines are numbered from 0 in the order
    /// written), oldest first, with the number of the first one returned; lines dropped
    /// before `from` was asked for are skipped.
    pub fn since(&self, from: u64, limit: usize) -> LogPage {
        let buffer = self.0.lock();
        let first_kept = buffer.written - buffer.lines.len() as u64;
        let first = from.max(first_kept);
        let skip = usize::try_from(first - first_kept).unwrap_or(usize::MAX);
        LogPage {
            lines: buffer
                .lines
                .iter()
                .skip(skip)
                .take(limit)
                .cloned()
                .collect(),
            first,
            written: buffer.written,
            dropped: buffer.dropped,
        }
    }

    /// The most recent `limit` lines, oldest first, and how many were dropped overall.
    pub fn tail(&self, limit: usize) -> (Vec<LogLine>, u64) {
        let buffer = self.0.lock();
        let skip = buffer.lines.len().saturating_sub(limit);
        (
            buffer.lines.iter().skip(skip).cloned().collect(),
            buffer.dropped,
        )
    }
}

impl LogBuffer {
    fn push(&mut self, line: LogLine) {
        self.written += 1;
        self.bytes += line.line.len();
        self.lines.push_back(line);
        while self.bytes > self.capacity {
            match self.lines.pop_front() {
                Some(old) => {
                    self.bytes -= old.line.len();
                    self.dropped += 1;
                }
                None => break,
            }
        }
    }
}

/// A guest's stdout or stderr, writing into its log.
#[derive(Clone)]
struct LogPipe {
    log: GuestLog,
    source: LogSource,
}

impl LogPipe {
    fn new(log: GuestLog, source: LogSource) -> Self {
        Self { log, source }
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.log.write(self.source, &bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.log.write(self.source, buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_whole_lines_and_drops_the_oldest() {
        let log = GuestLog::new(20);
        log.write(LogSource::Stdout, b"hello ");
        log.write(LogSource::Stderr, b"oops\n");
        log.write(LogSource::Stdout, b"world\nsecond line\nthird\n");
        let (lines, dropped) = log.tail(10);
        let text: Vec<_> = lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(text, ["second line", "third"]);
        assert_eq!(dropped, 2);
    }

    #[test]
    fn the_log_pages_by_line_number_from_what_is_kept() {
        let log = GuestLog::new(20);
        log.write(LogSource::Stdout, b"one\ntwo\nthree\nfour\nfive\nsix\n");
        // 20 bytes keep "two".."six" (lines 1 to 5).
        let page = log.since(0, 2);
        let text: Vec<_> = page.lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!(
            (text, page.first, page.written),
            (vec!["two", "three"], 1, 6)
        );
        let page = log.since(4, 10);
        let text: Vec<_> = page.lines.iter().map(|l| l.line.as_str()).collect();
        assert_eq!((text, page.first), (vec!["five", "six"], 4));
        assert!(log.since(6, 10).lines.is_empty());
    }

    #[test]
    fn every_draw_of_randomness_is_the_same_whatever_came_before() {
        use rand_core::Rng;
        let (mut a, mut b) = (ConstantRandom::new(7), ConstantRandom::new(7));
        let first = a.next_u64();
        let _ = a.next_u32();
        let mut skip = [0u8; 100];
        a.fill_bytes(&mut skip);
        assert_eq!(a.next_u64(), first);
        assert_eq!(b.next_u64(), first);
        let (mut x, mut y) = ([0u8; 24], [0u8; 24]);
        a.fill_bytes(&mut x);
        b.fill_bytes(&mut y);
        assert_eq!(x, y);
        assert_ne!(x[..8], x[8..16], "the bytes of one draw still vary");
    }

    #[test]
    fn the_clocks_stand_still() {
        assert_eq!(FrozenClock.now(), FrozenClock.now());
        assert_eq!(FrozenClock.now(), 0);
        assert_eq!(EpochClock.now(), Duration::ZERO);
    }
}
