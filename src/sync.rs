//! The one way the broker takes a `std::sync` lock (ARCHITECTURE.md,
//! cross-cutting concerns): [`lock`], [`read`] and [`write`]. A lock
//! poisoned by a panic in another task is recovered, never ignored and
//! never turned into an error: the data it guards (registries, caches,
//! counters, parser state) is whole after every critical section, and
//! skipping it would leave things undone (a live session unregistered and
//! so unlimitable, a cancel key never removed). The poisoning is logged
//! with the caller's location and cleared, so each panic is reported once.
//! Critical sections stay short and never hold a guard across an `.await`.
//! `clippy.toml` forbids `Mutex::lock`, `RwLock::read` and `RwLock::write`
//! everywhere else.

use std::panic::Location;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

fn recovered(at: &Location<'_>) {
    tracing::error!(
        at = %at,
        "a lock was poisoned by a panic while held; its data is used as the panic left it"
    );
}

/// Locks `mutex`, recovering it if a panic poisoned it.
#[track_caller]
#[allow(clippy::disallowed_methods)]
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            recovered(Location::caller());
            mutex.clear_poison();
            poisoned.into_inner()
        }
    }
}

/// Read-locks `rwlock`, recovering it if a panic poisoned it.
#[track_caller]
#[allow(clippy::disallowed_methods)]
pub fn read<T: ?Sized>(rwlock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    match rwlock.read() {
        Ok(guard) => guard,
        Err(poisoned) => {
            recovered(Location::caller());
            rwlock.clear_poison();
            poisoned.into_inner()
        }
    }
}

/// Write-locks `rwlock`, recovering it if a panic poisoned it.
#[track_caller]
#[allow(clippy::disallowed_methods)]
pub fn write<T: ?Sized>(rwlock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    match rwlock.write() {
        Ok(guard) => guard,
        Err(poisoned) => {
            recovered(Location::caller());
            rwlock.clear_poison();
            poisoned.into_inner()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn poison<T: Send + Sync + 'static>(lock: Arc<T>, hold: impl FnOnce(&T) + Send + 'static) {
        let joined = std::thread::spawn(move || hold(&lock)).join();
        assert!(joined.is_err(), "the holder panicked");
    }

    #[test]
    fn a_poisoned_mutex_is_recovered_with_its_data_and_cleared() {
        let mutex = Arc::new(Mutex::new(vec![1]));
        poison(mutex.clone(), |m| {
            let mut guard = lock(m);
            guard.push(2);
            panic!("while holding the lock");
        });
        assert!(mutex.is_poisoned());
        assert_eq!(*lock(&mutex), [1, 2], "what the panic left");
        assert!(!mutex.is_poisoned(), "reported once, then cleared");
        lock(&mutex).push(3);
        assert_eq!(*lock(&mutex), [1, 2, 3]);
    }

    #[test]
    fn a_poisoned_rwlock_is_recovered_for_readers_and_writers() {
        let rwlock = Arc::new(RwLock::new(1));
        poison(rwlock.clone(), |l| {
            *write(l) = 2;
            panic!("while holding the lock");
        });
        assert_eq!(*read(&rwlock), 2);
        assert!(!rwlock.is_poisoned());
        poison(rwlock.clone(), |l| {
            let _guard = write(l);
            panic!("again");
        });
        *write(&rwlock) = 3;
        assert_eq!(*read(&rwlock), 3);
    }
}
