import AttentionTensor
import Foundation
import LongAttention
import XCTest

/// RoPE, ALiBi, the KV cache and decode steps against float64 references.
final class PositionsTests: XCTestCase {
    /// RoPE in float64, rotate-half layout.
    func ropeReference(_ x: Tensor, offset: Int, base: Double = 10000, positionScale: Double = 1) -> [Double] {
        let (B, H, N, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let xs = x.scalars.map(Double.init)
        var out = xs
        for bh in 0..<(B * H) { for n in 0..<N { for i in 0..<(d / 2) {
            let angle = Double(n + offset) * positionScale * Foundation.pow(base, -2 * Double(i) / Double(d))
            let a = xs[(bh * N + n) * d + i], b = xs[(bh * N + n) * d + i + d / 2]
            out[(bh * N + n) * d + i] = a * Foundation.cos(angle) - b * Foundation.sin(angle)
            out[(bh * N + n) * d + i + d / 2] = b * Foundation.cos(angle) + a * Foundation.sin(angle)
        } } }
        return out
    }

    func testRoPEAgainstFloat64WithScaling() throws {
        let x = try Tensor.randomNormal([2, 3, 37, 32], seed: 1)
        for (scaling, base, positionScale) in [(RotaryEmbedding.Scaling.none, 10000.0, 1.0),
                                               (.linear(factor: 4), 10000.0, 0.25),
                                               (.ntk(factor: 8), 10000 * Foundation.pow(8, 32.0 / 30.0), 1.0)] {
            let rope = try RotaryEmbedding(dimension: 32, maxPositions: 4096, scaling: scaling)
            var y = x
            try rope.apply(to: &y, positionOffset: 2000)
            // Angles up to 2000 rad: the float32 cos/sin tables are exact to ~1 ulp of 1.
            XCTAssertLessThan(Reference.relError(y, ropeReference(x, offset: 2000, base: base, positionScale: positionScale)), 1e-6, "\(scaling)")
        }
    }

    /// After rotation, q·k depends only on the distance between their positions.
    func testRoPERelativePositionProperty() throws {
        let rope = try RotaryEmbedding(dimension: 64, maxPositions: 10000)
        let q = try Tensor.randomNormal([1, 1, 1, 64], seed: 2), k = try Tensor.randomNormal([1, 1, 1, 64], seed: 3)
        func dot(_ pq: Int, _ pk: Int) throws -> Double {
            var a = q, b = k
            try rope.apply(to: &a, positionOffset: pq)
            try rope.apply(to: &b, positionOffset: pk)
            return zip(a.scalars, b.scalars).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        }
        for delta in [0, 1, 17, 500] {
            let reference = try dot(delta, 0)
            for start in [3, 100, 4000, 9000] {
                XCTAssertEqual(try dot(start + delta, start), reference, accuracy: 1e-3 * max(1, abs(reference)), "Δ \(delta) at \(start)")
            }
        }
        XCTAssertThrowsError(try RotaryEmbedding(dimension: 7, maxPositions: 10))
        var x = try Tensor.randomNormal([1, 1, 5, 64], seed: 4)
        XCTAssertThrowsError(try rope.apply(to: &x, positionOffset: 9998))
    }

    func testALiBiSlopesFollowThePaper() {
        XCTAssertEqual(ALiBi(heads: 8).slopes, (1...8).map { Float(Foundation.pow(2, -Double($0))) })
        let twelve = ALiBi(heads: 12).slopes
        XCTAssertEqual(Array(twelve.prefix(8)), (1...8).map { Float(Foundation.pow(2, -Double($0))) })
        XCTAssertEqual(Array(twelve.suffix(4)), [0.5, 1.5, 2.5, 3.5].map { Float(Foundation.pow(2, -$0)) })
    }

    func alibiBias(H: Int, N: Int, M: Int, slopes: [Float]) throws -> Tensor {
        var values = [Float](repeating: 0, count: H * N * M)
        for h in 0..<H { for i in 0..<N { for j in 0..<M {
            values[(h * N + i) * M + j] = -slopes[h] * Float(abs(i + M - N - j))
        } } }
        return try Tensor(shape: [H, N, M], scalars: values)
    }

    func testALiBiInBothImplementationsAgainstFloat64() throws {
        for (n, m, causal) in [(33, 33, false), (33, 33, true), (7, 60, true), (45, 20, false)] {
            let (q, k, v) = try Reference.inputs(B: 2, H: 4, Hkv: 2, N: n, M: m, d: 16, dv: 16, seed: 6)
            let alibi = ALiBi(heads: 4)
            let expected = Reference.attention(q: q, k: k, v: v, causal: causal, bias: try alibiBias(H: 4, N: n, M: m, slopes: alibi.slopes))
            let shape = AttentionShape(B: 2, H: 4, Hkv: 2, N: n, M: m, d: 16, dv: 16)
            for plan in [ExactAttentionPlan(shape: shape, implementation: .materialized),
                         ExactAttentionPlan(shape: shape, implementation: .tiled, queryBlock: 5, keyTile: 9)] {
                let out = try exactAttention(queries: q, keys: k, values: v, mask: AttentionMask(isCausal: causal, alibi: alibi), plan: plan)
                XCTAssertLessThan(Reference.relError(out, expected), 2e-5, "\(plan.implementation) N \(n) M \(m) causal \(causal)")
            }
        }
        let q = try Tensor(zeros: [1, 4, 3, 8])
        XCTAssertThrowsError(try scaledDotProductAttention(queries: q, keys: q, values: q, mask: .alibi(ALiBi(heads: 3))))
    }

    func testALiBiInBigBird() throws {
        for causal in [false, true] {
            let plan = try BigBirdPlan(sequenceLength: 70, heads: 4, blockSize: 8, randomBlocks: 2, seed: 5, causal: causal)
            let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: 2, N: 70, M: 70, d: 8, dv: 8, seed: 8)
            let alibi = ALiBi(heads: 4)
            var bias = try alibiBias(H: 4, N: 70, M: 70, slopes: alibi.slopes)
            for h in 0..<4 { for p in 0..<70 { for t in 0..<70 where !plan.attends(head: h, query: p, key: t) { bias[h, p, t] = -.infinity } } }
            let out = try bigBirdAttention(queries: q, keys: k, values: v, plan: plan, alibi: alibi)
            XCTAssertLessThan(Reference.relError(out, Reference.attention(q: q, k: k, v: v, bias: bias)), 2e-5, "causal \(causal)")
        }
    }

