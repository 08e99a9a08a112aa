//! Independent pieces of work spread over the cores: each thread takes the
//! next item from a shared counter, so items of uneven cost balance out.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Maps `f` over `items` on up to one thread per core (at most `max`, and
/// no more than there are items; none is spawned for one), each thread with
/// state of its own made by `init`. The results come back in the order of
/// `items`.
pub(crate) fn map<T: Sync, S, R: Send>(
    items: &[T],
    max: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let work = || {
        let (mut state, mut done) = (init(), Vec::new());
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else { return done };
            done.push((i, f(&mut state, item)));
        }
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, max.max(1)).min(items.len());
    let mut results: Vec<(usize, R)> = if threads <= 1 {
        work()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
            handles.into_iter().flat_map(|h| h.join().expect("worker thread panicked")).collect()
        })
    };
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_the_order_of_the_items_and_each_thread_its_state() {
        let items: Vec<u64> = (0..1000).collect();
        let out = super::map(
            &items,
            4,
            || 0u64,
            |seen, x| {
                *seen += 1;
                (x * 2, *seen)
            },
        );
        assert_eq!(out.iter().map(|(d, _)| *d).collect::<Vec<_>>(), items.iter().map(|x| x * 2).collect::<Vec<_>>());
        // Each thread counts from 1 in its own state: one start per thread, at most 4.
        let starts = out.iter().filter(|(_, seen)| *seen == 1).count();
        assert!((1..=4).contains(&starts), "{starts} threads");
        assert!(super::map(&[] as &[u8], 4, || (), |_, x| *x).is_empty());
    }
}
