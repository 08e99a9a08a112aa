//! Signatures of large blobs, prepared in the background as they land, so
//! the first delta against one (the next push of the file, or a pull by a
//! node that has this version) does not wait for it: 90 ms for 256 MiB on
//! two cores (see [`Store::signature`]). Smaller blobs get theirs when first
//! asked.

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;
use tracing::debug;

use crate::hash::Hash;
use crate::store::Store;

/// Blobs of this size or more get their signature as they land.
pub(super) const PREPARED_FROM: u64 = 64 << 20;

/// One thread, at the lowest CPU priority, that prepares signatures one
/// blob at a time; started on first use.
#[derive(Clone, Default)]
pub(super) struct Signer {
    queue: Arc<OnceLock<Sender<Hash>>>,
}

impl Signer {
    /// Queues blob `h` of `store`. Called on the runtime's threads.
    pub(super) fn prepare(&self, store: &Store, h: Hash) {
        let queue = self.queue.get_or_init(|| spawn(store.clone(), Handle::current()));
        let _ = queue.send(h); // the thread only stops when every sender is gone
    }
}

fn spawn(store: Store, rt: Handle) -> Sender<Hash> {
    let (tx, rx) = channel::<Hash>();
    let work = move || {
        // SAFETY: a plain system call about this thread alone.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
        for h in rx {
            if let Err(e) = store.prepare_signature(&rt, &h) {
                debug!(blob = %h, error = %e, "no signature prepared; it will be computed when asked");
            }
        }
    };
    if let Err(e) = std::thread::Builder::new().name("signatures".into()).spawn(work) {
        debug!(error = %e, "no thread for signatures; they will be computed when asked");
    }
    tx
}
