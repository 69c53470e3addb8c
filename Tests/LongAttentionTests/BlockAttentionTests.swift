import AttentionTensor
import LongAttention
import XCTest

/// The block entry points ring attention is built on: key blocks at sequence positions, merged by
/// the log-sum-exp rule, give exact attention; their backward contributions sum to its gradients;
/// linear attention continues from a prefix state; decoding returns its log-sum-exp.
final class BlockAttentionTests: XCTestCase {
    func err(_ a: Tensor, _ b: Tensor) -> Double {
        XCTAssertEqual(a.shape, b.shape)
        return Reference.relError(a, b.scalars.map(Double.init))
    }

    func testVisibility() {
        typealias V = AttentionBlockVisibility
        XCTAssertEqual(V(queryRows: 4, keyRows: 4, queryPosition: 8, keyPosition: 0, causal: true), .full)
        XCTAssertEqual(V(queryRows: 4, keyRows: 4, queryPosition: 3, keyPosition: 0, causal: true), .full)
        XCTAssertEqual(V(queryRows: 4, keyRows: 4, queryPosition: 2, keyPosition: 0, causal: true), .partial)
        XCTAssertEqual(V(queryRows: 4, keyRows: 4, queryPosition: 0, keyPosition: 4, causal: true), .none)
        XCTAssertEqual(V(queryRows: 4, keyRows: 4, queryPosition: 1, keyPosition: 4, causal: true), .partial)
        XCTAssertEqual(V(queryRows: 4, keyRows: 4, queryPosition: 0, keyPosition: 4, causal: false), .full)
        XCTAssertEqual(V(queryRows: 0, keyRows: 4, queryPosition: 0, keyPosition: 0, causal: false), .none)
    }