    /// Decoding token by token — RoPE at each position, the cache appended each step — gives
    /// exact causal attention over the whole sequence.
    func testTokenByTokenDecodeEqualsCausalAttention() throws {
        let (B, H, Hkv, N, d) = (2, 8, 2, 40, 32)
        let rope = try RotaryEmbedding(dimension: d, maxPositions: 128)
        let (q, k, v) = try Reference.inputs(B: B, H: H, Hkv: Hkv, N: N, M: N, d: d, dv: d, seed: 11)
        // The whole sequence at once.
        var qr = q, kr = k
        try rope.apply(to: &qr, positionOffset: 0)
        try rope.apply(to: &kr, positionOffset: 0)
        let whole = try scaledDotProductAttention(queries: qr, keys: kr, values: v, mask: .causal)
        // Prefill 9 tokens, then one at a time, then a chunk of 3.
        var cache = try KVCache(layers: 1, batch: B, kvHeads: Hkv, capacity: 64, headDimension: d)
        var outputs = [Tensor]()
        var position = 0
        for n in [9] + Array(repeating: 1, count: N - 12) + [3] {
            var qs = try q.rows(position..<(position + n)).contiguous(), ks = try k.rows(position..<(position + n)).contiguous()
            try rope.apply(to: &qs, positionOffset: position)
            try rope.apply(to: &ks, positionOffset: position)
            try cache.append(layer: 0, keys: ks, values: try v.rows(position..<(position + n)))
            outputs.append(try decodeAttention(queries: qs, cache: cache, layer: 0))
            position += n
        }
        XCTAssertEqual(cache.lengths, [N])
        var col = 0
        for o in outputs {
            let n = o.shape[2]
            let expected = try whole.rows(col..<(col + n)).scalars.map(Double.init)
            XCTAssertLessThan(Reference.relError(o, expected), 1e-5, "rows \(col)..<\(col + n)")
            col += n
        }
    }

