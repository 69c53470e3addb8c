import AttentionTensor
import Foundation
import LongAttention
import XCTest

/// Infini-Attention's backward against central differences of the float64 forward (SPEC's
/// equations), the gate included.
final class InfiniGradientTests: XCTestCase {
    typealias Ref = GradientReference

    func check(B: Int = 1, H: Int, Hkv: Int, N: Int, S: Int, d: Int = 4, dv: Int = 3, delta: Bool, seed: UInt64,
               file: StaticString = #filePath, line: UInt = #line) throws {
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: N, M: N, d: d, dv: dv, seed: seed, std: 0.8)
        let dOut = try Tensor.randomNormal([B, H, N, dv], seed: seed &+ 11)
        let beta = (0..<H).map { Float($0) * 0.7 - 1 }
        let layer = try InfiniAttention(segmentLength: S, update: delta ? .delta : .linear, beta: beta)
        let grads = try layer.backward(queries: q, keys: k, values: v, outputGradient: dOut)
        let s = Ref.RefShape(B: B, H: H, Hkv: Hkv, N: N, M: N, d: d, dv: dv)
        let (qd, kd, vd, od) = (q.scalars.map(Double.init), k.scalars.map(Double.init), v.scalars.map(Double.init),
                                dOut.scalars.map(Double.init))
        let pick = { (n: Int, seed: UInt64) in n <= 160 ? Array(0..<n) : Ref.sampleIndices(count: n, n: 48, seed: seed) }
        let (qi, ki, vi) = (pick(qd.count, 1), pick(kd.count, 2), pick(vd.count, 3))
        let fd = Ref.numericalInfini(q: qd, k: kd, v: vd, shape: s, segment: S, delta: delta, beta: beta.map(Double.init),
                                     dout: od, qIndices: qi, kIndices: ki, vIndices: vi)
        let label = "N \(N) S \(S) H \(H) Hkv \(Hkv) delta \(delta)"
        let (gq, gk, gv) = (grads.queries.scalars, grads.keys.scalars, grads.values.scalars)
        XCTAssertLessThan(Ref.relError(qi.map { Double(gq[$0]) }, fd.dq), 2e-4, "dq \(label)", file: file, line: line)
        XCTAssertLessThan(Ref.relError(ki.map { Double(gk[$0]) }, fd.dk), 2e-4, "dk \(label)", file: file, line: line)
        XCTAssertLessThan(Ref.relError(vi.map { Double(gv[$0]) }, fd.dv), 2e-4, "dv \(label)", file: file, line: line)
        XCTAssertLessThan(Ref.relError(grads.beta!.map(Double.init), fd.dbeta), 2e-4, "dβ \(label)", file: file, line: line)
    }

    /// Segments that do not divide N, one segment, single tokens, GQA and MQA, both updates.
    func testBothUpdatesOddSegments() throws {
        var seed: UInt64 = 0
        for delta in [false, true] {
            for (n, segment) in [(7, 3), (13, 5), (9, 9), (1, 4), (6, 1)] {
                seed += 1
                try check(H: 4, Hkv: [4, 2, 1][Int(seed % 3)], N: n, S: segment, delta: delta, seed: seed)
            }
        }
        try check(B: 2, H: 2, Hkv: 1, N: 11, S: 4, d: 5, dv: 2, delta: true, seed: 31)
    }

    func testThreadsAndBadInputs() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: 2, N: 300, M: 300, d: 16, dv: 16, seed: 3)
        let dOut = try Tensor.randomNormal([1, 4, 300, 16], seed: 4)
        let layer = try InfiniAttention(segmentLength: 64, update: .delta, beta: [0, 1, -1, 2])
        let one = try layer.backward(queries: q, keys: k, values: v, outputGradient: dOut, threads: 1)
        let two = try layer.backward(queries: q, keys: k, values: v, outputGradient: dOut, threads: 2)
        XCTAssertTrue(one.queries.scalars == two.queries.scalars && one.keys.scalars == two.keys.scalars
                      && one.values.scalars == two.values.scalars && one.beta! == two.beta!)
        XCTAssertThrowsError(try layer.backward(queries: q, keys: k, values: v, outputGradient: try dOut.rows(0..<299)))
        XCTAssertThrowsError(try InfiniAttention(segmentLength: 64, beta: [0, 0]).backward(queries: q, keys: k, values: v, outputGradient: dOut))
    }
}
