import AttentionTensor
@testable import LongAttention
import XCTest

/// SPEC's causal explicit plan `[H, nb - 1, r]` holds for any number of global blocks g: the rows
/// of the global query blocks are all -1, and random entries come after the g sinks.
final class BigBirdExplicitPlanTests: XCTestCase {
    func testCausalExplicitPlansWithSeveralGlobalBlocks() throws {
        let (N, b, H) = (41, 4, 2)   // nb = 11
        for g in [2, 3] {
            for w in [1, 3] {
                let seeded = try BigBirdPlan(sequenceLength: N, heads: H, blockSize: b, globalBlocks: g, windowBlocks: w,
                                             randomBlocks: 3, seed: 11, causal: true)
                let (shape, values) = try seeded.explicitRandomPlan()
                XCTAssertEqual(shape, [H, 10, 3])
                for h in 0..<H { for i in 1..<g { XCTAssertEqual(values[(h * 10 + i - 1) * 3 ..< (h * 10 + i) * 3].max(), -1) } }
                let read = try BigBirdPlan(sequenceLength: N, heads: H, blockSize: b, globalBlocks: g, windowBlocks: w,
                                           randomPlan: values, planShape: shape, causal: true)
                XCTAssertEqual(read, seeded, "g = \(g), w = \(w)")
            }
        }
        // By hand, g = 2, w = 3: query block i may use 2 ..< i - 1.
        var plan = [Int](repeating: -1, count: 10 * 2)
        plan[9 * 2] = 2; plan[9 * 2 + 1] = 7   // block 10: blocks 2 and 7
        let explicit = try BigBirdPlan(sequenceLength: N, heads: 1, blockSize: b, globalBlocks: 2, randomPlan: plan,
                                       planShape: [1, 10, 2], causal: true)
        XCTAssertEqual(explicit.keyBlocks(head: 0, queryBlock: 10), [0, 1, 2, 7, 9, 10])
        let (q, k, v) = try Reference.inputs(B: 1, H: 1, Hkv: 1, N: N, M: N, d: 8, dv: 8, seed: 4)
        let out = try bigBirdAttention(queries: q, keys: k, values: v, plan: explicit)
        let bias = try BigBirdOracle.bias(N: N, H: 1, b: b, g: 2, w: 3, causal: true, random: explicit.random)
        XCTAssertLessThan(Reference.relError(out, Reference.attention(q: q, k: k, v: v, bias: bias)), 2e-6)
        // A sink as a random block, and an entry in the row of global block 1: refused.
        for (slot, bad, words) in [(9 * 2, 1, "an eligible block"), (0, 0, "global blocks")] {
            var p = plan
            p[slot] = bad
            XCTAssertThrowsError(try BigBirdPlan(sequenceLength: N, heads: 1, blockSize: b, globalBlocks: 2, randomPlan: p,
                                                 planShape: [1, 10, 2], causal: true)) { e in
                guard case .invalidArgument(let name, let value, let expected)? = e as? AttentionError else { return XCTFail("\(e)") }
                XCTAssertEqual(name, "random plan entry at [0, \(slot / 2)]")
                XCTAssertEqual(value, "\(bad)")
                XCTAssertTrue(expected.contains(words), expected)
            }
        }
        // The non-causal layout stays Hugging Face's, g = 1 only.
        XCTAssertThrowsError(try BigBirdPlan(sequenceLength: N, heads: 1, blockSize: b, globalBlocks: 2,
                                             randomPlan: Array(repeating: -1, count: 18), planShape: [1, 9, 2]))
    }
}
