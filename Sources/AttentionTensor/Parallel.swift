import Dispatch
import Foundation
import Synchronization

/// Where threads come from.
///
/// The package uses two sources and never both at once:
/// - a single large GEMM (``Tensor/matmul(_:_:)``, the sgemm benchmark) uses OpenBLAS's threads;
/// - attention kernels split their work into independent items (batch, KV head, query block) and
///   run them on ``Parallel/run(items:threads:_:)``'s workers, each calling single-threaded BLAS:
///   the process's worker pool (threads that spin briefly between regions, then park), or
///   libdispatch's threads for a region that starts while the pool is busy.
///
/// ``run(items:threads:_:)`` sets OpenBLAS to one thread while any parallel region is active and
/// restores the previous count when the last one ends, so nesting and concurrent callers are safe.
public enum Parallel {
    /// Threads used when a caller does not say: the number of active processors, read once.
    ///
    /// Read once because Foundation reads it from the cgroup files (`/sys/fs/cgroup/cpu.max`) on
    /// every call: an open, read and close each time, which was 5% of a decoding step's serial
    /// thread (SmolLM2 on 2 threads) when the layers asked for it per product.
    public static let defaultThreads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// A shared counter handing out work items `0..<count` to workers, in order.
    public final class WorkQueue: Sendable {
        private let nextItem = Atomic<Int>(0)
        /// Number of items.
        public let count: Int
        init(count: Int) { self.count = count }
        /// The next unclaimed item, or nil when all are taken.
        public func next() -> Int? {
            let i = nextItem.wrappingAdd(1, ordering: .relaxed).oldValue
            return i < count ? i : nil
        }
    }

    /// Runs `worker` on `min(threads, items)` threads; each worker pulls item indices from the
    /// queue until it is empty. `worker` receives its worker index (0-based, for per-thread scratch
    /// allocated once) and the queue. Returns when every worker has finished.
    ///
    /// Results must not depend on which worker runs an item: that is what makes the output the
    /// same for any thread count.
    public static func run(items: Int, threads: Int, _ worker: (_ worker: Int, _ queue: WorkQueue) -> Void) {
        guard items > 0 else { return }
        let queue = WorkQueue(count: items)
        let workers = max(1, min(threads, items))
        BLASThreadGuard.singleThreaded {
            if workers == 1 {
                worker(0, queue)
            } else if WorkerPool.shared.extraThreads > 0, workers <= WorkerPool.shared.extraThreads + 1,
                      WorkerPool.shared.run(workers: workers, { worker($0, queue) }) {
                // Ran on the pool's spinning workers (a few microseconds to start, where waking a
                // parked thread takes tens).
            } else {
                // The pool is busy (a nested region, or another thread's): libdispatch's threads.
                // concurrentPerform wants a @Sendable closure; `worker` only runs until it returns,
                // and its captures are the caller's to make safe (disjoint outputs per item).
                withoutActuallyEscaping(worker) { body in
                    nonisolated(unsafe) let body = body
                    DispatchQueue.concurrentPerform(iterations: workers) { w in body(w, queue) }
                }
            }
        }
    }
}

/// Holds OpenBLAS at one thread while at least one parallel region is active.
enum BLASThreadGuard {
    private struct State { var active = 0; var saved = 1 }
    private static let state = Locked(State())

    static func singleThreaded<R>(_ body: () throws -> R) rethrows -> R {
        state.withLock { s in
            if s.active == 0 {
                s.saved = BLAS.threads
                if s.saved != 1 { BLAS.threads = 1 }
            }
            s.active += 1
        }
        defer {
            state.withLock { s in
                s.active -= 1
                if s.active == 0, s.saved != 1 { BLAS.threads = s.saved }
            }
        }
        return try body()
    }
}