    /// Query blocks × key blocks of an odd-sized causal GQA problem with key lengths, bottom-right
    /// (N < M), merged in a scrambled order: the output and lse of the whole call, and the summed
    /// gradients of its backward.
    func testBlocksMergeToExactAttentionAndGradients() throws {
        let (B, H, Hkv, N, M, d, dv) = (2, 4, 2, 23, 31, 8, 6)
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: dv, seed: 5)
        let lengths = [31, 20]
        for causal in [false, true] {
            let mask = AttentionMask(isCausal: causal, keyLengths: lengths)
            let whole = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: mask)
            let dOut = try Tensor.randomNormal([B, H, N, dv], seed: 6)
            let grads = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: whole, outputGradient: dOut, mask: mask)
            let qBlocks = [0..<7, 7..<8, 8..<23], kBlocks = [20..<31, 0..<9, 9..<20, 31..<31]
            var dk = try Tensor(zeros: k.shape), dvSum = try Tensor(zeros: v.shape)
            for qb in qBlocks {
                let qr = try q.rows(qb)
                var out = try Tensor(zeros: [B, H, qb.count, dv]), lse = try Tensor(filling: -.infinity, [B, H, qb.count])
                for kb in kBlocks {
                    let part = try attentionBlockForward(queries: qr, keys: try k.rows(kb), values: try v.rows(kb), causal: causal,
                                                         queryPosition: qb.lowerBound + M - N, keyPosition: kb.lowerBound,
                                                         keyLengths: lengths)
                    try mergeAttentionBlock(output: &out, logSumExp: &lse, blockOutput: part.output, blockLogSumExp: part.logSumExp)
                }
                XCTAssertLessThan(err(out, try whole.output.rows(qb).contiguous()), 1e-6)
                XCTAssertLessThan(err(lse, try whole.logSumExp.slice(axis: 2, qb).contiguous()), 1e-5)
                var dq = try Tensor(zeros: [B, H, qb.count, d])
                for kb in kBlocks {
                    let g = try attentionBlockBackward(queries: qr, keys: try k.rows(kb), values: try v.rows(kb), output: out,
                                                       logSumExp: lse, outputGradient: try dOut.rows(qb), causal: causal,
                                                       queryPosition: qb.lowerBound + M - N, keyPosition: kb.lowerBound, keyLengths: lengths)
                    dq = try dq + g.queries
                    var kslab = try Tensor(zeros: k.shape), vslab = try Tensor(zeros: v.shape)
                    for b in 0..<B { for h in 0..<Hkv { for (j, p) in kb.enumerated() {
                        for c in 0..<d { kslab[b, h, p, c] = g.keys[b, h, j, c] }
                        for c in 0..<dv { vslab[b, h, p, c] = g.values[b, h, j, c] }
                    } } }
                    dk = try dk + kslab
                    dvSum = try dvSum + vslab
                }
                XCTAssertLessThan(err(dq, try grads.queries.rows(qb).contiguous()), 1e-5, "causal \(causal)")
            }
            XCTAssertLessThan(err(dk, grads.keys), 1e-5)
            XCTAssertLessThan(err(dvSum, grads.values), 1e-5)
        }
    }

    /// Rows that see no key — causal N > M (rows before every key, bottom-right) and a batch with
    /// key length 0 — through blocks merged as the ring merges them: those rows' output and dq are
    /// exactly zero (lse -inf), the rest match the single-process call, and dk/dv sum to its gradients.
    func testRowsWithoutVisibleKeysAreExactlyZero() throws {
        let (B, H, Hkv, N, M, d, dv) = (3, 2, 1, 40, 5, 8, 8)
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: dv, seed: 11)
        for (causal, lengths) in [(true, nil), (true, [5, 0, 3]), (false, [0, 5, 2])] as [(Bool, [Int]?)] {
            var mask = AttentionMask(isCausal: causal)
            if let lengths { mask.keyLengths = lengths }
            let whole = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: mask)
            let dOut = try Tensor.randomNormal([B, H, N, dv], seed: 12)
            let grads = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: whole, outputGradient: dOut, mask: mask)
            let qBlocks = [0..<10, 10..<33, 33..<36, 36..<40], kBlocks = [3..<5, 0..<3]
            var dk = try Tensor(zeros: k.shape), dvSum = try Tensor(zeros: v.shape)
            var empty = 0
            for qb in qBlocks {
                let qr = try q.rows(qb)
                var out = try Tensor(zeros: [B, H, qb.count, dv]), lse = try Tensor(filling: -.infinity, [B, H, qb.count])
                for kb in kBlocks {
                    let part = try attentionBlockForward(queries: qr, keys: try k.rows(kb), values: try v.rows(kb), causal: causal,
                                                         queryPosition: qb.lowerBound + M - N, keyPosition: kb.lowerBound,
                                                         keyLengths: lengths)
                    try mergeAttentionBlock(output: &out, logSumExp: &lse, blockOutput: part.output, blockLogSumExp: part.logSumExp)
                }
                var dq = try Tensor(zeros: [B, H, qb.count, d])
                for kb in kBlocks {
                    let g = try attentionBlockBackward(queries: qr, keys: try k.rows(kb), values: try v.rows(kb), output: out,
                                                       logSumExp: lse, outputGradient: try dOut.rows(qb), causal: causal,
                                                       queryPosition: qb.lowerBound + M - N, keyPosition: kb.lowerBound, keyLengths: lengths)
                    dq = try dq + g.queries
                    for b in 0..<B { for h in 0..<Hkv { for (j, p) in kb.enumerated() {
                        for c in 0..<d { dk[b, h, p, c] += g.keys[b, h, j, c] }
                        for c in 0..<dv { dvSum[b, h, p, c] += g.values[b, h, j, c] }
                    } } }
                }
                for b in 0..<B {
                    for (r, i) in qb.enumerated() {
                        let last = min(causal ? i + M - N : M - 1, (lengths?[b] ?? M) - 1)
                        guard last < 0 else { continue }
                        empty += 1
                        for h in 0..<H {
                            XCTAssertEqual(lse[b, h, r], -.infinity)
                            for c in 0..<dv { XCTAssertEqual(out[b, h, r, c], 0, "row \(i) batch \(b)") }
                            for c in 0..<d { XCTAssertEqual(dq[b, h, r, c], 0, "dq row \(i) batch \(b)") }
                        }
                    }
                }
                XCTAssertLessThan(err(out, try whole.output.rows(qb).contiguous()), 1e-6, "causal \(causal) \(String(describing: lengths))")
                XCTAssertLessThan(err(dq, try grads.queries.rows(qb).contiguous()), 1e-5, "causal \(causal) \(String(describing: lengths))")
            }
            XCTAssertGreaterThan(empty, 0)
            XCTAssertLessThan(err(dk, grads.keys), 1e-5)
            XCTAssertLessThan(err(dvSum, grads.values), 1e-5)
        }
    }

    func testBlockRejectsNegativeKeyLength() throws {
        let (q, k, v) = try Reference.inputs(B: 2, H: 2, Hkv: 2, N: 4, M: 4, d: 8, dv: 8, seed: 13)
        XCTAssertThrowsError(try attentionBlockForward(queries: q, keys: k, values: v, keyLengths: [4, -1]))
        let f = try attentionBlockForward(queries: q, keys: k, values: v)
        XCTAssertThrowsError(try attentionBlockBackward(queries: q, keys: k, values: v, output: f.output, logSumExp: f.logSumExp,
                                                        outputGradient: f.output, keyLengths: [-2, 4]))
    }

    func testMergeRejectsMismatchedShapes() throws {
        var o = try Tensor(zeros: [1, 1, 2, 3]), l = try Tensor(zeros: [1, 1, 2])
        XCTAssertThrowsError(try mergeAttentionBlock(output: &o, logSumExp: &l, blockOutput: try Tensor(zeros: [1, 1, 3, 3]),
                                                     blockLogSumExp: try Tensor(zeros: [1, 1, 3])))
    }

    /// A causal sequence cut in pieces: each piece from the prefix state of the pieces before it.
    func testLinearAttentionContinuesFromAPrefixState() throws {
        let (B, H, Hkv, N, M, d) = (1, 4, 2, 37, 45, 8)
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: N, M: M, d: d, dv: d, seed: 8)
        for map in [LinearFeatureMap.elu, .relu] {
            let whole = try linearAttention(queries: q, keys: k, values: v, featureMap: map, causal: true, chunkSize: 8)
            // Query pieces and the keys up to each piece's last diagonal (offset M - N = 8).
            let pieces: [(Range<Int>, Range<Int>)] = [(0..<10, 0..<18), (10..<11, 18..<19), (11..<37, 19..<45)]
            var state = try Tensor(zeros: [B, Hkv, d, d + 1])
            for (qr, kr) in pieces {
                let out = try linearAttention(queries: try q.rows(qr), keys: try k.rows(kr), values: try v.rows(kr), initialState: state,
                                              featureMap: map, causal: true, chunkSize: 8)
                XCTAssertLessThan(err(out, try whole.rows(qr).contiguous()), 1e-5, "\(map) \(qr)")
                state = try state + (try linearAttentionState(keys: try k.rows(kr), values: try v.rows(kr), featureMap: map))
            }
            // Non-causal: the queries read the whole state.
            let all = try linearAttention(queries: q, keys: k, values: v, featureMap: map)
            let fromState = try linearAttention(queries: q, keys: try k.rows(0..<0), values: try v.rows(0..<0), initialState: state, featureMap: map)
            XCTAssertLessThan(err(fromState, all), 1e-5)
        }
        XCTAssertThrowsError(try linearAttentionState(keys: k, values: v, featureMap: .softmax))
    }

    func testDecodeKeepingLSE() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: 2, N: 1, M: 50, d: 8, dv: 8, seed: 3)
        for type in [KVCacheType.float32, .bfloat16] {
            var cache = try KVCache(layers: 1, batch: 1, kvHeads: 2, capacity: 64, headDimension: 8, type: type)
            let empty = try decodeAttentionKeepingLSE(queries: q, cache: cache, layer: 0)
            XCTAssertEqual(empty.logSumExp.scalars, [Float](repeating: -.infinity, count: 4))
            try cache.append(layer: 0, keys: k, values: v)
            let kept = try decodeAttentionKeepingLSE(queries: q, cache: cache, layer: 0)
            let plain = try decodeAttention(queries: q, cache: cache, layer: 0)
            XCTAssertLessThan(err(kept.output, plain), 1e-6)
            if type == .float32 {
                let full = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: .causal)
                XCTAssertLessThan(err(kept.logSumExp, full.logSumExp), 1e-5)
            }
        }
    }
}
