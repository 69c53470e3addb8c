import AttentionTensor
import LongAttention
import XCTest

/// The README's API example, compiled and run as written (between the markers).
final class ReadmeExampleTests: XCTestCase {
    func testReadmeExample() throws {
        // --- README example begins ---
        let q = try Tensor.randomNormal([1, 8, 1024, 64], seed: 1)   // [B, H, N, d]
        let k = try Tensor.randomNormal([1, 2, 1024, 64], seed: 2)   // [B, Hkv, M, d]: 4 query heads per KV head
        let v = try Tensor.randomNormal([1, 2, 1024, 64], seed: 3)   // [B, Hkv, M, dv]

        // Exact attention (tiled or materialised, chosen by size), bottom-right causal.
        let exact = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .causal)

        // BigBird: window + global + random blocks, linear in N.
        let plan = try BigBirdPlan(sequenceLength: 1024, heads: 8, blockSize: 64, randomBlocks: 3, seed: 0)
        let sparse = try bigBirdAttention(queries: q, keys: k, values: v, plan: plan)

        // Linear attention with elu+1 features, causal (chunked): O(N) time and memory.
        let linear = try linearAttention(queries: q, keys: k, values: v, featureMap: .elu, causal: true)

        // Infini-Attention: 256-token segments and a compressive memory per KV head.
        let infini = try InfiniAttention(segmentLength: 256, update: .delta, beta: [Float](repeating: 0, count: 8))
        let streamed = try infini(queries: q, keys: k, values: v)

        // Decoding: RoPE at the token's position, a KV cache, one step.
        let rope = try RotaryEmbedding(dimension: 64, maxPositions: 4096)
        var cache = try KVCache(layers: 1, batch: 1, kvHeads: 2, capacity: 4096, headDimension: 64)
        var qt = try q.rows(0..<1).contiguous(), kt = try k.rows(0..<1).contiguous()
        try rope.apply(to: &qt, positionOffset: 0)
        try rope.apply(to: &kt, positionOffset: 0)
        try cache.append(layer: 0, keys: kt, values: try v.rows(0..<1))
        let next = try decodeAttention(queries: qt, cache: cache, layer: 0)   // [1, 8, 1, 64]

        // Training: a forward that keeps each row's log-sum-exp, then FlashAttention-2's backward.
        let dOut = try Tensor.randomNormal([1, 8, 1024, 64], seed: 4)     // dL/d(output)
        let saved = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: .causal)
        let grads = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: saved,
                                                          outputGradient: dOut, mask: .causal)
        // grads.queries [1, 8, 1024, 64]; grads.keys, grads.values [1, 2, 1024, 64] (summed over each group)
        let linearGrads = try linearAttentionBackward(queries: q, keys: k, values: v, outputGradient: dOut, causal: true)
        let infiniGrads = try infini.backward(queries: q, keys: k, values: v, outputGradient: dOut)   // also dβ
        // --- README example ends ---
        for g in [grads, linearGrads, infiniGrads] {
            XCTAssertEqual(g.queries.shape, [1, 8, 1024, 64])
            XCTAssertEqual(g.keys.shape, [1, 2, 1024, 64])
            XCTAssertEqual(g.values.shape, [1, 2, 1024, 64])
        }
        XCTAssertEqual(infiniGrads.beta?.count, 8)
        XCTAssertTrue(saved.output.scalars.elementsEqual(exact.scalars) { abs($0 - $1) < 1e-5 })
        for t in [exact, sparse, linear, streamed] { XCTAssertEqual(t.shape, [1, 8, 1024, 64]) }
        XCTAssertEqual(next.shape, [1, 8, 1, 64])
        // The first token attends only to itself: its output is its own value row.
        for h in 0..<8 { for x in 0..<64 { XCTAssertEqual(next[0, h, 0, x], v[0, h / 4, 0, x], accuracy: 1e-5) } }
    }
}
