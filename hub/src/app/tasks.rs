//! The hub's long-running tasks in one tracked set, and the order they stop in.
//!
//! Every task is spawned here with a name and the stage of shutdown that stops it. Before
//! shutdown, a task that ends, for whatever reason (returned, failed or panicked), is a failure:
//! [`Supervisor::watch`] returns it, `app` logs it at ERROR with the task's name and why, stops
//! the rest in order, and the process exits non-zero so systemd restarts it.
//!
//! Shutdown goes stage by stage ([`Stage`]): ingest stops first (nothing new is accepted), then
//! the store writer commits what was queued and ends on its own (ingest held its only senders),
//! then the services (API, sync, retention, commands) stop. [`Supervisor::drain`] waits for one
//! stage.
//!
//! With the `fault-injection` cargo feature, `INJECT_FAULT_INTO=<name>[:panic]` makes the task of
//! that name fail (or panic) a moment after start, so tests can see every kind of task
//! supervised. Without the feature the variable is ignored.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// When a task is stopped at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Ingest: stopped first, by the ingest token.
    Ingest,
    /// The store writer: ends by itself once ingest has ended.
    Store,
    /// Everything that serves the stored data: stopped last, by the services token.
    Services,
}

/// What a task ended with: `()` for tasks that cannot fail, or a `Result` whose error says why.
pub trait TaskEnd {
    /// The end as a result, the error as text for the log.
    fn into_result(self) -> Result<(), String>;
}

impl TaskEnd for () {
    fn into_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: Display> TaskEnd for Result<(), E> {
    fn into_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// A task that ended before shutdown, or failed during it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The task's name.
    pub task: &'static str,
    /// Why: its error, a panic, or that it returned.
    pub why: String,
}

/// The tracked set.
#[derive(Default)]
pub struct Supervisor {
    set: JoinSet<Result<(), String>>,
    tasks: HashMap<Id, (&'static str, Stage)>,
}

impl Supervisor {
    /// Spawns `task` as `name`, stopped at `stage`.
    pub fn spawn<F>(&mut self, name: &'static str, stage: Stage, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskEnd,
    {
        let task = fault::inject(name, async move { task.await.into_result() });
        let handle = self.set.spawn(task);
        self.tasks.insert(handle.id(), (name, stage));
    }

    /// The names of the tasks running now (for the log and the tests).
    pub fn names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.tasks.values().map(|(name, _)| *name).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Waits for `shutdown`, or for the first task to end: that is a failure, returned.
    pub async fn watch(&mut self, shutdown: &CancellationToken) -> Option<Failure> {
        if self.set.is_empty() {
            shutdown.cancelled().await;
            return None;
        }
        tokio::select! {
            _ = shutdown.cancelled() => None,
            Some(ended) = self.set.join_next_with_id() => {
                let (task, outcome) = self.ended(ended);
                Some(Failure {
                    task,
                    why: match outcome {
                        Ok(()) => "it returned before shutdown".to_owned(),
                        Err(why) => why,
                    },
                })
            }
        }
    }

    /// Waits until every task of `stage` has ended. A task that fails meanwhile (of any stage)
    /// is logged and returned, so the exit is non-zero; one that ends well is forgotten.
    pub async fn drain(&mut self, stage: Stage) -> Vec<Failure> {
        let mut failures = Vec::new();
        while self.tasks.values().any(|(_, s)| *s == stage) {
            let Some(ended) = self.set.join_next_with_id().await else {
                break;
            };
            let (task, outcome) = self.ended(ended);
            if let Err(why) = outcome {
                tracing::error!(task = %task, error = %why, "a task failed while the hub was stopping");
                failures.push(Failure { task, why });
            }
        }
        failures
    }

    /// Forgets the task that ended and says what it ended with.
    fn ended(
        &mut self,
        ended: Result<(Id, Result<(), String>), tokio::task::JoinError>,
    ) -> (&'static str, Result<(), String>) {
        let (id, outcome) = match ended {
            Ok((id, outcome)) => (id, outcome),
            Err(e) if e.is_panic() => (e.id(), Err(format!("it panicked: {}", panic_text(e)))),
            Err(e) => (e.id(), Err("it was cancelled".to_owned())),
        };
        let name = self.tasks.remove(&id).map_or("unknown", |(name, _)| name);
        (name, outcome)
    }
}

/// The message of a panic, when it has one.
fn panic_text(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "no message".to_owned()
    }
}

#[cfg(feature = "fault-injection")]
mod fault {
    use std::future::Future;
    use std::time::Duration;

