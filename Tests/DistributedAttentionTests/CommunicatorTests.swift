import SwiftMPI
import XCTest

/// The Swift layer over MPI on a one-rank world: what each call means when it is the only rank,
/// its argument checks (typed errors, no MPI call made) and the bounded wait.
final class CommunicatorTests: XCTestCase {
    func testWorldOfASingletonProcessIsOneRank() throws {
        let comm = try OneRankWorld.communicator()
        XCTAssertTrue(MPI.isInitialized)
        XCTAssertEqual(comm.rank, 0)
        XCTAssertEqual(comm.size, 1)
        XCTAssertEqual(comm.next, 0)
        XCTAssertEqual(comm.previous, 0)
        // Initialising again is a no-op, not an MPI error.
        XCTAssertNoThrow(try MPI.initialize())
        XCTAssertNoThrow(try comm.barrier())
    }

    func testCollectivesOfOneRank() throws {
        let comm = try OneRankWorld.communicator()
        var f: [Float] = [1, -2, 3.5]
        try comm.allreduce(&f, .sum)
        XCTAssertEqual(f, [1, -2, 3.5])
        try comm.allreduce(&f, .max)
        XCTAssertEqual(f, [1, -2, 3.5])
        var d: [Double] = [4, 5]
        try comm.allreduce(&d, .min)
        XCTAssertEqual(d, [4, 5])
        var i: [Int64] = [7, .max, .min]
        try comm.allreduce(&i, .min)
        XCTAssertEqual(i, [7, .max, .min])
        var empty: [Float] = []
        try comm.allreduce(&empty, .sum)
        XCTAssertEqual(empty, [])

        var buffer: [Float] = [2, 3, 4]
        try buffer.withUnsafeMutableBufferPointer { try comm.allreduceSum($0.baseAddress!, count: 3) }
        XCTAssertEqual(buffer, [2, 3, 4])
        // The exclusive prefix sum of rank 0 is zeros (MPI leaves it undefined; the layer writes them).
        try buffer.withUnsafeMutableBufferPointer { try comm.exclusiveScanSum($0.baseAddress!, count: 3) }
        XCTAssertEqual(buffer, [0, 0, 0])
        buffer = [9, 8]
        try buffer.withUnsafeMutableBufferPointer { try comm.broadcast($0.baseAddress!, count: 2, root: 0) }
        XCTAssertEqual(buffer, [9, 8])
        try buffer.withUnsafeMutableBufferPointer { try comm.allgather($0.baseAddress!, counts: [2]) }
        XCTAssertEqual(buffer, [9, 8])
        XCTAssertEqual(try comm.allgather([1.5, 2.5]), [1.5, 2.5])
    }

    func testBadArgumentsAreTypedErrors() throws {
        let comm = try OneRankWorld.communicator()
        var buffer: [Float] = [1, 2]
        try buffer.withUnsafeMutableBufferPointer { b in
            XCTAssertThrowsError(try comm.allgather(b.baseAddress!, counts: [1, 1])) {
                XCTAssertEqual($0 as? MPIError, .countsMismatch(counts: 2, ranks: 1))
            }
            XCTAssertThrowsError(try comm.allgather(b.baseAddress!, counts: [-1])) {
                XCTAssertEqual($0 as? MPIError, .countOutOfRange(count: -1, limit: Int(Int32.max)))
            }
            XCTAssertThrowsError(try comm.isend(UnsafePointer(b.baseAddress!), count: Int(Int32.max) + 1, to: 0, tag: 1)) {
                XCTAssertEqual($0 as? MPIError, .countOutOfRange(count: Int(Int32.max) + 1, limit: Int(Int32.max)))
            }
            XCTAssertThrowsError(try comm.broadcast(b.baseAddress!, count: -3, root: 0)) {
                XCTAssertEqual($0 as? MPIError, .countOutOfRange(count: -3, limit: Int(Int32.max)))
            }
        }
        // A root outside the world is MPI's own error, returned (MPI_ERRORS_RETURN), not an abort.
        try buffer.withUnsafeMutableBufferPointer { b in
            XCTAssertThrowsError(try comm.broadcast(b.baseAddress!, count: 2, root: 5)) {
                guard case .failed(let call, _, let message)? = $0 as? MPIError else { return XCTFail("\($0)") }
                XCTAssertEqual(call, "MPI_Ibcast")
                XCTAssertFalse(message.isEmpty)
            }
        }
        // The communicator is still usable.
        var f: [Float] = [1]
        try comm.allreduce(&f, .sum)
        XCTAssertEqual(f, [1])
    }

    func testPointToPointToItself() throws {
        let comm = try OneRankWorld.communicator()
        let send: [Float] = [1, 2, 3, 4]
        var received = [Float](repeating: 0, count: 4)
        try send.withUnsafeBufferPointer { s in
            try received.withUnsafeMutableBufferPointer { r in
                var requests = [try comm.irecv(r.baseAddress!, count: 4, from: 0, tag: 42),
                                try comm.isend(s.baseAddress!, count: 4, to: 0, tag: 42)]
                let waited = try comm.wait(&requests, what: "a message to itself")
                XCTAssertGreaterThanOrEqual(waited, 0)
                XCTAssertTrue(requests.allSatisfy(\.isNull))
            }
        }
        XCTAssertEqual(received, send)
        var done = Request.completed
        XCTAssertTrue(try comm.test(&done))
    }

    /// Buffers of receives that never complete (MPI may still write them): kept for the process.
    nonisolated(unsafe) static var pendingBuffers: [UnsafeMutablePointer<Float>] = []

    func testWaitForAMessageThatNeverComesTimesOut() throws {
        var comm = try OneRankWorld.communicator()
        comm.timeout = 0.2
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: 1)
        Self.pendingBuffers.append(buffer)
        // A tag nothing else in the tests sends on.
        var request = try comm.irecv(buffer, count: 1, from: 0, tag: 31_337)
        let start = MPI.wtime()
        XCTAssertThrowsError(try comm.wait(&request, what: "a message nobody sends")) {
            guard case .timedOut(let what, let seconds)? = $0 as? MPIError else { return XCTFail("\($0)") }
            XCTAssertEqual(what, "a message nobody sends")
            XCTAssertGreaterThan(seconds, 0.2)
        }
        XCTAssertLessThan(MPI.wtime() - start, 5)
        XCTAssertFalse(request.isNull)
    }

    func testBackgroundProgressCompletesRequests() throws {
        let comm = try OneRankWorld.communicator()
        let send: [Float] = [5, 6]
        var received: [Float] = [0, 0]
        try send.withUnsafeBufferPointer { s in
            try received.withUnsafeMutableBufferPointer { r in
                let requests = [try comm.irecv(r.baseAddress!, count: 2, from: 0, tag: 43),
                                try comm.isend(s.baseAddress!, count: 2, to: 0, tag: 43)]
                let poller = BackgroundProgress(comm: comm, requests: requests)
                var back = try poller.finish()
                // finish() is idempotent.
                XCTAssertEqual(try poller.finish().count, 2)
                try comm.wait(&back, what: "the polled messages")
            }
        }
        XCTAssertEqual(received, send)
    }
}
