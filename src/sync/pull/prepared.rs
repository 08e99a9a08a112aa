//! Whether a pull's destination is ready for files: blobs start to arrive
//! while its directories are made, and their writers wait here.

use std::sync::{Condvar, Mutex};

/// Opens once, when preparing the destination ended.
#[derive(Default)]
pub(super) struct Prepared {
    done: Mutex<Option<bool>>,
    changed: Condvar,
}

impl Prepared {
    /// Lets every waiter go on; `ok`: preparing succeeded. Only the first
    /// call counts.
    pub(super) fn open(&self, ok: bool) {
        self.done.lock().expect("prepared lock").get_or_insert(ok);
        self.changed.notify_all();
    }

    /// Blocks until preparing ended; false when it failed.
    pub(super) fn wait(&self) -> bool {
        let done = self.done.lock().expect("prepared lock");
        self.changed.wait_while(done, |d| d.is_none()).expect("prepared lock").unwrap_or(false)
    }
}

/// Opens `Prepared` as failed when dropped before it was opened (the task
/// that prepares panicked): writers never wait for ever.
pub(super) struct FailUnlessOpened(pub(super) std::sync::Arc<Prepared>);

impl Drop for FailUnlessOpened {
    fn drop(&mut self) {
        self.0.open(false);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[test]
    fn writers_wait_until_it_opens_and_learn_how_it_ended() {
        for ok in [true, false] {
            let (prepared, opened) = (Arc::new(Prepared::default()), Arc::new(AtomicBool::new(false)));
            let waiters: Vec<_> = (0..3)
                .map(|_| {
                    let (p, o) = (prepared.clone(), opened.clone());
                    std::thread::spawn(move || (p.wait(), o.load(Ordering::SeqCst)))
                })
                .collect();
            std::thread::sleep(Duration::from_millis(50));
            opened.store(true, Ordering::SeqCst);
            prepared.open(ok);
            for w in waiters {
                assert_eq!(w.join().unwrap(), (ok, true), "a writer went on before it opened");
            }
            assert_eq!(prepared.wait(), ok, "open stays open");
            drop(FailUnlessOpened(prepared.clone()));
            assert_eq!(prepared.wait(), ok, "the first opening counts");
        }
        let prepared = Arc::new(Prepared::default());
        let waiter = {
            let p = prepared.clone();
            std::thread::spawn(move || p.wait())
        };
        drop(FailUnlessOpened(prepared));
        assert!(!waiter.join().unwrap(), "a preparer that never opened it fails its writers");
    }
}
