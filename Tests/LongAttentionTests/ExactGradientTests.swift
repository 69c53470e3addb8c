import AttentionTensor
import Foundation
import LongAttention
import XCTest

/// FlashAttention-2's backward against float64: the analytic vector-Jacobian product on every
/// coordinate, and central differences of the float64 forward on sampled coordinates.
final class ExactGradientTests: XCTestCase {
    typealias Ref = GradientReference

    struct Case {
        var B = 1, H = 4, Hkv = 2, N = 7, M = 7, d = 8, dv = 6
        var causal = false, keyLengths: [Int]? = nil, bias = false, alibi = false
        var scale: Float? = nil
        var seed: UInt64 = 1
    }

    /// Runs the forward keeping the log-sum-exp, then the backward; compares with float64.
    @discardableResult
    func check(_ c: Case, tolerance: Double = 1e-5, numerical: Bool = false, file: StaticString = #filePath,
               line: UInt = #line) throws -> AttentionGradients {
        let (q, k, v) = try Reference.inputs(B: c.B, H: c.H, Hkv: c.Hkv, N: c.N, M: c.M, d: c.d, dv: c.dv, seed: c.seed)
        let dOut = try Tensor.randomNormal([c.B, c.H, c.N, c.dv], seed: c.seed &+ 9)
        var mask = AttentionMask(isCausal: c.causal, keyLengths: c.keyLengths)
        var biasValues: [Double]? = nil
        if c.bias {
            var bias = try Tensor.randomNormal([c.B, c.H, c.N, c.M], seed: c.seed &+ 5)
            bias[0, 0, 0, 0] = -.infinity
            if c.N > 2 { for j in 0..<c.M { bias[0, c.H - 1, 2, j] = -.infinity } }   // a fully masked row
            mask.bias = bias
            biasValues = bias.scalars.map(Double.init)
        }
        let slopes: [Float]? = c.alibi ? ALiBi(heads: c.H).slopes : nil
        if let slopes { mask.alibi = ALiBi(slopes: slopes) }
        let forward = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, scale: c.scale, mask: mask)
        // The kept forward is the ordinary forward.
        let plain = try scaledDotProductAttention(queries: q, keys: k, values: v, scale: c.scale, mask: mask)
        XCTAssertLessThan(Reference.relError(forward.output, plain.scalars.map(Double.init)), 1e-6, file: file, line: line)
        let grads = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: forward,
                                                          outputGradient: dOut, scale: c.scale, mask: mask)
        let s = Ref.RefShape(B: c.B, H: c.H, Hkv: c.Hkv, N: c.N, M: c.M, d: c.d, dv: c.dv)
        let scale = Double(c.scale ?? 1 / Float(c.d).squareRoot())
        let (qd, kd, vd, od) = (q.scalars.map(Double.init), k.scalars.map(Double.init), v.scalars.map(Double.init),
                                dOut.scalars.map(Double.init))
        let expected = Ref.exactVJP(q: qd, k: kd, v: vd, shape: s, scale: scale, causal: c.causal, keyLengths: c.keyLengths,
                                    bias: biasValues, alibiSlopes: slopes?.map(Double.init), dout: od)
        let label = "\(c)"
        XCTAssertLessThan(Ref.relError(grads.queries.scalars.map(Double.init), expected.dq), tolerance, "dq \(label)", file: file, line: line)
        XCTAssertLessThan(Ref.relError(grads.keys.scalars.map(Double.init), expected.dk), tolerance, "dk \(label)", file: file, line: line)
        XCTAssertLessThan(Ref.relError(grads.values.scalars.map(Double.init), expected.dv), tolerance, "dv \(label)", file: file, line: line)
        if numerical {
            let qi = Ref.sampleIndices(count: qd.count, seed: 1), ki = Ref.sampleIndices(count: kd.count, seed: 2)
            let vi = Ref.sampleIndices(count: vd.count, seed: 3)
            let fd = Ref.numericalExact(q: qd, k: kd, v: vd, shape: s, scale: scale, causal: c.causal, keyLengths: c.keyLengths,
                                        bias: biasValues, alibiSlopes: slopes?.map(Double.init), dout: od,
                                        qIndices: qi, kIndices: ki, vIndices: vi)
            let g = (grads.queries.scalars, grads.keys.scalars, grads.values.scalars)
            XCTAssertLessThan(Ref.relError(qi.map { Double(g.0[$0]) }, fd.dq), 1e-4, "numerical dq \(label)", file: file, line: line)
            XCTAssertLessThan(Ref.relError(ki.map { Double(g.1[$0]) }, fd.dk), 1e-4, "numerical dk \(label)", file: file, line: line)
            XCTAssertLessThan(Ref.relError(vi.map { Double(g.2[$0]) }, fd.dv), 1e-4, "numerical dv \(label)", file: file, line: line)
        }
        return grads
    }

    /// N, M ∈ {1, 7, 33} (N ≠ M too), MHA, GQA and MQA, causal and not, against float64 and
    /// finite differences.
    func testOddSizesEveryGroupingAndCausality() throws {
        var seed: UInt64 = 0
        for (n, m) in [(1, 1), (7, 7), (33, 33), (7, 33), (33, 7), (1, 33)] {
            for hkv in [4, 2, 1] {
                for causal in [false, true] {
                    seed += 1
                    try check(Case(H: 4, Hkv: hkv, N: n, M: m, d: 7, dv: 5, causal: causal, seed: seed), numerical: seed % 5 == 0)
                }
            }
        }
    }

    /// Key lengths (one batch entry with none), an additive bias with -inf entries and a fully
    /// masked row, ALiBi, a custom scale, and everything at once.
    func testMasksBiasAndALiBi() throws {
        try check(Case(B: 2, N: 9, M: 11, keyLengths: [11, 0], seed: 3), numerical: true)
        try check(Case(B: 2, N: 9, M: 11, causal: true, keyLengths: [5, 11], seed: 4))
        try check(Case(B: 1, N: 9, M: 12, bias: true, seed: 5), numerical: true)
        try check(Case(B: 1, N: 12, M: 12, causal: true, alibi: true, seed: 6), numerical: true)
        try check(Case(B: 2, H: 4, Hkv: 1, N: 13, M: 17, causal: true, keyLengths: [17, 9], bias: true, alibi: true,
                       scale: 0.3, seed: 7))
    }

    /// Sizes that cross the backward's blocks (512 stacked rows, 128-key tiles, 64-key causal
    /// tiles): partial blocks and tiles, the triangle's restricted rows.
    func testAcrossTiles() throws {
        try check(Case(B: 1, H: 1, Hkv: 1, N: 600, M: 300, d: 8, dv: 5, causal: true, seed: 12), tolerance: 2e-5)
        try check(Case(B: 1, H: 2, Hkv: 2, N: 300, M: 600, d: 8, dv: 5, seed: 13), tolerance: 2e-5)
        try check(Case(B: 1, H: 1, Hkv: 1, N: 129, M: 300, d: 16, dv: 16, causal: true, seed: 8), tolerance: 2e-5)
        try check(Case(B: 1, H: 2, Hkv: 1, N: 200, M: 257, d: 9, dv: 4, seed: 9), tolerance: 2e-5)
        try check(Case(B: 3, H: 2, Hkv: 2, N: 130, M: 130, d: 8, dv: 8, causal: true, keyLengths: [130, 64, 1], seed: 10),
                  tolerance: 2e-5)
    }

    /// Bitwise the same for 1 and 2 threads, including the head-part (private dK/dV partial) path.
    func testThreadCountDoesNotChangeTheGradients() throws {
        for hkv in [1, 2, 8] {
            let (q, k, v) = try Reference.inputs(B: 1, H: 8, Hkv: hkv, N: 300, M: 300, d: 16, dv: 16, seed: 11)
            let dOut = try Tensor.randomNormal([1, 8, 300, 16], seed: 12)
            func run(_ threads: Int) throws -> AttentionGradients {
                let f = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: .causal, threads: threads)
                return try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: f, outputGradient: dOut,
                                                             mask: .causal, threads: threads)
            }
            let one = try run(1), two = try run(2)
            XCTAssertTrue(one.queries.scalars == two.queries.scalars, "dq Hkv \(hkv)")
            XCTAssertTrue(one.keys.scalars == two.keys.scalars, "dk Hkv \(hkv)")
            XCTAssertTrue(one.values.scalars == two.values.scalars, "dv Hkv \(hkv)")
        }
    }

    /// A zero-width output (dv = 0): L is identically 0, so every gradient is exactly zero (the
    /// kept log-sum-exp is -inf, never uninitialised memory).
    func testZeroWidthValuesGiveZeroGradients() throws {
        let (q, k, _) = try Reference.inputs(B: 1, H: 2, Hkv: 1, N: 64, M: 64, d: 4, dv: 1, seed: 21)
        let v = try Tensor(zeros: [1, 1, 64, 0]), dOut = try Tensor(zeros: [1, 2, 64, 0])
        let f = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: .causal)
        XCTAssertTrue(f.logSumExp.scalars.allSatisfy { $0 == -.infinity })
        let g = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: f, outputGradient: dOut, mask: .causal)
        XCTAssertTrue(g.queries.scalars.allSatisfy { $0 == 0 } && g.keys.scalars.allSatisfy { $0 == 0 })
        let plan = try BigBirdPlan(sequenceLength: 64, heads: 2, blockSize: 8)
        let bf = try bigBirdAttentionForward(queries: q, keys: k, values: v, plan: plan)
        let bg = try bigBirdAttentionBackward(queries: q, keys: k, values: v, plan: plan, forward: bf, outputGradient: dOut)
        XCTAssertTrue(bg.queries.scalars.allSatisfy { $0 == 0 } && bg.keys.scalars.allSatisfy { $0 == 0 })
    }

    func testBadOutputGradientsAreRefused() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: 2, N: 8, M: 8, d: 16, dv: 16, seed: 13)
        let f = try scaledDotProductAttentionForward(queries: q, keys: k, values: v)
        XCTAssertThrowsError(try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: f,
                                                                   outputGradient: try Tensor(zeros: [1, 4, 7, 16]))) { e in
            guard case .shapeMismatch? = e as? AttentionError else { return XCTFail("\(e)") }
        }
        var nan = try Tensor(zeros: [1, 4, 8, 16])
        nan[0, 2, 3, 1] = .nan
        XCTAssertThrowsError(try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: f, outputGradient: nan)) { e in
            XCTAssertEqual(e as? AttentionError, .nonFinite(name: "outputGradient", index: [0, 2, 3, 1]))
        }
        let other = try scaledDotProductAttentionForward(queries: try q.rows(0..<4), keys: k, values: v)
        XCTAssertThrowsError(try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: other,
                                                                   outputGradient: try Tensor(zeros: [1, 4, 8, 16])))
    }
}
