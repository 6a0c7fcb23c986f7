//! The owner of one module version: a thread that owns its runner (and with it the guest
//! instances and the read-ahead), decides what the version is doing, publishes it, and
//! takes commands: pause, resume, reset, skip, the end of a verify, stop. A command waits
//! at most for the batch in progress; nobody else ever touches the runner, so no lock is
//! held across a guest call, a commit or a join, and queries (which read the version's
//! state directly) never wait on it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, channel, sync_channel};
use std::thread::JoinHandle;

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::error::ModuleError;
use super::model::{Fault, Status, now_rfc3339};
use super::runner::{Runner, Stopped};
use super::state::{Changes, DeadLetter};
use super::verify::{Scratch, Verification};
use super::version::DeployedModule;
use crate::store::EventLog;

type Reply<T> = SyncSender<Result<T, ModuleError>>;

enum Command {
    Pause(Reply<()>),
    Resume(Reply<()>),
    Reset(Reply<()>),
    Skip(Reply<()>),
    FinishVerify(Box<Scratch>, Reply<Verification>),
    Stop(Reply<()>),
}

/// What the owner is doing with its version.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Following,
    Paused,
    Faulted,
}

/// The handle to a version's owner thread.
pub(super) struct Owner {
    commands: Sender<Command>,
    poke: Arc<Notify>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Called when the version catches up after a rebuild.
pub(super) type CaughtUp = Arc<dyn Fn() + Send + Sync>;

impl Owner {
    /// Starts the owner of `module`: following the log, or paused.
    ///
    /// # Errors
    /// The thread cannot start.
    pub(super) fn start(
        module: Arc<DeployedModule>,
        log: Arc<dyn EventLog>,
        paused: bool,
        caught_up: CaughtUp,
    ) -> Result<Self, ModuleError> {
        let (commands, inbox) = channel();
        let poke = Arc::new(Notify::new());
        let mut life = Life {
            module: module.clone(),
            log,
            caught_up,
            runner: None,
            mode: Mode::Paused,
        };
        if paused {
            module.set_status(Status::Paused, None);
        } else {
            life.follow();
        }
        let woken = poke.clone();
        let thread = std::thread::Builder::new()
            .name(format!("module-{}", module.name))
            .spawn(move || life.run(&inbox, &woken))
            .map_err(|err| ModuleError::Internal(anyhow::anyhow!("starting the module: {err}")))?;
        Ok(Self {
            commands,
            poke,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, ModuleError> {
        let gone = || ModuleError::Conflict("the version stopped meanwhile; try again".into());
        let (reply, answer) = sync_channel(1);
        self.commands.send(command(reply)).map_err(|_| gone())?;
        self.poke.notify_one();
        answer.recv().map_err(|_| gone())?
    }

    /// Stops after the batch in progress (committed); stays stopped until resumed.
    pub(super) fn pause(&self) -> Result<(), ModuleError> {
        self.ask(Command::Pause)
    }

    /// Follows the log again (a faulted version retries its event).
    pub(super) fn resume(&self) -> Result<(), ModuleError> {
        self.ask(Command::Resume)
    }

    /// Drops the state and dead letters and rebuilds from position 0 (once resumed, if
    /// paused).
    pub(super) fn reset(&self) -> Result<(), ModuleError> {
        self.ask(Command::Reset)
    }

    /// Steps a faulted version over the event it stopped at, as a dead letter.
    pub(super) fn skip(&self) -> Result<(), ModuleError> {
        self.ask(Command::Skip)
    }

    /// With the version stopped between batches: the last stretch of `scratch`'s rebuild
    /// and the comparison.
    pub(super) fn finish_verify(&self, scratch: Scratch) -> Result<Verification, ModuleError> {
        self.ask(|reply| Command::FinishVerify(Box::new(scratch), reply))
    }

    /// Commits, flushes and ends the thread; waits for it. Calling it again does nothing.
    pub(super) fn stop(&self) {
        let Some(thread) = self.thread.lock().take() else {
            return;
        };
        let _ = self.ask(Command::Stop);
        if thread.join().is_err() {
            tracing::error!("a module owner thread panicked");
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The owner thread's own state.
struct Life {
    module: Arc<DeployedModule>,
    log: Arc<dyn EventLog>,
    caught_up: CaughtUp,
    runner: Option<Runner>,
    mode: Mode,
}

impl Life {
    fn run(mut self, inbox: &Receiver<Command>, poke: &Arc<Notify>) {
        loop {
            let command = match (self.mode, self.runner.as_mut()) {
                (Mode::Following, Some(runner)) => {
                    let mut waiting = None;
                    let outcome = runner.follow(poke, &mut || match inbox.try_recv() {
                        Ok(command) => {
                            waiting = Some(command);
                            true
                        }
                        Err(TryRecvError::Empty) => false,
                        Err(TryRecvError::Disconnected) => true,
                    });
                    match outcome {
                        Ok(Stopped::Interrupted) => waiting,
                        Ok(Stopped::LogClosed) => inbox.recv().ok(),
                        Err(fault) => {
                            self.fault(fault);
                            continue;
                        }
                    }
                }
                _ => inbox.recv().ok(),
            };
            // No command: every handle is gone.
            let Some(command) = command else {
                self.stop_runner();
                return;
            };
            if !self.handle(command) {
                return;
            }
        }
    }

    /// Carries out `command`; `false` once the owner is to end.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Pause(reply) => {
                self.stop_runner();
                self.mode = Mode::Paused;
                self.module.set_status(Status::Paused, None);
                let _ = reply.send(Ok(()));
            }
            Command::Resume(reply) => {
                if self.mode != Mode::Following {
                    self.follow();
                }
                let _ = reply.send(Ok(()));
            }
            Command::Reset(reply) => {
                let _ = reply.send(self.reset());
            }
            Command::Skip(reply) => {
                let _ = reply.send(self.skip());
            }
            Command::FinishVerify(scratch, reply) => {
                let _ = reply.send(scratch.finish(&self.module));
            }
            Command::Stop(reply) => {
                self.stop_runner();
                let _ = reply.send(Ok(()));
                return false;
            }
        }
        true
    }

    /// Starts following the log with a fresh runner.
    fn follow(&mut self) {
        self.module.started_run();
        let caught_up = self.caught_up.clone();
        let runner = Runner::new(
            self.module.clone(),
            self.log.clone(),
            self.module.settings.on_error,
            Default::default(),
        )
        .emitting(self.module.emitter())
        .on_caught_up(move || caught_up());
        self.runner = Some(runner);
        self.mode = Mode::Following;
        let checkpoint = self.module.progress().checkpoint;
        let status = if checkpoint >= self.log.head() {
            Status::Running
        } else {
            Status::Rebuilding
        };
        self.module.set_status(status, None);
    }

    /// Drops the runner (and its instances) after flushing what it committed.
    fn stop_runner(&mut self) {
        if let Some(mut runner) = self.runner.take() {
            runner.flush();
        }
    }

    fn fault(&mut self, fault: Fault) {
        tracing::warn!(module = %self.module.name, position = ?fault.position, message = %fault.message, "module faulted");
        self.stop_runner();
        self.mode = Mode::Faulted;
        self.module.set_status(Status::Faulted, Some(fault));
    }

    fn reset(&mut self) -> Result<(), ModuleError> {
        self.stop_runner();
        self.module.state.clear()?;
        self.module.publish(|p| p.checkpoint = 0);
        tracing::info!(module = %self.module.name, "reset");
        if self.mode == Mode::Paused {
            self.module.set_status(Status::Paused, None);
        } else {
            self.follow();
        }
        Ok(())
    }

    fn skip(&mut self) -> Result<(), ModuleError> {
        let progress = self.module.progress();
        let fault = match (self.mode, progress.fault) {
            (Mode::Faulted, Some(fault)) if fault.position.is_some() => fault,
            _ => {
                return Err(ModuleError::NotFaulted(format!(
                    "module {} is not stopped at an event (it is {}); skip steps over the event a faulted module stopped at",
                    self.module.name,
                    progress.status.name()
                )));
            }
        };
        let position = fault.position.unwrap_or_default();
        let mut changes = Changes::default();
        changes.put_dead_letter(&DeadLetter {
            position,
            event_id: fault.event_id.unwrap_or_default(),
            event_type: fault.event_type.unwrap_or_default(),
            stream: fault.stream.unwrap_or_default(),
            kind: fault.kind,
            message: fault.message,
            at: now_rfc3339(),
            by: "operator".into(),
        });
        changes.commit(&self.module.state, position + 1)?;
        self.module
            .counters
            .dead_letters
            .fetch_add(1, Ordering::Relaxed);
        self.module.publish(|p| p.checkpoint = position + 1);
        tracing::info!(module = %self.module.name, position, "event skipped by an operator");
        self.follow();
        Ok(())
    }
}