    /// The split-key decode path (forced) equals the plain one, and the float64 reference.
    func testKeySplitDecodeMerge() throws {
        for (hkv, causal) in [(1, true), (4, false)] {
            let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: hkv, N: 1, M: 1000, d: 16, dv: 16, seed: 12)
            let shape = AttentionShape(B: 1, H: 4, Hkv: hkv, N: 1, M: 1000, d: 16, dv: 16)
            let expected = Reference.attention(q: q, k: k, v: v, causal: causal)
            for splits in [1, 3, 7] {
                let plan = ExactAttentionPlan(shape: shape, implementation: .tiled, keyTile: 64, keySplits: splits)
                XCTAssertEqual(plan.keySplits, splits)
                let out = try exactAttention(queries: q, keys: k, values: v, mask: causal ? .causal : .none, plan: plan)
                XCTAssertLessThan(Reference.relError(out, expected), 2e-5, "splits \(splits) Hkv \(hkv)")
            }
        }
        // Splits with a masked tail: key lengths shorter than some splits' ranges.
        let (q, k, v) = try Reference.inputs(B: 2, H: 2, Hkv: 1, N: 2, M: 700, d: 8, dv: 8, seed: 13)
        let plan = ExactAttentionPlan(shape: AttentionShape(B: 2, H: 2, Hkv: 1, N: 2, M: 700, d: 8, dv: 8),
                                      implementation: .tiled, keyTile: 50, keySplits: 5)
        let out = try exactAttention(queries: q, keys: k, values: v, mask: .keyLengths([130, 0]), plan: plan)
        XCTAssertLessThan(Reference.relError(out, Reference.attention(q: q, k: k, v: v, keyLengths: [130, 0])), 2e-5)
    }

    /// The decode kernels' d = dv = 128 register paths (the common head size) against float64,
    /// with 1–8 rows per tile (GQA groups of 1, 4 and 8; one and three new queries).
    func testDecodeKernelsAtHeadSize128() throws {
        for (h, hkv, n) in [(8, 8, 1), (8, 2, 1), (8, 1, 1), (8, 2, 3)] {
            let (q, k, v) = try Reference.inputs(B: 1, H: h, Hkv: hkv, N: n, M: 300, d: 128, dv: 128, seed: UInt64(h * 10 + hkv + n))
            let out = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal, implementation: .tiled)
            XCTAssertLessThan(Reference.relError(out, Reference.attention(q: q, k: k, v: v, causal: true)), 2e-5, "H \(h) Hkv \(hkv) N \(n)")
        }
    }

    func testKVCacheErrorsAndAccounting() throws {
        XCTAssertEqual(KVCache.bytes(layers: 32, batch: 1, kvHeads: 8, capacity: 131072, headDimension: 128),
                       2 * 32 * 8 * 131072 * 128 * 4)
        var cache = try KVCache(layers: 2, batch: 1, kvHeads: 2, capacity: 5, headDimension: 4)
        XCTAssertEqual(cache.bytes, 2 * 2 * 2 * 5 * 4 * 4)
        let kv = try Tensor.randomNormal([1, 2, 3, 4], seed: 1)
        try cache.append(layer: 1, keys: kv, values: kv)
        XCTAssertEqual(try cache.keys(layer: 1).shape, [1, 2, 3, 4])
        XCTAssertEqual(try cache.keys(layer: 1).scalars, kv.scalars)
        XCTAssertEqual(try cache.keys(layer: 0).shape, [1, 2, 0, 4])
        XCTAssertThrowsError(try cache.append(layer: 1, keys: kv, values: kv)) { e in
            XCTAssertEqual(e as? AttentionError, .cacheFull(capacity: 5, length: 3, appending: 3))
        }
        XCTAssertThrowsError(try cache.append(layer: 2, keys: kv, values: kv))
        XCTAssertThrowsError(try cache.append(layer: 0, keys: try Tensor(zeros: [1, 3, 1, 4]), values: try Tensor(zeros: [1, 3, 1, 4])))
        XCTAssertThrowsError(try cache.append(layer: 0, keys: kv, values: try Tensor(zeros: [1, 2, 2, 4])))
        XCTAssertThrowsError(try KVCache(layers: 0, batch: 1, kvHeads: 1, capacity: 1, headDimension: 1))
        // A view kept across an append keeps its contents (value semantics).
        let before = try cache.keys(layer: 1)
        try cache.append(layer: 1, keys: try Tensor(zeros: [1, 2, 2, 4]), values: try Tensor(zeros: [1, 2, 2, 4]))
        XCTAssertEqual(before.scalars, kv.scalars)
        XCTAssertEqual(try cache.keys(layer: 1).shape, [1, 2, 5, 4])
        // Growing: copy into a larger cache.
        var larger = try KVCache(layers: 2, batch: 1, kvHeads: 2, capacity: 10, headDimension: 4)
        try larger.copy(from: cache)
        XCTAssertEqual(larger.lengths, [0, 5])
        XCTAssertEqual(try larger.values(layer: 1).scalars, try cache.values(layer: 1).scalars)
        cache.reset()
        XCTAssertEqual(cache.lengths, [0, 0])
    }
}
