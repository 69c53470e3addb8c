import AttentionTensor
import XCTest

final class TensorTests: XCTestCase {
    func testCopyOnWriteKeepsValueSemantics() throws {
        let a = try Tensor(shape: [2, 3], scalars: [1, 2, 3, 4, 5, 6])
        var b = a
        b[0, 1] = 20
        XCTAssertEqual(a.scalars, [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(b.scalars, [1, 20, 3, 4, 5, 6])
    }

    /// Huge-page storage is 2 MiB aligned from 2 MiB of data up (ordinary 64-byte alignment below),
    /// holds what is written, and its copy-on-write copies are huge-page storage too.
    func testHugePageStorage() throws {
        let alignment = { (t: Tensor) in t.withUnsafePointer { UInt(bitPattern: $0) % UInt(2 << 20) } }
        var big = try Tensor(uninitialized: [3, 1 << 18], hugePages: true)   // 3 MiB
        XCTAssertEqual(alignment(big), 0)
        big.withUnsafeMutableBufferPointer { b in for i in b.indices { b[i] = Float(i % 1000) } }
        let shared = big
        big[2, 5] = -1   // copy-on-write
        XCTAssertEqual(alignment(big), 0)
        XCTAssertEqual(shared[2, 5], Float((2 * (1 << 18) + 5) % 1000))
        XCTAssertEqual(big[2, 5], -1)
        XCTAssertEqual(big[1, 7], Float(((1 << 18) + 7) % 1000))
        let small = try Tensor(uninitialized: [100], hugePages: true)
        XCTAssertEqual(small.withUnsafePointer { UInt(bitPattern: $0) % 64 }, 0)
    }

    func testViewsShareStorageAndIndexCorrectly() throws {
        // [B=2, H=3, N=4, d=2] with value = linear index.
        let t = try Tensor(shape: [2, 3, 4, 2], scalars: (0..<48).map(Float.init))
        let v = try t.batches(1..<2).heads(1..<3).rows(2..<4)
        XCTAssertEqual(v.shape, [1, 2, 2, 2])
        XCTAssertFalse(v.isContiguous)
        XCTAssertEqual(v.scalars, [36, 37, 38, 39, 44, 45, 46, 47])
        XCTAssertEqual(v[0, 1, 0, 1], 45)
        let tr = try t.batches(0..<1).heads(0..<1).reshaped([4, 2]).transposed()
        XCTAssertEqual(tr.shape, [2, 4])
        XCTAssertEqual(tr.scalars, [0, 2, 4, 6, 1, 3, 5, 7])
        var w = v
        w[0, 0, 0, 0] = -1   // mutating a view copies it; the parent is unchanged
        XCTAssertEqual(t[1, 1, 2, 0], 36)
        XCTAssertEqual(w.scalars.first, -1)
        XCTAssertThrowsError(try t.rows(3..<5))
        XCTAssertThrowsError(try t.slice(axis: 4, 0..<1))
    }

    /// The generator is pinned: these values come from an independent Python implementation of
    /// the same SplitMix64 + Box–Muller recipe (float64, rounded to float32).
    func testSeededRandomNormalIsTheSameEverywhere() throws {
        let t = try Tensor.randomNormal([8], seed: 42)
        let python: [Float] = [0.41471976041793823, 0.6526812314987183, -0.8918862342834473, 1.3268336057662964,
                               1.72959303855896, -1.883416771888733, 0.5456204414367676, -1.6568357944488525]
        XCTAssertEqual(t.scalars, python)
        let big = try Tensor.randomNormal([100_001], seed: 7).scalars
        let mean = big.reduce(0.0) { $0 + Double($1) } / Double(big.count)
        let variance = big.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(big.count) - mean * mean
        XCTAssertEqual(mean, 0, accuracy: 0.01)
        XCTAssertEqual(variance, 1, accuracy: 0.02)
    }

    func testBadShapesThrow() {
        XCTAssertThrowsError(try Tensor(zeros: [-1, 3]))
        XCTAssertThrowsError(try Tensor(zeros: [1 << 40, 1 << 40]))
        XCTAssertThrowsError(try Tensor(shape: [2, 2], scalars: [1, 2, 3]))
        XCTAssertThrowsError(try Tensor(zeros: [2, 3]).reshaped([4, 2]))
    }
}
