import CMPI
import Foundation

/// An MPI call that failed (the communicator returns errors instead of aborting: ``MPI/initialize()``
/// sets `MPI_ERRORS_RETURN`), or a wait that ran out of time.
public enum MPIError: Error, CustomStringConvertible, Equatable, Sendable {
    /// `call` returned `code`; `message` is `MPI_Error_string`'s text.
    case failed(call: String, code: Int32, message: String)
    /// A bounded wait for `what` gave up after `seconds` (a peer that died or stopped answering).
    case timedOut(what: String, seconds: Double)
    /// A count MPI cannot take: `count` outside `0...limit` (counts are 32-bit in MPI-3).
    case countOutOfRange(count: Int, limit: Int)
    /// A collective given `counts` per-rank counts for a communicator of `ranks` ranks.
    case countsMismatch(counts: Int, ranks: Int)
    /// MPI is not initialised (or already finalised).
    case notInitialized

    public var description: String {
        switch self {
        case .failed(let call, let code, let message): return "\(call) failed (MPI error \(code)): \(message)"
        case .timedOut(let what, let s): return "no progress for \(String(format: "%.1f", s)) s waiting for \(what) (a peer rank died or hangs)"
        case .countOutOfRange(let n, let limit): return "invalid MPI argument: count \(n) outside 0...\(limit)"
        case .countsMismatch(let counts, let ranks): return "invalid MPI argument: \(counts) counts for \(ranks) ranks"
        case .notInitialized: return "MPI is not initialised"
        }
    }
}

@inline(__always) func check(_ code: Int32, _ call: @autoclosure () -> String) throws {
    if code == cmpi_success() { return }
    var buffer = [CChar](repeating: 0, count: Int(cmpi_max_error_string()) + 1)
    var length: Int32 = 0
    _ = MPI_Error_string(code, &buffer, &length)
    let message = String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    throw MPIError.failed(call: call(), code: code, message: message)
}

/// Process-wide MPI state: initialisation (threads: `MPI_THREAD_SERIALIZED` — worker threads
/// compute; one thread at a time calls MPI: the caller, or a ``BackgroundProgress`` poller while the
/// caller computes), finalisation, abort and the clock.
public enum MPI {
    /// Initialises MPI once (`MPI_Init_thread` asking for `MPI_THREAD_SERIALIZED`: one thread at a
    /// time calls MPI — the caller, or a ``BackgroundProgress`` poller while the caller computes)
    /// and makes `MPI_COMM_WORLD` return errors.
    public static func initialize() throws {
        var flag: Int32 = 0
        try check(MPI_Initialized(&flag), "MPI_Initialized")
        if flag != 0 { return }
        var provided: Int32 = 0
        try check(MPI_Init_thread(nil, nil, cmpi_thread_serialized(), &provided), "MPI_Init_thread")
        serialized = provided >= cmpi_thread_serialized()
        try check(MPI_Comm_set_errhandler(cmpi_comm_world(), cmpi_errors_return()), "MPI_Comm_set_errhandler")
    }

    /// Whether the library granted `MPI_THREAD_SERIALIZED`. Without it no ``BackgroundProgress``
    /// thread runs: a transfer then only moves inside the caller's own MPI calls (its bounded
    /// waits), after the computation it was meant to overlap.
    nonisolated(unsafe) public private(set) static var serialized = false

    /// True between ``initialize()`` and ``finalize()``.
    public static var isInitialized: Bool {
        var initialized: Int32 = 0, finalized: Int32 = 0
        MPI_Initialized(&initialized)
        MPI_Finalized(&finalized)
        return initialized != 0 && finalized == 0
    }

    /// Whether this process was started by an MPI launcher (mpirun/mpiexec set these variables).
    public static var launchedByMPI: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMIX_RANK"] != nil || env["PMI_RANK"] != nil
    }

    public static func finalize() {
        if isInitialized { MPI_Finalize() }
    }

    /// Writes `message` to stderr and ends every rank of the job (`MPI_Abort` on the world): what a
    /// rank does when it cannot go on, so that no peer waits for it forever.
    public static func abort(_ message: String, code: Int32 = 1) -> Never {
        FileHandle.standardError.write((message + "\n").data(using: .utf8)!)
        if isInitialized { MPI_Abort(cmpi_comm_world(), code) }
        exit(code)
    }

    /// Monotonic wall-clock seconds. Not `MPI_Wtime`: under `MPI_THREAD_SERIALIZED` a thread may
    /// not call MPI while a ``BackgroundProgress`` poller does, and the ring times its steps then.
    public static func wtime() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
    }
}

