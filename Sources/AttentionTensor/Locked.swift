#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value guarded by a `pthread_mutex_t`: the package's lock for state shared across threads.
///
/// Why not the standard library's `Synchronization.Mutex`: on Linux its contended path hands the
/// lock over inside the kernel (`FUTEX_LOCK_PI`/`FUTEX_UNLOCK_PI`, called from the uninstrumented
/// standard library), so ThreadSanitizer sees no release/acquire pair between the thread that
/// unlocked and the one that then locked, and reports every contended critical section as a data
/// race. `pthread_mutex_lock` is intercepted by the sanitizers, so a race reported around this
/// lock is a real one. None of its uses is on a per-element path.
package final class Locked<Value>: @unchecked Sendable {
    // `@unchecked Sendable`: `value` is read and written only between lock and unlock.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private var value: Value

    package init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with exclusive access to the value.
    package func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
