import AttentionTensor
import Foundation
import LongAttention
import XCTest

/// BigBird's backward against the float64 gradient of dense attention under the SPEC oracle's mask.
final class BigBirdGradientTests: XCTestCase {
    typealias Ref = GradientReference

    func check(N: Int, b: Int, g: Int, w: Int, r: Int, causal: Bool, H: Int = 4, Hkv: Int, B: Int = 1, alibi: Bool = false,
               seed: UInt64, file: StaticString = #filePath, line: UInt = #line) throws {
        let plan = try BigBirdPlan(sequenceLength: N, heads: H, blockSize: b, globalBlocks: g, windowBlocks: w, randomBlocks: r,
                                   seed: seed, causal: causal)
        let (d, dv) = (6, 5)
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: N, M: N, d: d, dv: dv, seed: seed)
        let dOut = try Tensor.randomNormal([B, H, N, dv], seed: seed &+ 3)
        let slopes: ALiBi? = alibi ? ALiBi(heads: H) : nil
        let forward = try bigBirdAttentionForward(queries: q, keys: k, values: v, plan: plan, alibi: slopes)
        let plain = try bigBirdAttention(queries: q, keys: k, values: v, plan: plan, alibi: slopes)
        XCTAssertTrue(forward.output.scalars == plain.scalars, "the kept forward is the forward", file: file, line: line)
        let grads = try bigBirdAttentionBackward(queries: q, keys: k, values: v, plan: plan, forward: forward, outputGradient: dOut,
                                                 alibi: slopes)
        let mask = try BigBirdOracle.bias(N: N, H: H, b: b, g: g, w: w, causal: causal, random: plan.random).scalars.map(Double.init)
        let bias = (0..<B).flatMap { _ in mask }
        let s = Ref.RefShape(B: B, H: H, Hkv: Hkv, N: N, M: N, d: d, dv: dv)
        let expected = Ref.exactVJP(q: q.scalars.map(Double.init), k: k.scalars.map(Double.init), v: v.scalars.map(Double.init),
                                    shape: s, scale: 1 / Double(d).squareRoot(), bias: bias,
                                    alibiSlopes: slopes?.slopes.map(Double.init), dout: dOut.scalars.map(Double.init))
        let label = "N \(N) b \(b) g \(g) w \(w) r \(r) causal \(causal) Hkv \(Hkv)"
        XCTAssertLessThan(Ref.relError(grads.queries.scalars.map(Double.init), expected.dq), 1e-5, "dq \(label)", file: file, line: line)
        XCTAssertLessThan(Ref.relError(grads.keys.scalars.map(Double.init), expected.dk), 1e-5, "dk \(label)", file: file, line: line)
        XCTAssertLessThan(Ref.relError(grads.values.scalars.map(Double.init), expected.dv), 1e-5, "dv \(label)", file: file, line: line)
    }

    func testAgainstDenseGradientUnderTheOracleMask() throws {
        var seed: UInt64 = 0
        for (n, b) in [(61, 4), (33, 8), (50, 5)] {
            for g in [1, 2] { for w in [1, 3, 5] { for causal in [false, true] {
                seed += 1
                try check(N: n, b: b, g: g, w: w, r: Int(seed % 4), causal: causal, Hkv: [4, 2, 1][Int(seed % 3)], seed: seed)
            } } }
        }
        try check(N: 45, b: 4, g: 1, w: 3, r: 2, causal: true, Hkv: 2, B: 2, alibi: true, seed: 99)
        try check(N: 45, b: 4, g: 1, w: 3, r: 2, causal: false, Hkv: 1, B: 2, alibi: true, seed: 98)
        try check(N: 7, b: 4, g: 1, w: 3, r: 2, causal: false, Hkv: 4, seed: 97)   // every block global
    }

    func testThreadCountDoesNotChangeTheGradients() throws {
        for hkv in [1, 4] {
            let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: hkv, N: 500, M: 500, d: 16, dv: 16, seed: 5)
            let dOut = try Tensor.randomNormal([1, 4, 500, 16], seed: 6)
            let plan = try BigBirdPlan(sequenceLength: 500, heads: 4, blockSize: 16, seed: 2, causal: hkv == 1)
            let f = try bigBirdAttentionForward(queries: q, keys: k, values: v, plan: plan)
            let one = try bigBirdAttentionBackward(queries: q, keys: k, values: v, plan: plan, forward: f, outputGradient: dOut, threads: 1)
            let two = try bigBirdAttentionBackward(queries: q, keys: k, values: v, plan: plan, forward: f, outputGradient: dOut, threads: 2)
            XCTAssertTrue(one.queries.scalars == two.queries.scalars && one.keys.scalars == two.keys.scalars
                          && one.values.scalars == two.values.scalars, "Hkv \(hkv)")
        }
    }
}
