import AttentionTensor
import LongAttention
import XCTest

/// Exact attention, both implementations, against the float64 reference.
///
/// Tolerance: 2e-5 relative to max(1, max |expected|). Float32 scores over d ≤ 64 carry a relative
/// error near 1e-7 · sqrt(d) and softmax/P·V add a few ulps; measured errors are 1e-7 to 1e-6, so
/// 2e-5 is tight enough to catch a single wrongly masked key (that moves outputs by ~1e-2).
final class ExactAttentionTests: XCTestCase {
    let tolerance = 2e-5

    /// Small blocks and tiles force many partial tiles and blocks at small sizes.
    func plans(_ s: AttentionShape, threads: Int = 2) -> [(String, ExactAttentionPlan)] {
        [("materialized", ExactAttentionPlan(shape: s, implementation: .materialized, threads: threads)),
         ("materialized/qb5", ExactAttentionPlan(shape: s, implementation: .materialized, threads: threads, queryBlock: 5)),
         ("tiled", ExactAttentionPlan(shape: s, implementation: .tiled, threads: threads)),
         ("tiled/qb3/kt7", ExactAttentionPlan(shape: s, implementation: .tiled, threads: threads, queryBlock: 3, keyTile: 7)),
         ("tiled/qb16/kt32", ExactAttentionPlan(shape: s, implementation: .tiled, threads: threads, queryBlock: 16, keyTile: 32))]
    }

