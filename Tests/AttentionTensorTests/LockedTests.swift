@testable import AttentionTensor
import Dispatch
import XCTest

/// ``Locked``: contended critical sections are mutually exclusive (a lost update would show in the
/// count), and a throwing body releases the lock.
final class LockedTests: XCTestCase {
    func testContendedIncrementsAreNotLost() {
        let counter = Locked(0)
        let threads = 4, perThread = 50_000
        DispatchQueue.concurrentPerform(iterations: threads) { _ in
            for _ in 0..<perThread {
                // A read, a pause and a write: without exclusion two threads interleave here.
                counter.withLock { v in let seen = v; v = seen &+ 1 }
            }
        }
        XCTAssertEqual(counter.withLock { $0 }, threads * perThread)
    }

    func testAThrowingBodyReleasesTheLock() {
        struct Failure: Error {}
        let value = Locked([1, 2])
        XCTAssertThrowsError(try value.withLock { _ in throw Failure() })
        // Would deadlock if the throw had left the mutex held.
        XCTAssertEqual(value.withLock { v -> Int in v.append(3); return v.count }, 3)
    }
}