/// A pending non-blocking operation. Complete it with ``Communicator/wait(_:what:)`` (bounded).
///
/// `@unchecked Sendable`: a value wrapping MPI's opaque handle (a C pointer), moved between the
/// caller and a ``BackgroundProgress`` thread, never used by two at once (MPI_THREAD_SERIALIZED).
public struct Request: @unchecked Sendable {
    var raw: MPI_Request?
    /// A request that is already complete.
    public static var completed: Request { Request(raw: cmpi_request_null()) }
    public var isNull: Bool { raw == cmpi_request_null() }
}

/// A communicator (`MPI_COMM_WORLD` unless split) with the operations the distributed attention
/// uses: rank and size, non-blocking point-to-point, and collectives — every wait bounded by
/// ``timeout`` (MPI_Test polling), so a dead peer ends in ``MPIError/timedOut(what:seconds:)``
/// instead of a hang.
///
/// `@unchecked Sendable`: immutable (MPI's communicator handle, a C pointer, with the rank and size
/// read at creation); MPI calls through it come from one thread at a time (MPI_THREAD_SERIALIZED),
/// as the ring and ``BackgroundProgress`` arrange.
public struct Communicator: @unchecked Sendable {
    let comm: MPI_Comm?
    public let rank: Int
    public let size: Int
    /// Seconds a wait may go without completing before it throws. Counted from the start of each
    /// wait (not from the last progress), so it must exceed the longest time a healthy peer may take
    /// to reach the matching call: in ring attention, the slowest rank's computation of one step
    /// (plus the ranks' skew), since a rank's wait begins when its own step's computation ends.
    public var timeout: Double

    /// `MPI_COMM_WORLD` (MPI must be initialised).
    public static func world(timeout: Double = 300) throws -> Communicator {
        guard MPI.isInitialized else { throw MPIError.notInitialized }
        return try Communicator(cmpi_comm_world(), timeout: timeout)
    }

    init(_ comm: MPI_Comm?, timeout: Double) throws {
        var r: Int32 = 0, s: Int32 = 0
        try check(MPI_Comm_rank(comm, &r), "MPI_Comm_rank")
        try check(MPI_Comm_size(comm, &s), "MPI_Comm_size")
        (self.comm, self.rank, self.size, self.timeout) = (comm, Int(r), Int(s), timeout)
    }

    /// Seconds a wait polls back to back (yielding the core between polls) before it starts to
    /// sleep between them.
    static let spinSeconds = 0.002

    /// The rank after this one and before it on the ring.
    public var next: Int { (rank + 1) % size }
    public var previous: Int { (rank + size - 1) % size }

    static func count(_ n: Int) throws -> Int32 {
        guard n >= 0, n <= Int(Int32.max) else { throw MPIError.countOutOfRange(count: n, limit: Int(Int32.max)) }
        return Int32(n)
    }

    // MARK: point to point

    /// Starts sending `count` floats to `destination`.
    public func isend(_ buffer: UnsafePointer<Float>, count: Int, to destination: Int, tag: Int) throws -> Request {
        var req = cmpi_request_null()
        try check(MPI_Isend(buffer, try Self.count(count), cmpi_float(), Int32(destination), Int32(tag), comm, &req),
                  "MPI_Isend(\(count) floats to rank \(destination))")
        return Request(raw: req)
    }

    /// Starts receiving `count` floats from `source`.
    public func irecv(_ buffer: UnsafeMutablePointer<Float>, count: Int, from source: Int, tag: Int) throws -> Request {
        var req = cmpi_request_null()
        try check(MPI_Irecv(buffer, try Self.count(count), cmpi_float(), Int32(source), Int32(tag), comm, &req),
                  "MPI_Irecv(\(count) floats from rank \(source))")
        return Request(raw: req)
    }

    /// Progresses `request` once; true when it has completed (it is then null).
    public func test(_ request: inout Request) throws -> Bool {
        if request.isNull { return true }
        var flag: Int32 = 0
        try check(MPI_Test(&request.raw, &flag, cmpi_status_ignore()), "MPI_Test")
        return flag != 0
    }