    /// How long after its start an injected fault strikes: after the hub said it was ready.
    const STRIKES_AFTER: Duration = Duration::from_millis(500);

    /// `task`, or, when `INJECT_FAULT_INTO` names it, a task that fails (or panics) soon.
    pub fn inject(
        name: &'static str,
        task: impl Future<Output = Result<(), String>> + Send + 'static,
    ) -> impl Future<Output = Result<(), String>> + Send + 'static {
        let wanted = std::env::var("INJECT_FAULT_INTO").unwrap_or_default();
        let (target, panics) = match wanted.split_once(':') {
            Some((target, "panic")) => (target.to_owned(), true),
            _ => (wanted, false),
        };
        let strikes = target == name;
        async move {
            if !strikes {
                return task.await;
            }
            tokio::select! {
                outcome = task => outcome,
                _ = tokio::time::sleep(STRIKES_AFTER) => {
                    if panics {
                        panic!("fault injected into {name}");
                    }
                    Err(format!("fault injected into {name}"))
                }
            }
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
mod fault {
    use std::future::Future;

    /// `task` as it is: faults are injected only with the `fault-injection` feature.
    pub fn inject<F>(_name: &'static str, task: F) -> F
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        task
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_task_that_returns_before_shutdown_is_a_failure() {
        let mut tasks = Supervisor::default();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tasks.spawn("steady", Stage::Services, async move {
            stop.cancelled().await;
        });
        tasks.spawn("quitter", Stage::Services, async {});
        let failure = tasks.watch(&shutdown).await.expect("a failure");
        assert_eq!(failure.task, "quitter");
        assert!(failure.why.contains("returned"), "{}", failure.why);
    }

    #[tokio::test]
    async fn an_error_and_a_panic_are_named_with_their_task() {
        let shutdown = CancellationToken::new();
        let mut tasks = Supervisor::default();
        tasks.spawn("writer", Stage::Store, async {
            Err::<(), _>("the disk went away")
        });
        let failure = tasks.watch(&shutdown).await.expect("a failure");
        assert_eq!(
            failure,
            Failure {
                task: "writer",
                why: "the disk went away".into()
            }
        );

        let mut tasks = Supervisor::default();
        let out_of_bounds: Vec<u64> = Vec::new();
        tasks.spawn("retention", Stage::Services, async move {
            let _ = out_of_bounds[3];
        });
        let failure = tasks.watch(&shutdown).await.expect("a failure");
        assert_eq!(failure.task, "retention");
        assert!(
            failure.why.contains("panicked") && failure.why.contains("out of bounds"),
            "{}",
            failure.why
        );
    }

    #[tokio::test]
    async fn drain_waits_for_one_stage_and_reports_failures() {
        let mut tasks = Supervisor::default();
        let ingest = CancellationToken::new();
        let services = CancellationToken::new();
        let stop = ingest.clone();
        tasks.spawn("ingest", Stage::Ingest, async move {
            stop.cancelled().await;
            Err::<(), _>("closing failed")
        });
        let stop = services.clone();
        tasks.spawn("api", Stage::Services, async move {
            stop.cancelled().await;
        });
        assert_eq!(tasks.names(), vec!["api", "ingest"]);
        ingest.cancel();
        let failures = tokio::time::timeout(Duration::from_secs(5), tasks.drain(Stage::Ingest))
            .await
            .expect("the ingest stage ends");
        assert_eq!(failures.len(), 1);
        assert_eq!(tasks.names(), vec!["api"]);
        services.cancel();
        assert!(tasks.drain(Stage::Services).await.is_empty());
        assert!(tasks.names().is_empty());
    }
}
