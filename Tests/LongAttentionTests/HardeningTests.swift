import AttentionTensor
import Foundation
import LongAttention
import XCTest

/// Bad numbers, memory limits, determinism, concurrent use.
final class HardeningTests: XCTestCase {
    /// NaN and ±Inf in any input are rejected by every entry point with the input's name and the
    /// element's index (decided: rejected, never propagated — see the README).
    func testNonFiniteInputsAreRejected() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: 2, N: 40, M: 40, d: 8, dv: 8, seed: 1)
        func poisoned(_ t: Tensor, _ value: Float) -> Tensor { var c = t; c[0, 1, 17, 3] = value; return c }
        let plan = try BigBirdPlan(sequenceLength: 40, heads: 4, blockSize: 8)
        let infini = try InfiniAttention(segmentLength: 16, beta: [0, 0, 0, 0])
        let calls: [(String, (Tensor, Tensor, Tensor) throws -> Tensor)] = [
            ("exact", { try scaledDotProductAttention(queries: $0, keys: $1, values: $2) }),
            ("exact tiled causal", { try scaledDotProductAttention(queries: $0, keys: $1, values: $2, mask: .causal, implementation: .tiled) }),
            ("linear", { try linearAttention(queries: $0, keys: $1, values: $2, causal: true) }),
            ("bigbird", { try bigBirdAttention(queries: $0, keys: $1, values: $2, plan: plan) }),
            ("infini", { try infini(queries: $0, keys: $1, values: $2) }),
        ]
        for (name, call) in calls {
            for value in [Float.nan, .infinity, -.infinity] {
                for (which, inputs) in [("queries", (poisoned(q, value), k, v)), ("keys", (q, poisoned(k, value), v)),
                                        ("values", (q, k, poisoned(v, value)))] {
                    XCTAssertThrowsError(try call(inputs.0, inputs.1, inputs.2), "\(name) \(which) \(value)") { e in
                        XCTAssertEqual(e as? AttentionError, .nonFinite(name: which, index: [0, 1, 17, 3]), "\(name)")
                    }
                }
            }
        }
        // A strided view is scanned through its strides; the index is the view's.
        let view = try poisoned(q, .nan).rows(10..<30)
        XCTAssertEqual(view.firstNonFiniteIndex(), [0, 1, 7, 3])
        XCTAssertNil(try q.rows(10..<30).firstNonFiniteIndex())
        // The cache checks what is appended; decode checks the queries.
        var cache = try KVCache(layers: 1, batch: 1, kvHeads: 2, capacity: 64, headDimension: 8)
        XCTAssertThrowsError(try cache.append(layer: 0, keys: poisoned(k, .nan), values: v))
        try cache.append(layer: 0, keys: k, values: v)
        XCTAssertThrowsError(try decodeAttention(queries: try poisoned(q, .nan).rows(15..<20), cache: cache, layer: 0))
    }

    /// Requests over the memory budget are thrown errors, checked before allocating.
    func testMemoryBudget() throws {
        let saved = MemoryBudget.limitBytes
        defer { MemoryBudget.limitBytes = saved }
        MemoryBudget.limitBytes = 256 << 20
        XCTAssertThrowsError(try Tensor(uninitialized: [1 << 30])) { e in
            XCTAssertEqual(e as? TensorError, .allocationFailed(bytes: 4 << 30))
        }
        XCTAssertNoThrow(try Tensor(zeros: [1 << 20]))
        // An output that would not fit: attention throws instead of being killed.
        let q = try Tensor(zeros: [1, 64, 2, 4])
        let k = try Tensor(zeros: [1, 1, 2, 4]), v = try Tensor(zeros: [1, 1, 2, 1 << 20])
        XCTAssertThrowsError(try scaledDotProductAttention(queries: q, keys: k, values: v))   // a 512 MiB output
        // With the default budget (memory available), a terabyte is refused too.
        MemoryBudget.limitBytes = nil
        XCTAssertThrowsError(try Tensor(uninitialized: [1 << 38]))
        // Materialised exact attention at N = M = 1M never plans an N² buffer.
        let plan = ExactAttentionPlan(shape: AttentionShape(B: 1, H: 8, Hkv: 8, N: 1 << 20, M: 1 << 20, d: 64, dv: 64),
                                      implementation: .materialized)
        XCTAssertLessThan(plan.workspaceBytes, 64 << 20)
        XCTAssertEqual(ExactAttentionPlan(shape: plan.shape).implementation, .tiled)
    }

    /// The default budget is the tightest of MemAvailable, the cgroup's room and the ulimits.
    func testBudgetTakesTheTightestLimit() {
        XCTAssertEqual(MemoryBudget.tightest(memAvailable: 20 << 30, cgroup: nil, addressSpace: nil, data: nil), 20 << 30)
        XCTAssertEqual(MemoryBudget.tightest(memAvailable: 20 << 30, cgroup: 4 << 30, addressSpace: 8 << 30, data: nil), 4 << 30)
        XCTAssertEqual(MemoryBudget.tightest(memAvailable: 20 << 30, cgroup: nil, addressSpace: 3 << 30, data: 5 << 30), 3 << 30)
        XCTAssertEqual(MemoryBudget.tightest(memAvailable: 20 << 30, cgroup: -5, addressSpace: nil, data: nil), 0)
        XCTAssertGreaterThan(MemoryBudget.availableBytes, 0)
    }

    func testEveryVariantIsDeterministicAcrossThreadsAndRuns() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: 1, N: 700, M: 700, d: 16, dv: 16, seed: 3)
        let plan = try BigBirdPlan(sequenceLength: 700, heads: 4, blockSize: 32, seed: 4)
        let infini = try InfiniAttention(segmentLength: 128, update: .delta, beta: [0, 1, -1, 0.5])
        let variants: [(String, (Int) throws -> Tensor)] = [
            ("exact", { try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal, threads: $0) }),
            ("linear favor", { try linearAttention(queries: q, keys: k, values: v, featureMap: .favor(features: 64, seed: 9), threads: $0) }),
            ("bigbird", { try bigBirdAttention(queries: q, keys: k, values: v, plan: plan, threads: $0) }),
            ("infini", { try infini(queries: q, keys: k, values: v, threads: $0) }),
        ]
        for (name, run) in variants {
            let one = try run(1), two = try run(2), again = try run(2)
            XCTAssertTrue(one.scalars == two.scalars, "\(name): 1 and 2 threads differ")
            XCTAssertTrue(two.scalars == again.scalars, "\(name): two runs differ")
        }
    }

    /// Many Swift tasks calling the library at once, with different shapes and variants, all get
    /// the results a serial run gets.
    func testConcurrentCallsFromManyTasks() async throws {
        struct Job: Sendable { let kind: Int, n: Int, hkv: Int, seed: UInt64 }
        let jobs = (0..<24).map { Job(kind: $0 % 4, n: 20 + 37 * ($0 % 5), hkv: [4, 2, 1][$0 % 3], seed: UInt64($0)) }
        @Sendable func run(_ job: Job) throws -> [Float] {
            let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: job.hkv, N: job.n, M: job.n, d: 16, dv: 16, seed: job.seed)
            switch job.kind {
            case 0: return try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal).scalars
            case 1: return try linearAttention(queries: q, keys: k, values: v, causal: true).scalars
            case 2: return try bigBirdAttention(queries: q, keys: k, values: v,
                                                plan: try BigBirdPlan(sequenceLength: job.n, heads: 4, blockSize: 8, seed: job.seed)).scalars
            default: return try InfiniAttention(segmentLength: 32, beta: [0, 0, 0, 0])(queries: q, keys: k, values: v).scalars
            }
        }
        let serial = try jobs.map(run)
        let concurrent = try await withThrowingTaskGroup(of: (Int, [Float]).self) { group in
            for (i, job) in jobs.enumerated() { group.addTask { (i, try run(job)) } }
            var out = [[Float]](repeating: [], count: jobs.count)
            for try await (i, r) in group { out[i] = r }
            return out
        }
        for i in jobs.indices { XCTAssertTrue(serial[i] == concurrent[i], "job \(i) differs when run concurrently") }
    }
}