    /// Waits for all of `requests` (polling, at most ``timeout`` seconds from the call); returns the
    /// seconds waited. On ``MPIError/timedOut(what:seconds:)`` the requests are still pending: their
    /// buffers must stay allocated, and the job should end with ``MPI/abort(_:code:)``.
    @discardableResult
    public func wait(_ requests: inout [Request], what: @autoclosure () -> String) throws -> Double {
        let start = MPI.wtime()
        while true {
            var done = true
            for i in requests.indices where !requests[i].isNull {
                if try !test(&requests[i]) { done = false }
            }
            if done { return MPI.wtime() - start }
            // Poll without sleeping for the first `Self.spinSeconds`: a decoding step's collectives
            // (about four per layer) wait tens of microseconds for the peer's matrix-vector part,
            // and `usleep` costs at least the kernel's timer slack (50 µs) however little it is
            // asked for — sleeping there made the gathers a third of a distributed token's time.
            // `sched_yield` hands the core over when ranks outnumber cores (`make test-dist` runs
            // 4 ranks on 2 cores) and returns at once when each rank has its own. After that the
            // wait is a long one (a ring step, a slow peer): sleep, and check the deadline.
            let waited = MPI.wtime() - start
            if waited < Self.spinSeconds {
                sched_yield()
            } else {
                if waited > timeout { throw MPIError.timedOut(what: what(), seconds: waited) }
                usleep(waited < 0.05 ? 20 : 200)
            }
        }
    }

    @discardableResult
    public func wait(_ request: inout Request, what: @autoclosure () -> String) throws -> Double {
        var r = [request]
        defer { request = r[0] }
        return try wait(&r, what: what())
    }

    /// Progresses every request once (call between pieces of computation so transfers advance).
    public func progress(_ requests: inout [Request]) throws {
        for i in requests.indices where !requests[i].isNull { _ = try test(&requests[i]) }
    }

    // MARK: collectives (non-blocking underneath, bounded waits)

    public func barrier() throws {
        var req = cmpi_request_null()
        try check(MPI_Ibarrier(comm, &req), "MPI_Ibarrier")
        var r = Request(raw: req)
        try wait(&r, what: "a barrier")
    }

    public enum ReduceOperation { case sum, max, min
        var op: MPI_Op? {
            switch self { case .sum: cmpi_op_sum(); case .max: cmpi_op_max(); case .min: cmpi_op_min() }
        }
    }

    /// Element-wise reduction of `values` over all ranks, the result on every rank.
    public func allreduce(_ values: inout [Float], _ operation: ReduceOperation) throws {
        try allreduce(&values, operation, type: cmpi_float())
    }
    public func allreduce(_ values: inout [Double], _ operation: ReduceOperation) throws {
        try allreduce(&values, operation, type: cmpi_double())
    }
    public func allreduce(_ values: inout [Int64], _ operation: ReduceOperation) throws {
        try allreduce(&values, operation, type: cmpi_int64())
    }

    func allreduce<T>(_ values: inout [T], _ operation: ReduceOperation, type: MPI_Datatype?) throws {
        let n = try Self.count(values.count)
        var req = cmpi_request_null()
        try values.withUnsafeMutableBytes { buf in
            try check(MPI_Iallreduce(cmpi_in_place(), buf.baseAddress, n, type, operation.op, comm, &req), "MPI_Iallreduce")
            var r = Request(raw: req)
            try wait(&r, what: "an all-reduce of \(n) values")
        }
    }

