import AttentionTensor
import Foundation
import LongAttention
import XCTest

/// Linear attention's backward against central differences of float64 forwards, on every
/// coordinate for small shapes.
final class LinearGradientTests: XCTestCase {
    typealias Ref = GradientReference

    /// FAVOR+ in float64 with the library's projection (positive features, no stabiliser: the
    /// constants cancel), causal or not.
    static func favor(q: [Double], k: [Double], v: [Double], shape s: Ref.RefShape, w: [Double], m: Int, causal: Bool) -> [Double] {
        let d = s.d
        func phi(_ x: ArraySlice<Double>) -> [Double] {
            let xs = x.map { $0 / Foundation.pow(Double(d), 0.25) }
            let sq = xs.reduce(0) { $0 + $1 * $1 } / 2
            return (0..<m).map { f in Foundation.exp((0..<d).reduce(0.0) { $0 + w[f * d + $1] * xs[$1] } - sq) }
        }
        var out = [Double](repeating: 0, count: s.outCount)
        for b in 0..<s.B { for h in 0..<s.H {
            let kh = h / s.group
            let pk = (0..<s.M).map { phi(k[s.k(b, kh, $0)..<(s.k(b, kh, $0) + d)]) }
            for i in 0..<s.N {
                let pq = phi(q[s.q(b, h, i)..<(s.q(b, h, i) + d)])
                var den = 0.0, num = [Double](repeating: 0, count: s.dv)
                for j in 0..<s.M where !causal || j <= i + s.M - s.N {
                    let a = zip(pq, pk[j]).reduce(0.0) { $0 + $1.0 * $1.1 }
                    den += a
                    for t in 0..<s.dv { num[t] += a * v[s.v(b, kh, j) + t] }
                }
                for t in 0..<s.dv { out[s.out(b, h, i) + t] = den > 0 ? num[t] / den : 0 }
            }
        } }
        return out
    }

