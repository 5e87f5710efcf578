//! The local server's worker (`serve`): the in-process queue's consumer and the retries from
//! the ledger, on a thread of their own at a lower CPU priority than intake. On a small
//! machine the work path then uses the CPU intake leaves over and never delays an answer to
//! Graph; a backlog waits in the bounded queue (and in the ledger), and intake answers 503
//! only when the queue is full.

use std::sync::Arc;
use std::time::Duration;

use super::pending::spawn_local_retries;
use super::worker::Worker;
use crate::ledger::sqlite::SqliteStore;
use crate::queue::MemoryQueue;

/// Nice value of the local worker's thread (and the blocking threads it starts), unless the
/// server runs nicer still: intake runs at the process's own priority, and while it is busy
/// the worker gets about a tenth of a core's share (CFS weights 1024 against 110).
pub const WORKER_NICE: i32 = 10;

/// Items a consumer takes from the queue at once (the Lambda event source's `BatchSize`).
pub const BATCH: usize = 100;

/// Consumers of the queue, each a worker with its own lease-holder id: while earlier batches'
/// mails wait for their mailbox (four at a time), later batches are contained, and one tenant
/// holds at most all but one of them, so the last takes up another tenant's signal at once
/// (`MemoryQueue::with_consumers`). Graph's per-tenant budgets, shared by all, pace the work.
pub const CONSUMERS: usize = 6;

/// A consumer's pause after a batch of which nothing settled, doubling up to the ceiling.
pub const PAUSE_MIN: Duration = Duration::from_secs(1);
pub const PAUSE_MAX: Duration = Duration::from_secs(30);

/// How often the ledger is searched for work to resume.
pub const RETRY_EVERY: Duration = Duration::from_secs(5);

/// How often the write-ahead log of the local ledger is checkpointed, and expired documents
/// deleted.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
pub const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// Starts the local worker thread: it drains `queue` (when the server has one), resumes
/// pending work from the ledger, and keeps the SQLite ledger (`maintenance`: checkpoints and
/// expiry, at the worker's priority too), until the process ends.
pub fn spawn_local_worker(
    worker: Arc<Worker>,
    queue: Option<Arc<MemoryQueue>>,
    maintenance: Option<SqliteStore>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("local-worker".into())
        .spawn(move || {
            lower_priority();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("local-worker-blocking")
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(error = %e, "local worker could not start");
                    return;
                }
            };
            runtime.block_on(async move {
                if let Some(store) = maintenance {
                    store.spawn_maintenance(CHECKPOINT_EVERY, EXPIRE_EVERY);
                }
                spawn_local_retries(worker.clone(), queue.clone(), RETRY_EVERY);
                let Some(queue) = queue else {
                    std::future::pending::<()>().await;
                    return;
                };
                let consume = |worker: Arc<Worker>| {
                    let queue = queue.clone();
                    async move {
                        let mut pause = Duration::ZERO;
                        loop {
                            let items = queue.next_batch(BATCH).await;
                            let dispositions = worker.handle_batch(&items).await;
                            queue.done(&items);
                            // Nothing of the batch settled (Graph or its token endpoint down,
                            // say): back off, doubling up to a ceiling, instead of spinning
                            // through the queue; what waits stays queued (a full queue is
                            // answered 503 with Retry-After), what failed is retried from the
                            // ledger.
                            if !dispositions.is_empty() && dispositions.iter().all(|d| d.is_retry())
                            {
                                pause = (pause * 2).clamp(PAUSE_MIN, PAUSE_MAX);
                                tracing::warn!(
                                    items = items.len(),
                                    pause_s = pause.as_secs(),
                                    "no work item of the batch settled: the consumer backs off"
                                );
                                tokio::time::sleep(pause).await;
                            } else {
                                pause = Duration::ZERO;
                            }
                        }
                    }
                };
                let mut consumers = vec![tokio::spawn(consume(worker.clone()))];
                for _ in 1..CONSUMERS {
                    consumers.push(tokio::spawn(consume(Arc::new(worker.sibling()))));
                }
                for consumer in consumers {
                    let _ = consumer.await;
                }
            });
        })
}

/// Lowers the calling thread's CPU priority (Linux: the nice value is per thread, and threads
/// it starts inherit it). Elsewhere a no-op.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority has no memory effects; `who` 0 with PRIO_PROCESS is the calling
        // thread on Linux.
        let target = current_nice().map_or(WORKER_NICE, |now| now.max(WORKER_NICE));
        let done = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) };
        if done != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "local worker runs at the server's own priority"
            );
        }
    }
}

/// The calling thread's nice value (Linux), for tests and the start-up line.
pub fn current_nice() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpriority reads a scheduling attribute of the calling thread.
        // -1 is a valid answer, so errno tells failure apart.
        unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
            (*libc::__errno_location() == 0).then_some(nice)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn the_worker_thread_runs_at_a_lower_priority_than_its_parent() {
        let parent = current_nice().unwrap();
        let child = std::thread::spawn(|| {
            lower_priority();
            let own = current_nice();
            let inherited = std::thread::spawn(current_nice).join().unwrap();
            (own, inherited)
        })
        .join()
        .unwrap();
        assert_eq!(child.0, Some(parent.max(WORKER_NICE)));
        assert!(child.0 > Some(parent) || parent >= WORKER_NICE);
        assert_eq!(child.1, child.0, "threads it starts inherit it");
        assert_eq!(current_nice(), Some(parent), "the parent is untouched");
    }
}
