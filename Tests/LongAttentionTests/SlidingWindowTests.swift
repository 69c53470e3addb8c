import AttentionTensor
import Foundation
@testable import LongAttention
import XCTest

/// Sliding-window attention (transformers' rule: the query at position `p = i + M - N` sees keys
/// `p - W < j <= p`) in the exact kernels, against the float64 reference: both implementations
/// with odd blocks and tiles, GQA groupings, N < M and N > M, masks combined, the work the tile
/// walk does (the proof that tiles outside the band are skipped), token-major inputs and outputs.
///
/// Tolerance as ExactAttentionTests (2e-5 of max(1, max |expected|)): one wrongly masked key
/// moves an output by ~1e-2.
final class SlidingWindowTests: XCTestCase {
    let tolerance = 2e-5

    /// Every plan shape that matters for the walk: whole rows (materialised, one or many blocks),
    /// default tiles, odd tiles narrower and wider than the windows, and key splits (decode's path).
    func plans(_ s: AttentionShape) -> [(String, ExactAttentionPlan)] {
        [("materialized", ExactAttentionPlan(shape: s, implementation: .materialized, threads: 2)),
         ("materialized/qb5", ExactAttentionPlan(shape: s, implementation: .materialized, threads: 2, queryBlock: 5)),
         ("tiled", ExactAttentionPlan(shape: s, implementation: .tiled, threads: 2)),
         ("tiled/qb3/kt7", ExactAttentionPlan(shape: s, implementation: .tiled, threads: 2, queryBlock: 3, keyTile: 7)),
         ("tiled/qb16/kt32", ExactAttentionPlan(shape: s, implementation: .tiled, threads: 2, queryBlock: 16, keyTile: 32)),
         ("tiled/qb40/kt8/split3", ExactAttentionPlan(shape: s, implementation: .tiled, threads: 2, queryBlock: 40, keyTile: 8,
                                                      keySplits: 3))]
    }