    /// Element-wise sum of `count` floats at `buffer` over all ranks, in place, on every rank.
    public func allreduceSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        var req = cmpi_request_null()
        try check(MPI_Iallreduce(cmpi_in_place(), buffer, try Self.count(count), cmpi_float(), cmpi_op_sum(), comm, &req),
                  "MPI_Iallreduce")
        var r = Request(raw: req)
        try wait(&r, what: "an all-reduce of \(count) floats")
    }

    /// Exclusive prefix sum: rank r gets `Σ_{s < r}` of the ranks' `count` floats at `buffer` (in
    /// place; rank 0 gets zeros — MPI leaves its buffer undefined).
    public func exclusiveScanSum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        let n = try Self.count(count)
        let send = UnsafeMutablePointer<Float>.allocate(capacity: max(1, count))
        defer { send.deallocate() }
        send.update(from: buffer, count: count)
        var req = cmpi_request_null()
        try check(MPI_Iexscan(send, buffer, n, cmpi_float(), cmpi_op_sum(), comm, &req), "MPI_Iexscan")
        var r = Request(raw: req)
        try wait(&r, what: "an exclusive scan of \(count) floats")
        if rank == 0 { buffer.update(repeating: 0, count: count) }
    }

    /// Broadcasts `count` floats at `buffer` from `root`.
    public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int) throws {
        var req = cmpi_request_null()
        try check(MPI_Ibcast(buffer, try Self.count(count), cmpi_float(), Int32(root), comm, &req), "MPI_Ibcast")
        var r = Request(raw: req)
        try wait(&r, what: "a broadcast of \(count) floats from rank \(root)")
    }

    /// In-place all-gather of floats with per-rank counts: rank `r`'s `counts[r]` floats sit at
    /// offset `Σ_{s<r} counts[s]` of `buffer` (this rank's already written there); afterwards every
    /// rank's are, on every rank.
    public func allgather(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        guard counts.count == size else { throw MPIError.countsMismatch(counts: counts.count, ranks: size) }
        var c = [Int32](), d = [Int32](), offset = 0
        for n in counts {
            c.append(try Self.count(n))
            d.append(try Self.count(offset))
            offset += n
        }
        var req = cmpi_request_null()
        try check(MPI_Iallgatherv(cmpi_in_place(), 0, cmpi_float(), buffer, c, d, cmpi_float(), comm, &req), "MPI_Iallgatherv")
        var r = Request(raw: req)
        try wait(&r, what: "an all-gather of \(offset) floats")
    }

    /// Every rank's `values` (same count on all), concatenated in rank order, on every rank.
    public func allgather(_ values: [Double]) throws -> [Double] {
        var out = [Double](repeating: 0, count: values.count * size)
        let n = try Self.count(values.count)
        var req = cmpi_request_null()
        try values.withUnsafeBytes { src in
            try out.withUnsafeMutableBytes { dst in
                try check(MPI_Iallgather(src.baseAddress, n, cmpi_double(), dst.baseAddress, n, cmpi_double(), comm, &req),
                          "MPI_Iallgather")
                var r = Request(raw: req)
                try wait(&r, what: "an all-gather")
            }
        }
        return out
    }
}

/// Progresses requests on a background thread while the caller computes: the shared-memory
/// transport copies a message inside the receiver's MPI calls, and TCP needs MPI calls to move
/// its fragments, so without polling a transfer posted before a long computation would only move
/// after it. Under `MPI_THREAD_SERIALIZED` only this thread calls MPI until ``finish()``; the
/// caller makes no MPI call in between. Without that thread level, ``finish()`` just returns the
/// requests (they complete in the caller's bounded wait).
///
/// `@unchecked Sendable`: the polling thread and the caller share `requests`, `stopping` and
/// `failure` only under `lock`; the caller reads them after the thread has signalled its exit.
public final class BackgroundProgress: @unchecked Sendable {
    private var requests: [Request]
    private let comm: Communicator
    private let lock = NSLock()
    private var stopping = false
    private var failure: Error?
    private let exited = DispatchSemaphore(value: 0)
    private let running: Bool
    private var stopped = false

    public init(comm: Communicator, requests: [Request]) {
        self.comm = comm
        self.requests = requests
        running = MPI.serialized && requests.contains { !$0.isNull }
        guard running else { return }
        let thread = Thread { [self] in
            while true {
                self.lock.lock()
                if self.stopping { self.lock.unlock(); break }
                var done = true
                do {
                    try self.comm.progress(&self.requests)
                    done = self.requests.allSatisfy(\.isNull)
                } catch {
                    self.failure = error
                }
                self.lock.unlock()
                if done || self.failure != nil { break }
                usleep(50)
            }
            self.exited.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Stops polling and hands the requests back (some may still be pending). Throws the error an
    /// `MPI_Test` of the thread returned. Idempotent: a second call (e.g. from an error path that
    /// must be sure the thread no longer calls MPI) returns at once.
    public func finish() throws -> [Request] {
        if running && !stopped {
            lock.lock()
            stopping = true
            lock.unlock()
            exited.wait()
            stopped = true
        }
        if let failure { throw failure }
        return requests
    }

    /// Stops polling without looking at the outcome: the error path of a caller about to throw.
    public func stop() {
        _ = try? finish()
    }
}
