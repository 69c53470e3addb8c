import AttentionTensor
import Foundation
@testable import LongAttention
import XCTest

/// ``ExactAttentionPlan/decoding(shape:threads:)``: the split rule, and decoding through split keys
/// against float64 attention, bitwise the same on 1 and 2 threads.
final class DecodingPlanTests: XCTestCase {
    func testTheSplitRule() {
        func plan(Hkv: Int, H: Int, N: Int = 1, M: Int) -> ExactAttentionPlan {
            .decoding(shape: AttentionShape(B: 1, H: H, Hkv: Hkv, N: N, M: M, d: 64, dv: 64), threads: 2)
        }
        // SmolLM2 (Hkv 3): 3 blocks, split into 3 ranges each once there are 3 tiles of keys.
        XCTAssertEqual(plan(Hkv: 3, H: 9, M: 1000).keySplits, 3)
        XCTAssertEqual(plan(Hkv: 3, H: 9, M: 1000).keyTile, 128)
        XCTAssertEqual(plan(Hkv: 3, H: 9, M: 300).keySplits, 2)
        // Gemma 3 (Hkv 1): one block, 8 ranges from 8 tiles on.
        XCTAssertEqual(plan(Hkv: 1, H: 4, M: 2000).keySplits, 8)
        XCTAssertEqual(plan(Hkv: 1, H: 4, M: 600).keySplits, 4)
        // Fewer keys than a tile: one tile of M keys, no split; 8 blocks or more: no split.
        XCTAssertEqual(plan(Hkv: 1, H: 4, M: 7).keyTile, 7)
        XCTAssertEqual(plan(Hkv: 1, H: 4, M: 7).keySplits, 1)
        XCTAssertEqual(plan(Hkv: 8, H: 32, M: 5000).keySplits, 1)
        // The shape alone decides: 1 and 2 threads plan the same blocks.
        let one = ExactAttentionPlan.decoding(shape: AttentionShape(B: 1, H: 4, Hkv: 1, N: 1, M: 999, d: 64, dv: 64), threads: 1)
        XCTAssertEqual(one.keySplits, plan(Hkv: 1, H: 4, M: 999).keySplits)
        XCTAssertEqual(one.keyTile, plan(Hkv: 1, H: 4, M: 999).keyTile)
    }

    /// Key counts that are not multiples of the tile or of the split (385, 1000, 1031; 129 unsplit),
    /// groups of 1, 3 and 4, one and two query rows: against float64, and 1 vs 2 threads bitwise.
    func testSplitDecodingAgainstFloat64() throws {
        for (H, Hkv) in [(3, 3), (9, 3), (4, 1)] {
            for M in [129, 385, 1000, 1031] {
                for n in [1, 2] {
                    let d = 64
                    let (q, k, v) = try Reference.inputs(B: 1, H: H, Hkv: Hkv, N: n, M: M, d: d, dv: d, seed: UInt64(M * 7 + H + n))
                    var cache = try KVCache(layers: 1, batch: 1, kvHeads: Hkv, capacity: M, headDimension: d)
                    try cache.append(layer: 0, keys: k, values: v)
                    let plan = ExactAttentionPlan.decoding(shape: AttentionShape(B: 1, H: H, Hkv: Hkv, N: n, M: M, d: d, dv: d),
                                                           threads: 2)
                    // 129 keys are two tiles, too few to split: the unsplit control.
                    XCTAssertEqual(plan.keySplits > 1, M > 256, "H \(H) Hkv \(Hkv) M \(M): keys split")
                    let one = try decodeAttention(queries: q, cache: cache, layer: 0, threads: 1)
                    let two = try decodeAttention(queries: q, cache: cache, layer: 0, threads: 2)
                    XCTAssertEqual(one.scalars.map(\.bitPattern), two.scalars.map(\.bitPattern), "H \(H) Hkv \(Hkv) M \(M) n \(n)")
                    let ref = Reference.attention(q: q, k: k, v: v, causal: true)
                    XCTAssertLessThan(Reference.relError(two, ref), 2e-6, "H \(H) Hkv \(Hkv) M \(M) n \(n)")
                    // The log-sum-exp path (a sharded cache's partial result) takes the same plan.
                    let lse = try decodeAttentionKeepingLSE(queries: q, cache: cache, layer: 0, threads: 2)
                    XCTAssertEqual(lse.output.scalars.map(\.bitPattern), two.scalars.map(\.bitPattern), "H \(H) Hkv \(Hkv) M \(M) n \(n): LSE")
                }
            }
        }
    }
}
