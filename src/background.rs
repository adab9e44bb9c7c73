//! Threads for work nobody waits for (writing a stats checkpoint, freeing
//! an expired hour of the click index). They run at the lowest priority:
//! on a core shared with the edge they get only the time the redirects
//! leave idle.

use std::thread::JoinHandle;

/// Spawns `work` on a thread named `name` at nice 19. If the priority
/// cannot be lowered the work still runs; if the thread cannot start, the
/// error is returned and `work` is dropped unrun.
pub fn spawn<T, F>(name: &str, work: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let tid = rustix::thread::gettid();
            if let Err(e) = rustix::process::setpriority_process(Some(tid), 19) {
                tracing::debug!(error = %e, "background thread keeps its priority");
            }
            work()
        })
}