    func check(_ map: LinearFeatureMap, B: Int = 1, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int, causal: Bool,
               chunk: Int = 64, seed: UInt64, tolerance: Double = 2e-4, file: StaticString = #filePath, line: UInt = #line) throws {
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: dv, seed: seed, std: 0.7)
        let dOut = try Tensor.randomNormal([B, H, N, dv], seed: seed &+ 7)
        let grads = try linearAttentionBackward(queries: q, keys: k, values: v, outputGradient: dOut, featureMap: map,
                                                causal: causal, chunkSize: chunk)
        let s = Ref.RefShape(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: dv)
        let (qd, kd, vd, od) = (q.scalars.map(Double.init), k.scalars.map(Double.init), v.scalars.map(Double.init),
                                dOut.scalars.map(Double.init))
        let f: ([Double], [Double], [Double]) -> [Double]
        switch map {
        case .elu: f = { Ref.linear(q: $0, k: $1, v: $2, shape: s, map: .elu, causal: causal) }
        case .relu: f = { Ref.linear(q: $0, k: $1, v: $2, shape: s, map: .relu, causal: causal) }
        case .softmax: f = { Ref.linear(q: $0, k: $1, v: $2, shape: s, map: .softmax, causal: causal) }
        case .favor(let m, let seed):
            let w = try FavorFeatures(dimension: d, features: m, seed: seed).projection.map(Double.init)
            f = { Self.favor(q: $0, k: $1, v: $2, shape: s, w: w, m: m, causal: causal) }
        }
        // Every coordinate of small tensors; 40 sampled ones (first and last included) of larger.
        let pick = { (n: Int, seed: UInt64) in n <= 200 ? Array(0..<n) : Ref.sampleIndices(count: n, n: 40, seed: seed) }
        let (qi, ki, vi) = (pick(qd.count, 1), pick(kd.count, 2), pick(vd.count, 3))
        let dq = Ref.numericalGradient(of: { f($0, kd, vd) }, at: qd, dout: od, indices: qi)
        let dk = Ref.numericalGradient(of: { f(qd, $0, vd) }, at: kd, dout: od, indices: ki)
        let dv = Ref.numericalGradient(of: { f(qd, kd, $0) }, at: vd, dout: od, indices: vi)
        let label = "\(map.name) causal \(causal) N \(N) M \(M) Hkv \(Hkv) chunk \(chunk)"
        let (gq, gk, gv) = (grads.queries.scalars, grads.keys.scalars, grads.values.scalars)
        XCTAssertLessThan(Ref.relError(qi.map { Double(gq[$0]) }, dq), tolerance, "dq \(label)", file: file, line: line)
        XCTAssertLessThan(Ref.relError(ki.map { Double(gk[$0]) }, dk), tolerance, "dk \(label)", file: file, line: line)
        XCTAssertLessThan(Ref.relError(vi.map { Double(gv[$0]) }, dv), tolerance, "dv \(label)", file: file, line: line)
    }

    func testEluAndReluOddSizesGroupingsAndChunks() throws {
        var seed: UInt64 = 0
        for map in [LinearFeatureMap.elu, .relu] {
            for (n, m) in [(1, 1), (7, 7), (33, 33), (7, 12), (12, 7)] {
                for causal in [false, true] {
                    seed += 1
                    let hkv = [4, 2, 1][Int(seed % 3)]
                    try check(map, H: 4, Hkv: hkv, N: n, M: m, d: 5, dv: 3, causal: causal, chunk: [64, 4, 7][Int(seed % 3)], seed: seed)
                }
            }
        }
    }

    /// With the forward's saved output and normalisers the backward keeps no per-row state; its
    /// gradients equal the self-contained backward's.
    func testSavedForwardGivesTheSameGradients() throws {
        for (map, causal) in [(LinearFeatureMap.elu, true), (.relu, true), (.elu, false), (.softmax, false), (.favor(features: 16, seed: 1), true)] {
            let (q, k, v) = try Reference.inputs(B: 2, H: 4, Hkv: 2, N: 77, M: 77, d: 8, dv: 6, seed: 71)
            let dOut = try Tensor.randomNormal([2, 4, 77, 6], seed: 72)
            let forward = try linearAttentionForward(queries: q, keys: k, values: v, featureMap: map, causal: causal, chunkSize: 16)
            let plain = try linearAttention(queries: q, keys: k, values: v, featureMap: map, causal: causal, chunkSize: 16)
            XCTAssertTrue(forward.output.scalars == plain.scalars, map.name)
            let withSaved = try linearAttentionBackward(queries: q, keys: k, values: v, forward: forward, outputGradient: dOut,
                                                        featureMap: map, causal: causal, chunkSize: 16)
            let alone = try linearAttentionBackward(queries: q, keys: k, values: v, outputGradient: dOut, featureMap: map,
                                                    causal: causal, chunkSize: 16)
            for (a, b, name) in [(withSaved.queries, alone.queries, "dq"), (withSaved.keys, alone.keys, "dk"),
                                 (withSaved.values, alone.values, "dv")] {
                XCTAssertLessThan(Reference.relError(a, b.scalars.map(Double.init)), 1e-5, "\(name) \(map.name) causal \(causal)")
            }
        }
    }

    func testEfficientAttention() throws {
        try check(.softmax, H: 4, Hkv: 2, N: 7, M: 9, d: 5, dv: 3, causal: false, seed: 41)
        try check(.softmax, B: 2, H: 2, Hkv: 1, N: 13, M: 5, d: 4, dv: 6, causal: false, chunk: 4, seed: 42)
        try check(.softmax, H: 1, Hkv: 1, N: 1, M: 1, d: 3, dv: 2, causal: false, seed: 43)
    }

    func testFavorWithFixedFeatures() throws {
        try check(.favor(features: 12, seed: 3), H: 2, Hkv: 1, N: 9, M: 9, d: 4, dv: 3, causal: false, seed: 51, tolerance: 5e-4)
        try check(.favor(features: 12, seed: 3), H: 2, Hkv: 2, N: 9, M: 11, d: 4, dv: 3, causal: true, chunk: 4, seed: 52, tolerance: 5e-4)
    }

    /// The chunked causal backward at a length with many chunks equals the one-chunk result, and
    /// does not depend on the thread count (bitwise).
    func testChunksAndThreads() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: 1, N: 300, M: 300, d: 16, dv: 16, seed: 61)
        let dOut = try Tensor.randomNormal([1, 4, 300, 16], seed: 62)
        let one = try linearAttentionBackward(queries: q, keys: k, values: v, outputGradient: dOut, causal: true, chunkSize: 300)
        let many = try linearAttentionBackward(queries: q, keys: k, values: v, outputGradient: dOut, causal: true, chunkSize: 17, threads: 1)
        let two = try linearAttentionBackward(queries: q, keys: k, values: v, outputGradient: dOut, causal: true, chunkSize: 17, threads: 2)
        for (a, b, name) in [(one.queries, many.queries, "dq"), (one.keys, many.keys, "dk"), (one.values, many.values, "dv")] {
            XCTAssertLessThan(Reference.relError(b, a.scalars.map(Double.init)), 1e-5, name)
        }
        XCTAssertTrue(many.queries.scalars == two.queries.scalars && many.keys.scalars == two.keys.scalars
                      && many.values.scalars == two.values.scalars)
        XCTAssertThrowsError(try linearAttentionBackward(queries: q, keys: k, values: v, outputGradient: dOut, featureMap: .softmax, causal: true))
        XCTAssertThrowsError(try linearAttentionBackward(queries: q, keys: k, values: v, outputGradient: try dOut.rows(0..<7)))
    }
}
