@testable import AttentionTensor
import Dispatch
import Foundation
import Synchronization
import XCTest

/// ``Parallel/run(items:threads:_:)`` on the worker pool: every item exactly once, worker indices
/// in range, nested and concurrent regions (which fall back to libdispatch), and many short regions
/// back to back (the decoding pattern: the spin-then-park handshake exercised thousands of times).
final class ParallelTests: XCTestCase {
    /// Runs a region and returns how often each item ran and the workers seen.
    static func region(items: Int, threads: Int, work: (Int) -> Void = { _ in }) -> (counts: [Int], workers: Set<Int>) {
        let counts = Locked([Int](repeating: 0, count: items))
        let seen = Locked(Set<Int>())
        Parallel.run(items: items, threads: threads) { w, queue in
            seen.withLock { _ = $0.insert(w) }
            while let i = queue.next() {
                counts.withLock { $0[i] += 1 }
                work(i)
            }
        }
        return (counts.withLock { $0 }, seen.withLock { $0 })
    }
    func region(items: Int, threads: Int, work: (Int) -> Void = { _ in }) -> (counts: [Int], workers: Set<Int>) {
        Self.region(items: items, threads: threads, work: work)
    }

    func testEveryItemRunsOnceOnAnyThreadCount() {
        for threads in [1, 2, 3, 8] {
            for items in [1, 2, 7, 33, 129] {
                let (counts, workers) = region(items: items, threads: threads)
                XCTAssertEqual(counts, Array(repeating: 1, count: items), "\(items) items on \(threads) threads")
                XCTAssertTrue(workers.allSatisfy { $0 >= 0 && $0 < max(1, min(threads, items)) }, "workers \(workers)")
                XCTAssertTrue(workers.contains(0), "the caller is worker 0")
            }
        }
    }

    func testManyShortRegionsBackToBack() {
        // Thousands of regions with gaps of varying length, some longer than the pool's spin
        // (so that its workers park and are woken again).
        var total = 0, joined = 0
        for r in 0..<3000 {
            let items = 1 + r % 17
            // Items of a few microseconds, so that the pool's worker has time to join.
            let (counts, workers) = region(items: items, threads: 2) { _ in
                let t0 = DispatchTime.now().uptimeNanoseconds
                while DispatchTime.now().uptimeNanoseconds - t0 < 3_000 {}
            }
            total += counts.reduce(0, +) - items
            if workers.contains(1) { joined += 1 }
            if r % 1000 == 999 { usleep(UInt32(WorkerPool.spinNanoseconds / 1000) * 2) }
        }
        XCTAssertEqual(total, 0)
        if WorkerPool.shared.extraThreads >= 1 { XCTAssertGreaterThan(joined, 0, "the pool's worker never joined a region") }
        print("the pool's worker joined \(joined) of 3000 regions")
    }

    func testNestedAndConcurrentRegionsComplete() {
        // A region inside a region (the pool is busy: the inner one takes libdispatch's threads).
        let inner = Atomic<Int>(0)
        let outer = region(items: 8, threads: 2) { _ in
            let r = Self.region(items: 5, threads: 2)
            inner.wrappingAdd(r.counts.reduce(0, +), ordering: .relaxed)
        }
        XCTAssertEqual(outer.counts, Array(repeating: 1, count: 8))
        XCTAssertEqual(inner.load(ordering: .relaxed), 40)
        // Regions started from several threads at once.
        let bad = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { t in
            for r in 0..<200 {
                let items = 3 + (r + t) % 11
                if Self.region(items: items, threads: 2).counts != Array(repeating: 1, count: items) {
                    bad.wrappingAdd(1, ordering: .relaxed)
                }
            }
        }
        XCTAssertEqual(bad.load(ordering: .relaxed), 0)
    }

    func testPoolRefusesWhileBusy() {
        let pool = WorkerPool.shared
        guard pool.extraThreads >= 1 else { return }
        var refused = false
        let ran = pool.run(workers: 2) { w in
            if w == 0 { refused = !pool.run(workers: 2) { _ in } }
        }
        XCTAssertTrue(ran)
        XCTAssertTrue(refused, "a region inside a region must be refused by the pool")
    }
}