    func check(B: Int = 1, H: Int, Hkv: Int, N: Int, M: Int, d: Int = 8, dv: Int = 8, window: Int,
               keyLengths: [Int]? = nil, seed: UInt64 = 1, file: StaticString = #filePath, line: UInt = #line) throws {
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: dv, seed: seed)
        let mask = AttentionMask(isCausal: true, slidingWindow: window, keyLengths: keyLengths)
        let expected = Reference.attention(q: q, k: k, v: v, causal: true, window: window, keyLengths: keyLengths)
        let shape = AttentionShape(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: dv)
        for (name, plan) in plans(shape) {
            let out = try exactAttention(queries: q, keys: k, values: v, mask: mask, plan: plan)
            XCTAssertEqual(out.shape, [B, H, N, dv])
            XCTAssertLessThan(Reference.relError(out, expected), tolerance, "\(name) \(shape) W=\(window)", file: file, line: line)
        }
    }

    /// N, M ∈ {1, 7, 33, 129} (N < M bottom-right, N > M with rows that see nothing), windows
    /// 1, 3, 8, 64 and wider than everything, groups of 1, 3 and 4 query heads per KV head.
    func testForwardAgainstFloat64OddSizesWindowsAndGroups() throws {
        var seed: UInt64 = 0
        let sizes = [1, 7, 33, 129]
        for n in sizes {
            for m in sizes {
                for window in [1, 3, 8, 64, n + m] {
                    for (H, Hkv) in [(2, 2), (3, 1), (8, 2)] {
                        seed += 1
                        // Keep the float64 reference's cost down: the largest shapes with one grouping each.
                        if n * m > 33 * 129 && (H, Hkv) != [(2, 2), (3, 1), (8, 2)][Int(seed % 3)] { continue }
                        try check(H: H, Hkv: Hkv, N: n, M: m, window: window, seed: seed)
                    }
                }
            }
        }
    }

    /// Windows that cross the default 512-key tiles and 64-key narrow tiles at a GEMM-sized block
    /// (256 stacked rows), with padding; and the decode shapes (a few rows, keys split across work items).
    func testAcrossDefaultTilesPaddingAndDecodeShapes() throws {
        try check(B: 2, H: 4, Hkv: 1, N: 700, M: 700, d: 16, dv: 16, window: 100, keyLengths: [700, 333], seed: 3)
        try check(B: 1, H: 2, Hkv: 2, N: 300, M: 1100, d: 8, dv: 4, window: 513, seed: 4)
        try check(B: 1, H: 8, Hkv: 2, N: 1, M: 3000, d: 16, dv: 16, window: 1000, seed: 5)    // decode: keys split
        try check(B: 1, H: 32, Hkv: 1, N: 3, M: 2500, d: 8, dv: 8, window: 700, seed: 6)      // MQA, 96 stacked rows
    }

    /// A window at least as wide as every row's causal range is plain causal attention, bitwise
    /// (the walk is the same); `.slidingWindow(W)` is causal; combining takes the smaller window.
    func testWideWindowIsCausalAndMaskAlgebra() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: 2, N: 90, M: 130, d: 16, dv: 16, seed: 7)
        for impl in [ExactAttentionImplementation.materialized, .tiled] {
            let causal = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal, implementation: impl)
            let wide = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .slidingWindow(130), implementation: impl)
            XCTAssertTrue(causal.scalars == wide.scalars, "\(impl)")
            let narrow = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .slidingWindow(129), implementation: impl)
            XCTAssertFalse(causal.scalars == narrow.scalars, "\(impl): W = 129 drops key 0 for the last query")
        }
        XCTAssertTrue(AttentionMask.slidingWindow(5).isCausal)
        let both = try AttentionMask.slidingWindow(9).combined(with: AttentionMask(isCausal: true, slidingWindow: 4))
        XCTAssertEqual(both.slidingWindow, 4)
        XCTAssertTrue(both.isCausal)
        XCTAssertEqual(try AttentionMask.causal.combined(with: .slidingWindow(6)).slidingWindow, 6)
        XCTAssertNil(try AttentionMask.causal.combined(with: .keyLengths([3])).slidingWindow)
    }

    /// A window with every other mask part: key lengths, a bias with -inf, ALiBi.
    func testWindowCombinedWithBiasALiBiAndKeyLengths() throws {
        let (B, H, Hkv, N, M, d) = (2, 4, 2, 21, 37, 8)
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: d, seed: 8)
        var bias = try Tensor.randomNormal([B, H, N, M], seed: 9)
        bias[0, 1, 5, 30] = -.infinity
        let slopes = ALiBi(heads: H).slopes
        let mask = AttentionMask(isCausal: true, slidingWindow: 6, keyLengths: [30, 37], bias: bias, alibi: ALiBi(slopes: slopes))
        let s = GradientReference.RefShape(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: d)
        let expected = GradientReference.exact(q: q.scalars.map(Double.init), k: k.scalars.map(Double.init), v: v.scalars.map(Double.init),
                                               shape: s, scale: 1 / Double(d).squareRoot(), causal: true, window: 6,
                                               keyLengths: [30, 37], bias: bias.scalars.map(Double.init),
                                               alibiSlopes: slopes.map(Double.init))
        for (name, plan) in plans(AttentionShape(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: d)) {
            let out = try exactAttention(queries: q, keys: k, values: v, mask: mask, plan: plan)
            XCTAssertLessThan(Reference.relError(out, expected), tolerance, name)
        }
    }

    /// The forward that keeps the log-sum-exp: its output is the plain forward's and its lse the
    /// float64 log-sum-exp over each row's window.
    func testForwardKeepingLSE() throws {
        let (B, H, Hkv, N, M, d, W) = (1, 6, 2, 40, 75, 8, 9)
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: d, seed: 10)
        let f = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: .slidingWindow(W))
        let expected = Reference.attention(q: q, k: k, v: v, causal: true, window: W)
        XCTAssertLessThan(Reference.relError(f.output, expected), tolerance)
        let (qs, ks) = (q.scalars, k.scalars)
        var lse = [Double]()
        for h in 0..<H { for i in 0..<N {
            let p = i + M - N
            var scores = [Double]()
            for j in max(0, p - W + 1)...p {
                var x = 0.0
                for a in 0..<d { x += Double(qs[(h * N + i) * d + a]) * Double(ks[((h / 3) * M + j) * d + a]) }
                scores.append(x / Double(d).squareRoot())
            }
            let mx = scores.max()!
            lse.append(mx + Foundation.log(scores.map { Foundation.exp($0 - mx) }.reduce(0, +)))
        } }
        XCTAssertLessThan(Reference.relError(f.logSumExp, lse), 1e-5)
    }

    /// Windows of 0, a negative one, or one without a causal mask are refused with the typed error,
    /// by every entry point that takes a mask.
    func testBadWindowsAreRefused() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 2, Hkv: 1, N: 5, M: 5, d: 4, dv: 4, seed: 11)
        for mask in [AttentionMask.slidingWindow(0), .slidingWindow(-3), AttentionMask(slidingWindow: 4)] {
            func refused(_ what: String, _ body: () throws -> Void) {
                XCTAssertThrowsError(try body(), what) { e in
                    guard case .invalidWindow? = e as? AttentionError else { return XCTFail("\(what): \(e)") }
                }
            }
            refused("forward") { _ = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: mask) }
            refused("lse forward") { _ = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: mask) }
            let f = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: .causal)
            refused("backward") {
                _ = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: f, outputGradient: f.output, mask: mask)
            }
            refused("work") { _ = try ExactAttentionPlan(shape: AttentionShape(B: 1, H: 2, Hkv: 1, N: 5, M: 5, d: 4, dv: 4)).work(mask: mask) }
        }
    }

    /// The skipping, counted on the kernel's own tile walk: under a window the score entries grow
    /// as N·W (about B·H·N·(W + 64) plus the blocks' triangles), not N², and a window at least N
    /// wide does exactly the causal work.
    func testTilesOutsideTheBandAreSkipped() throws {
        func work(_ n: Int, _ mask: AttentionMask, _ impl: ExactAttentionImplementation = .tiled) throws -> ExactAttentionWork {
            try ExactAttentionPlan(shape: AttentionShape(B: 1, H: 8, Hkv: 2, N: n, M: n, d: 64, dv: 64), implementation: impl,
                                   threads: 2).work(mask: mask)
        }
        let W = 256
        for impl in [ExactAttentionImplementation.tiled, .materialized] {
            let z = try work(4096, .slidingWindow(W), impl)
            let a = try work(8192, .slidingWindow(W), impl), b = try work(16384, .slidingWindow(W), impl)
            let causal = try work(16384, .causal, impl), dense = try work(16384, .none, impl)
            XCTAssertEqual(dense.scores, 8 * 16384 * 16384, "\(impl): dense attention computes every score")
            // Affine in N (the first W rows see fewer keys): each doubling adds work in
            // proportion to the rows added, 4096 more, then 8192 more.
            XCTAssertLessThan(abs(Double(b.scores - a.scores) / Double(a.scores - z.scores) - 2), 1e-3, "\(impl) \(z) \(a) \(b)")
            // Each row computes its W keys plus at most one narrow tile's or one block's sliver.
            let perRow = Double(b.scores) / Double(8 * 16384)
            XCTAssertGreaterThanOrEqual(perRow, Double(W) - 1, "\(impl)")
            XCTAssertLessThan(perRow, Double(W + (impl == .tiled ? 128 : 256)), "\(impl): \(perRow) scores per row")
            XCTAssertLessThan(Double(b.scores), 0.05 * Double(causal.scores), "\(impl)")
            XCTAssertEqual(try work(4096, .slidingWindow(4096), impl), try work(4096, .causal, impl), "\(impl)")
        }
        // The backward walks the same band.
        let s = AttentionShape(B: 1, H: 8, Hkv: 2, N: 16384, M: 16384, d: 64, dv: 64)
        let back = try attentionBackwardWork(shape: s, mask: .slidingWindow(W)), backCausal = try attentionBackwardWork(shape: s, mask: .causal)
        XCTAssertLessThan(Double(back.scores) / Double(8 * 16384), Double(W + 128))
        XCTAssertLessThan(Double(back.scores), 0.05 * Double(backCausal.scores))
        XCTAssertEqual(try attentionBackwardWork(shape: s, mask: .none).scores, 8 * 16384 * 16384)
    }

    /// Token-major q, k, v (a model's `[B·T, H·d]` rows as `reshaped([B, T, H, d]).permuted([0, 2, 1, 3])`
    /// views) are read in place, and `.tokenMajor` writes `[B, T, H, dv]` directly: the same
    /// numbers as the head-major result, bitwise, for both implementations and the LSE forward.
    func testTokenMajorInputsAndOutput() throws {
        let (B, T, H, Hkv, d, dv) = (2, 37, 6, 2, 8, 5)
        let qRows = try Tensor.randomNormal([B * T, H * d], seed: 12)
        let kRows = try Tensor.randomNormal([B * T, Hkv * d], seed: 13), vRows = try Tensor.randomNormal([B * T, Hkv * dv], seed: 14)
        let q = try qRows.reshaped([B, T, H, d]).permuted([0, 2, 1, 3])
        let k = try kRows.reshaped([B, T, Hkv, d]).permuted([0, 2, 1, 3])
        let v = try vRows.reshaped([B, T, Hkv, dv]).permuted([0, 2, 1, 3])
        XCTAssertFalse(q.isContiguous)
        // The entry scaffold keeps the views (no contiguous copy): the kernels read their strides.
        let inputs = try AttentionInputs(queries: q, keys: k, values: v, mask: .slidingWindow(7))
        XCTAssertEqual(inputs.queries.strides, [T * H * d, d, H * d, 1])
        XCTAssertEqual(inputs.keys.strides, [T * Hkv * d, d, Hkv * d, 1])
        XCTAssertEqual(inputs.values.strides, [T * Hkv * dv, dv, Hkv * dv, 1])
        XCTAssertTrue(inputs.queries.unsafeBaseAddress == qRows.unsafeBaseAddress)
        let expected = Reference.attention(q: q.contiguous(), k: k.contiguous(), v: v.contiguous(), causal: true, window: 7)
        for mask in [AttentionMask.slidingWindow(7), .causal, .none] {
            for impl in [ExactAttentionImplementation.materialized, .tiled] {
                let head = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: mask, implementation: impl)
                let token = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: mask, implementation: impl,
                                                          outputLayout: .tokenMajor)
                XCTAssertEqual(token.shape, [B, T, H, dv])
                XCTAssertTrue(try token.permuted([0, 2, 1, 3]).scalars == head.scalars, "\(impl)")
                if mask.slidingWindow != nil { XCTAssertLessThan(Reference.relError(head, expected), tolerance) }
            }
            let f = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: mask, outputLayout: .tokenMajor)
            XCTAssertEqual(f.output.shape, [B, T, H, dv])
            XCTAssertEqual(f.outputLayout, .tokenMajor)
            let g = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: mask)
            XCTAssertTrue(f.headMajorOutput.scalars == g.output.scalars)
            XCTAssertTrue(f.logSumExp.scalars == g.logSumExp.scalars)
        }
    }
}