    func check(B: Int = 1, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int, mask: AttentionMask = .none,
               scale: Float? = nil, std: Float = 1, seed: UInt64 = 1, file: StaticString = #filePath, line: UInt = #line) throws {
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: dv, seed: seed, std: std)
        let expected = Reference.attention(q: q, k: k, v: v, scale: scale.map(Double.init), causal: mask.isCausal,
                                           keyLengths: mask.keyLengths, bias: mask.bias)
        let shape = AttentionShape(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: dv)
        for (name, plan) in plans(shape) {
            let out = try exactAttention(queries: q, keys: k, values: v, scale: scale, mask: mask, plan: plan)
            XCTAssertEqual(out.shape, [B, H, N, dv])
            let err = Reference.relError(out, expected)
            XCTAssertLessThan(err, tolerance, "\(name) \(shape) causal=\(mask.isCausal)", file: file, line: line)
        }
    }

    func testOddSizesEveryGrouping() throws {
        for n in [1, 7, 33, 63, 129] {
            for hkv in [4, 2, 1] {
                try check(H: 4, Hkv: hkv, N: n, M: n, d: 16, dv: 16)
                try check(H: 4, Hkv: hkv, N: n, M: n, d: 16, dv: 16, mask: .causal)
            }
        }
    }

    func testCrossAttentionDecodeAndValueWidth() throws {
        try check(B: 2, H: 4, Hkv: 2, N: 20, M: 45, d: 16, dv: 24)                  // N < M, dv ≠ d
        try check(B: 2, H: 4, Hkv: 2, N: 45, M: 20, d: 24, dv: 8)                   // N > M
        try check(H: 8, Hkv: 2, N: 1, M: 129, d: 32, dv: 32, mask: .causal)         // decode: one query
        try check(H: 8, Hkv: 1, N: 5, M: 300, d: 16, dv: 16, mask: .causal)         // a few new queries
        try check(B: 3, H: 2, Hkv: 2, N: 70, M: 70, d: 64, dv: 64)
    }

    /// N > M causal: the first N - M queries see no key at all and must be zeros.
    func testCausalRowsWithoutKeysAreZero() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 2, Hkv: 1, N: 10, M: 4, d: 8, dv: 8, seed: 3)
        for impl in [ExactAttentionImplementation.materialized, .tiled] {
            let out = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal, implementation: impl)
            for h in 0..<2 { for i in 0..<6 { for t in 0..<8 { XCTAssertEqual(out[0, h, i, t], 0) } } }
            XCTAssertTrue(out.scalars.allSatisfy(\.isFinite))
        }
        try check(H: 2, Hkv: 1, N: 10, M: 4, d: 8, dv: 8, mask: .causal)
    }

    func testKeyLengthsAndFullyMaskedRows() throws {
        try check(B: 3, H: 4, Hkv: 2, N: 33, M: 40, d: 16, dv: 16, mask: .keyLengths([40, 17, 0]))
        try check(B: 3, H: 4, Hkv: 2, N: 33, M: 40, d: 16, dv: 16, mask: AttentionMask.causal.combined(with: .keyLengths([1, 39, 20])))
    }

    func testAdditiveBiasBroadcasts() throws {
        let (N, M) = (13, 21)
        // [N, M] with a fully -inf row (row 4) and scattered -inf entries.
        var b2 = try Tensor.randomNormal([N, M], seed: 9, std: 3)
        for j in 0..<M { b2[4, j] = -.infinity }
        b2[0, 3] = -.infinity
        try check(B: 2, H: 4, Hkv: 2, N: N, M: M, d: 8, dv: 8, mask: .bias(b2))
        try check(B: 2, H: 4, Hkv: 2, N: N, M: M, d: 8, dv: 8, mask: .bias(try Tensor.randomNormal([4, N, M], seed: 10)))
        try check(B: 2, H: 4, Hkv: 2, N: N, M: M, d: 8, dv: 8, mask: .bias(try Tensor.randomNormal([2, 1, N, M], seed: 11)))
        try check(B: 2, H: 4, Hkv: 2, N: N, M: M, d: 8, dv: 8,
                  mask: AttentionMask.causal.combined(with: .bias(try Tensor.randomNormal([2, 4, N, M], seed: 12))))
    }

    /// Logits of ±1e4: scores far outside exp's range must not overflow or lose the winner.
    func testLogitsInTheThousands() throws {
        try check(B: 1, H: 2, Hkv: 2, N: 24, M: 40, d: 8, dv: 8, scale: 0.5, std: 50)   // |logit| up to ~1e4
        try check(B: 1, H: 2, Hkv: 1, N: 37, M: 37, d: 8, dv: 8, mask: .causal, scale: 1, std: 40)
    }

    func testImplementationsAgreeAndThreadCountDoesNotMatter() throws {
        let (q, k, v) = try Reference.inputs(B: 2, H: 8, Hkv: 2, N: 300, M: 300, d: 64, dv: 64, seed: 21)
        let s = AttentionShape(B: 2, H: 8, Hkv: 2, N: 300, M: 300, d: 64, dv: 64)
        for impl in [ExactAttentionImplementation.materialized, .tiled] {
            for mask in [AttentionMask.none, .causal] {
                let one = try exactAttention(queries: q, keys: k, values: v, mask: mask,
                                             plan: ExactAttentionPlan(shape: s, implementation: impl, threads: 1))
                let two = try exactAttention(queries: q, keys: k, values: v, mask: mask,
                                             plan: ExactAttentionPlan(shape: s, implementation: impl, threads: 2))
                XCTAssertTrue(one.scalars == two.scalars, "\(impl): 1 and 2 threads must agree bitwise")
            }
        }
        let m = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal, implementation: .materialized)
        let t = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal, implementation: .tiled)
        let diff = zip(m.scalars, t.scalars).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(diff, 1e-5)
    }

    /// GQA on shared K/V equals multi-head attention on K/V repeated per query head.
    func testGroupedEqualsMultiHeadOnRepeatedKV() throws {
        let (q, k, v) = try Reference.inputs(B: 2, H: 6, Hkv: 2, N: 33, M: 33, d: 16, dv: 16, seed: 30)
        func repeatHeads(_ t: Tensor) throws -> Tensor {
            var r = try Tensor(zeros: [t.shape[0], 6, t.shape[2], t.shape[3]])
            for b in 0..<t.shape[0] { for h in 0..<6 { for i in 0..<t.shape[2] { for x in 0..<t.shape[3] {
                r[b, h, i, x] = t[b, h / 3, i, x]
            } } } }
            return r
        }
        let kr = try repeatHeads(k), vr = try repeatHeads(v)
        for impl in [ExactAttentionImplementation.materialized, .tiled] {
            let g = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal, implementation: impl)
            let mh = try scaledDotProductAttention(queries: q, keys: kr, values: vr, mask: .causal, implementation: impl)
            let diff = zip(g.scalars, mh.scalars).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(diff, 1e-6)
        }
    }

    /// Inputs that are views (a head range of a larger tensor) are read in place and give the
    /// same result as their contiguous copies.
    func testStridedViewsAsInputs() throws {
        let (q, k, v) = try Reference.inputs(B: 2, H: 8, Hkv: 4, N: 40, M: 40, d: 16, dv: 16, seed: 40)
        let qv = try q.heads(2..<6).rows(5..<30), kv = try k.heads(1..<3), vv = try v.heads(1..<3)
        XCTAssertFalse(qv.isContiguous)
        let a = try scaledDotProductAttention(queries: qv, keys: kv, values: vv, mask: .causal)
        let b = try scaledDotProductAttention(queries: qv.contiguous(), keys: kv.contiguous(), values: vv.contiguous(), mask: .causal)
        XCTAssertTrue(a.scalars == b.scalars)
        let expected = Reference.attention(q: qv.contiguous(), k: kv.contiguous(), v: vv.contiguous(), causal: true)
        XCTAssertLessThan(Reference.relError(a, expected), tolerance)
    }

    func testBadInputsThrowTypedErrors() throws {
        let q = try Tensor(zeros: [1, 4, 8, 16]), k = try Tensor(zeros: [1, 2, 8, 16]), v = try Tensor(zeros: [1, 2, 8, 16])
        func error(_ body: () throws -> Tensor) -> AttentionError? {
            do { _ = try body(); return nil } catch let e as AttentionError { return e } catch { return nil }
        }
        XCTAssertEqual(error { try scaledDotProductAttention(queries: q, keys: try Tensor(zeros: [1, 3, 8, 16]), values: try Tensor(zeros: [1, 3, 8, 16])) },
                       .headsNotGrouped(H: 4, Hkv: 3))
        if case .shapeMismatch? = error({ try scaledDotProductAttention(queries: q, keys: try Tensor(zeros: [1, 2, 8, 12]), values: v) }) {} else { XCTFail("d") }
        if case .shapeMismatch? = error({ try scaledDotProductAttention(queries: q, keys: k, values: try Tensor(zeros: [1, 2, 9, 16])) }) {} else { XCTFail("M") }
        if case .shapeMismatch? = error({ try scaledDotProductAttention(queries: try Tensor(zeros: [2, 4, 8, 16]), keys: k, values: v) }) {} else { XCTFail("B") }
        if case .wrongRank? = error({ try scaledDotProductAttention(queries: try Tensor(zeros: [4, 8, 16]), keys: k, values: v) }) {} else { XCTFail("rank") }
        if case .invalidArgument? = error({ try scaledDotProductAttention(queries: q, keys: k, values: v, scale: .nan) }) {} else { XCTFail("scale") }
        if case .invalidArgument? = error({ try scaledDotProductAttention(queries: q, keys: k, values: v, threads: 0) }) {} else { XCTFail("threads") }
        if case .shapeMismatch? = error({ try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .keyLengths([1, 2])) }) {} else { XCTFail("lengths") }
        if case .invalidArgument? = error({ try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .keyLengths([9])) }) {} else { XCTFail("length > M") }
        if case .shapeMismatch? = error({ try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .bias(try Tensor(zeros: [8, 7]))) }) {} else { XCTFail("bias") }
        if case .shapeMismatch? = error({ try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .bias(try Tensor(zeros: [3, 8, 8]))) }) {} else { XCTFail("bias heads") }
    }

    func testEmptyKeyAndQuerySets() throws {
        let q = try Tensor.randomNormal([1, 2, 3, 4], seed: 1)
        let out = try scaledDotProductAttention(queries: q, keys: try Tensor(zeros: [1, 1, 0, 4]), values: try Tensor(zeros: [1, 1, 0, 5]))
        XCTAssertEqual(out.shape, [1, 2, 3, 5])
        XCTAssertTrue(out.scalars.allSatisfy { $0 == 0 })
        let none = try scaledDotProductAttention(queries: try Tensor(zeros: [1, 2, 0, 4]), keys: try Tensor(zeros: [1, 1, 3, 4]), values: try Tensor(zeros: [1, 1, 3, 5]))
        XCTAssertEqual(none.shape, [1, 2, 0, 5])
    }

    /// Workspace is bounded by the plan, never B·H·N·M.
    func testWorkspaceBounds() {
        let s = AttentionShape(B: 1, H: 8, Hkv: 8, N: 16384, M: 16384, d: 64, dv: 64)
        let tiled = ExactAttentionPlan(shape: s, implementation: .tiled, threads: 2)
        XCTAssertLessThan(tiled.workspaceBytes, 2 << 20)   // 256 stacked rows × (d + 512 + dv + 3) floats × 2 threads
        let longer = ExactAttentionPlan(shape: AttentionShape(B: 1, H: 8, Hkv: 8, N: 1 << 20, M: 1 << 20, d: 64, dv: 64),
                                        implementation: .tiled, threads: 2)
        XCTAssertEqual(tiled.workspaceBytes, longer.workspaceBytes, "tiled workspace must not grow with N, M")
        let mat = ExactAttentionPlan(shape: s, implementation: .materialized, threads: 2)
        XCTAssertLessThanOrEqual(mat.workspaceBytes, 2 * (mat.stackedRows * (64 + 16384 + 2) * 4))   // + both column limits
        XCTAssertLessThan(mat.workspaceBytes, 64 << 20)
    }
}
