import CAttentionKernels
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

/// Worker threads that stay between parallel regions, as ggml's and OpenMP's do.
///
/// A decoding step is a few hundred short parallel regions (one per weight matrix, tens of
/// microseconds each). Waking a parked thread for each costs a futex round trip, often longer
/// than the region itself; so after a region each worker spins on the region state for up to
/// ``spinNanoseconds`` (yielding its core after the first few microseconds, so that a loaded
/// machine's other threads run) before parking on a condition variable.
///
/// The caller runs worker 0 itself, pulling items from the region's queue like any worker. When
/// it runs out of items it closes the region: a worker that has not joined by then never will
/// (so a descheduled worker costs nothing), and the caller waits only for workers already inside,
/// each finishing the item it holds.
///
/// One region at a time: a caller that finds the pool busy (a nested region, or another thread's)
/// is told so and takes another source of threads for that region.
///
/// `@unchecked Sendable`: its mutable fields (`body`, `sleepers`) are handed over through the
/// atomic region state (release/acquire) or guarded by `lock`, as their comments say.
final class WorkerPool: @unchecked Sendable {
    /// How long an idle worker spins before it parks: longer than the serial gaps inside a
    /// decoding step (norms, RoPE, short attention), short enough that an idle process stops
    /// using the cores within a millisecond.
    static let spinNanoseconds: UInt64 = 400_000
    /// Spins with `pause` before a spinning thread starts yielding its core each turn.
    static let pausesBeforeYield = 2_000

    /// Threads besides the caller's.
    let extraThreads: Int
    /// The region state, one word: generation (bits 48...62), closed (bit 47), places left for
    /// workers (bits 32...46), workers that joined (bits 16...31) and workers inside (bits 0...15).
    private let state = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    /// The region's body: written by the caller before it publishes a new generation (release),
    /// read by a worker only after it joined that generation (acquire); the next region writes it
    /// only after every worker that joined has left.
    private var body: ((Int) -> Void)?
    /// Parked workers (guarded by `lock`).
    private var sleepers = 0
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wake = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    private static let closedBit = 1 << 47, placeUnit = 1 << 32, joinedUnit = 1 << 16, insideMask = (1 << 16) - 1
    private static func generation(_ s: Int) -> Int { (s >> 48) & 0x7fff }
    private static func places(_ s: Int) -> Int { (s >> 32) & 0x7fff }
    private static func joined(_ s: Int) -> Int { (s >> 16) & 0xffff }

    /// The process's pool: one thread per active processor beyond the first, started on first use;
    /// none when the environment sets `ATTN_WORKER_POOL=0` (every region then takes libdispatch's
    /// threads, which park at once: for hosts that must not see a spinning thread).
    static let shared = WorkerPool(extraThreads: ProcessInfo.processInfo.environment["ATTN_WORKER_POOL"] == "0"
                                   ? 0 : max(0, min(Parallel.defaultThreads - 1, 0x7fff)))

    init(extraThreads: Int) {
        self.extraThreads = extraThreads
        pthread_mutex_init(lock, nil)
        pthread_cond_init(wake, nil)
        for w in 0..<extraThreads {
            let t = Thread { [unowned self] in self.work() }
            t.name = "attention-worker-\(w + 1)"
            t.start()
        }
    }

    /// Runs `body(w)` on up to `workers` threads (`2 ≤ workers ≤ extraThreads + 1`), `w = 0` on
    /// the calling thread and `1..<workers` on the pool's threads that join in time; returns when
    /// all have returned. `body` must share out its work dynamically (a ``Parallel/WorkQueue``):
    /// any worker but 0 may never run. False (nothing run) when the pool is busy.
    func run(workers: Int, _ body: (Int) -> Void) -> Bool {
        precondition(workers >= 2 && workers <= extraThreads + 1, "\(workers) workers for a pool of \(extraThreads + 1)")
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return false }
        defer { busy.store(false, ordering: .releasing) }
        withoutActuallyEscaping(body) { body in
            self.body = body
            let next = ((Self.generation(state.load(ordering: .relaxed)) + 1) & 0x7fff) << 48
            state.store(next | (workers - 1) * Self.placeUnit, ordering: .releasing)
            pthread_mutex_lock(lock)
            if sleepers > 0 { pthread_cond_broadcast(wake) }
            pthread_mutex_unlock(lock)
            body(0)
            // Close the region, then wait for the workers inside it.
            var s = state.bitwiseOr(Self.closedBit, ordering: .acquiringAndReleasing).newValue
            var spins = 0
            while s & Self.insideMask != 0 {
                spins += 1
                if spins < Self.pausesBeforeYield { spinPause() } else { sched_yield() }
                s = state.load(ordering: .acquiring)
            }
            self.body = nil
        }
        return true
    }

    private func work() {
        var seen = Self.generation(state.load(ordering: .acquiring))
        while true {
            // Wait for a new region: spin, then spin yielding, then park.
            var spins = 0
            var deadline: UInt64 = 0
            var s = state.load(ordering: .acquiring)
            while Self.generation(s) == seen {
                spins += 1
                if spins < Self.pausesBeforeYield {
                    spinPause()
                } else {
                    sched_yield()
                    let now = DispatchTime.now().uptimeNanoseconds
                    if deadline == 0 { deadline = now + Self.spinNanoseconds }
                    if now >= deadline {
                        pthread_mutex_lock(lock)
                        sleepers += 1
                        while Self.generation(state.load(ordering: .acquiring)) == seen { pthread_cond_wait(wake, lock) }
                        sleepers -= 1
                        pthread_mutex_unlock(lock)
                    }
                }
                s = state.load(ordering: .acquiring)
            }
            seen = Self.generation(s)
            // Join unless the region is closed or has its workers.
            var index = 0
            while Self.generation(s) == seen, s & Self.closedBit == 0, Self.places(s) > 0 {
                let (ok, now) = state.compareExchange(expected: s, desired: s - Self.placeUnit + Self.joinedUnit + 1,
                                                      ordering: .acquiringAndReleasing)
                if ok { index = Self.joined(s) + 1; break }
                s = now
            }
            guard index > 0 else { continue }
            body?(index)
            state.wrappingSubtract(1, ordering: .releasing)
        }
    }
}

@inline(__always)
func spinPause() { ak_spin_pause() }
