import AttentionTensor
import Foundation
import LongAttention
import XCTest

/// The shared entry scaffold: bias and slope validation, mask combination, overflow bounds,
/// scratch through the memory budget.
final class ScaffoldTests: XCTestCase {
    /// NaN and +Inf in a bias are refused by both exact implementations (and decode's ALiBi path
    /// refuses non-finite slopes); -Inf keeps masking.
    func testBiasAndSlopeValidation() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 2, Hkv: 1, N: 7, M: 9, d: 4, dv: 3, seed: 11)
        for impl in [ExactAttentionImplementation.materialized, .tiled] {
            for bad in [Float.nan, .infinity] {
                var bias = try Tensor(zeros: [2, 7, 9])
                bias[1, 3, 4] = bad
                XCTAssertThrowsError(try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .bias(bias), implementation: impl)) { e in
                    XCTAssertEqual(e as? AttentionError, .invalidBias(index: [1, 3, 4]), "\(impl) \(bad)")
                }
            }
            // -inf masks: row 3 of head 1 loses key 4, exactly as the reference does.
            var bias = try Tensor.randomNormal([2, 7, 9], seed: 3)
            bias[1, 3, 4] = -.infinity
            for j in 0..<9 { bias[0, 5, j] = -.infinity }   // a fully masked row gives zeros
            let out = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: .bias(bias), implementation: impl)
            XCTAssertLessThan(Reference.relError(out, Reference.attention(q: q, k: k, v: v, bias: bias)), 2e-6, "\(impl)")
            XCTAssertTrue((0..<3).allSatisfy { out[0, 0, 5, $0] == 0 })
            for bad in [Float.nan, .infinity, -.infinity] {
                XCTAssertThrowsError(try scaledDotProductAttention(
                    queries: q, keys: k, values: v, mask: .alibi(ALiBi(slopes: [0.5, bad])), implementation: impl)) { e in
                    XCTAssertEqual(e as? AttentionError, .invalidArgument(name: "ALiBi slope 1", value: "\(bad)", expected: "a finite number"))
                }
            }
        }
        let plan = try BigBirdPlan(sequenceLength: 9, heads: 2, blockSize: 3)
        let (q2, k2, v2) = try Reference.inputs(B: 1, H: 2, Hkv: 1, N: 9, M: 9, d: 4, dv: 3, seed: 12)
        XCTAssertThrowsError(try bigBirdAttention(queries: q2, keys: k2, values: v2, plan: plan, alibi: ALiBi(slopes: [.nan, 1])))
    }

    /// Two masks combine without dropping anything: biases add with broadcasting, key lengths take
    /// the minimum, ALiBi slopes add; parts that cannot combine throw.
    func testMaskCombination() throws {
        let (q, k, v) = try Reference.inputs(B: 2, H: 2, Hkv: 2, N: 5, M: 8, d: 4, dv: 4, seed: 21)
        let b1 = try Tensor.randomNormal([5, 8], seed: 1), b2 = try Tensor.randomNormal([2, 5, 8], seed: 2)
        let a1 = ALiBi(slopes: [0.25, 0.5]), a2 = ALiBi(slopes: [0.125, 1])
        let first = AttentionMask(isCausal: true, keyLengths: [8, 6], bias: b1, alibi: a1)
        let second = AttentionMask(keyLengths: [7, 8], bias: b2, alibi: a2)
        let both = try first.combined(with: second)
        XCTAssertTrue(both.isCausal)
        XCTAssertEqual(both.keyLengths, [7, 6])
        XCTAssertEqual(both.alibi?.slopes, [0.375, 1.5])
        XCTAssertEqual(both.bias?.shape, [2, 5, 8])
        // The combined bias is b1 + b2 + the summed ALiBi penalties: compare with a reference that
        // gets all of it as one explicit bias.
        var total = try Tensor(zeros: [2, 5, 8])
        for h in 0..<2 { for i in 0..<5 { for j in 0..<8 {
            total[h, i, j] = b1[i, j] + b2[h, i, j] - [0.375, 1.5][h] * Float(abs(i + 8 - 5 - j))
        } } }
        let expected = Reference.attention(q: q, k: k, v: v, causal: true, keyLengths: [7, 6], bias: total)
        for impl in [ExactAttentionImplementation.materialized, .tiled] {
            let out = try scaledDotProductAttention(queries: q, keys: k, values: v, mask: both, implementation: impl)
            XCTAssertLessThan(Reference.relError(out, expected), 2e-6, "\(impl)")
        }
        // Combining with an empty mask changes nothing; -inf survives the sum.
        var masking = try Tensor(zeros: [5, 8])
        masking[2, 3] = -.infinity
        let sum = try AttentionMask.bias(masking).combined(with: .bias(b1)).bias!
        XCTAssertEqual(sum[2, 3], -.infinity)
        XCTAssertEqual(sum[1, 1], b1[1, 1])
        XCTAssertEqual(try AttentionMask.none.combined(with: first).keyLengths, [8, 6])
        XCTAssertThrowsError(try AttentionMask.keyLengths([1, 2]).combined(with: .keyLengths([1])))
        XCTAssertThrowsError(try AttentionMask.alibi(a1).combined(with: .alibi(ALiBi(slopes: [1]))))
        XCTAssertThrowsError(try AttentionMask.bias(b1).combined(with: .bias(try Tensor(zeros: [5, 7]))))
        XCTAssertThrowsError(try AttentionMask.bias(b2).combined(with: .bias(try Tensor(zeros: [3, 5, 8]))))
    }

    /// Finite inputs whose float32 scores would overflow (q = k = 1e19) are refused with a clear
    /// error by every variant, instead of returning NaN; large but safe logits still compute.
    func testScoresThatWouldOverflowAreRefused() throws {
        let q = try Tensor(shape: [1, 2, 4, 8], scalars: Array(repeating: 1e19, count: 64))
        let k = try Tensor(shape: [1, 1, 4, 8], scalars: Array(repeating: 1e19, count: 32))
        let v = try Tensor.randomNormal([1, 1, 4, 8], seed: 1)
        func refused(_ name: String, _ call: () throws -> Tensor) {
            XCTAssertThrowsError(try call(), name) { e in
                guard case .overflow(_, let bound, let limit)? = e as? AttentionError else { return XCTFail("\(name): \(e)") }
                XCTAssertEqual(limit, 0x1p124, name)
                XCTAssertGreaterThan(bound, limit, name)
            }
        }
        refused("materialized") { try scaledDotProductAttention(queries: q, keys: k, values: v, implementation: .materialized) }
        refused("tiled") { try scaledDotProductAttention(queries: q, keys: k, values: v, implementation: .tiled) }
        refused("bigbird") { try bigBirdAttention(queries: q, keys: k, values: v, plan: try BigBirdPlan(sequenceLength: 4, heads: 2, blockSize: 2)) }
        refused("linear") { try linearAttention(queries: q, keys: k, values: v) }
        refused("infini") { try InfiniAttention(segmentLength: 2, beta: [0, 0])(queries: q, keys: k, values: v) }
        var cache = try KVCache(layers: 1, batch: 1, kvHeads: 1, capacity: 8, headDimension: 8)
        try cache.append(layer: 0, keys: k, values: v)
        refused("decode") { try decodeAttention(queries: try q.rows(3..<4), cache: cache, layer: 0) }
        // Values whose online-softmax accumulation could overflow.
        let bigV = try Tensor(shape: [1, 1, 4, 8], scalars: Array(repeating: 1e37, count: 32))
        refused("values") { try scaledDotProductAttention(queries: v, keys: v, values: bigV, implementation: .tiled) }
        // Logits of ±1e4 are far from the bound and stay exact.
        let (q2, k2, v2) = try Reference.inputs(B: 1, H: 1, Hkv: 1, N: 9, M: 9, d: 4, dv: 4, seed: 5, std: 100)
        let out = try scaledDotProductAttention(queries: q2, keys: k2, values: v2, implementation: .tiled)
        XCTAssertLessThan(Reference.relError(out, Reference.attention(q: q2, k: k2, v: v2)), 1e-5)
    }

    /// Every allocation that grows with a user-controlled size goes through the memory budget and
    /// is refused with a typed error before anything is allocated.
    func testScratchGoesThroughTheMemoryBudget() throws {
        let saved = MemoryBudget.limitBytes
        defer { MemoryBudget.limitBytes = saved }
        MemoryBudget.limitBytes = 512 << 20
        func tooLarge(_ name: String, _ call: () throws -> Void) {
            XCTAssertThrowsError(try call(), name) { e in
                guard case .tooLarge(_, let bytes?, let limit?)? = e as? AttentionError else { return XCTFail("\(name): \(e)") }
                XCTAssertGreaterThan(bytes, limit, name)
                XCTAssertTrue("\(e)".contains("budget"), "\(e)")
            }
        }
        // BigBird at N = 1M with b = 4096, w = 31: gigabytes of scores per worker.
        let n = 1 << 20
        let q = try Tensor(zeros: [1, 1, n, 1]), k = try Tensor(zeros: [1, 1, n, 1])
        let plan = try BigBirdPlan(sequenceLength: n, heads: 1, blockSize: 4096, windowBlocks: 31, seed: 1)
        tooLarge("bigbird") { _ = try bigBirdAttention(queries: q, keys: k, values: k, plan: plan) }
        // Exact attention with user-set blocks: a query block of 1M rows and a 1M-key tile.
        let (q2, k2, v2) = try Reference.inputs(B: 1, H: 2, Hkv: 1, N: 64, M: 64, d: 8, dv: 8, seed: 3)
        let shape = AttentionShape(B: 1, H: 2, Hkv: 1, N: 64, M: 64, d: 8, dv: 8)
        for impl in [ExactAttentionImplementation.materialized, .tiled] {
            let huge = ExactAttentionPlan(shape: shape, implementation: impl, queryBlock: 1 << 24)
            tooLarge("exact \(impl)") { _ = try exactAttention(queries: q2, keys: k2, values: v2, plan: huge) }
        }
        // Split-KV partial results: a billion splits.
        let splits = ExactAttentionPlan(shape: shape, implementation: .tiled, keySplits: 1 << 30)
        tooLarge("key splits") { _ = try exactAttention(queries: q2, keys: k2, values: v2, plan: splits) }
        // Linear attention with a causal chunk of 4M rows (its intra-chunk scores are chunk²).
        tooLarge("linear chunk") { _ = try linearAttention(queries: q2, keys: k2, values: v2, causal: true, chunkSize: 1 << 22) }
        let wide = LinearAttentionPlan(shape: shape, stateChunk: 1 << 30)
        tooLarge("linear state chunk") { _ = try linearAttention(queries: q2, keys: k2, values: v2, plan: wide) }
        // Within the budget the same calls run.
        XCTAssertNoThrow(try exactAttention(queries: q2, keys: k2, values: v2, plan: ExactAttentionPlan(shape: shape, queryBlock: 4096)))
    }

    /// The causal explicit plan layout `[H, nb - 1, r]` with -1 for unused slots: seeded plans
    /// export to it and read back identically, the last query block gets its random blocks, and
    /// entries that are not eligible are refused.
    func testCausalExplicitPlans() throws {
        let (N, b, H) = (41, 4, 3)   // nb = 11
        for w in [1, 3, 5] {
            let seeded = try BigBirdPlan(sequenceLength: N, heads: H, blockSize: b, windowBlocks: w, randomBlocks: 3, seed: 7, causal: true)
            let (shape, values) = try seeded.explicitRandomPlan()
            XCTAssertEqual(shape, [H, 10, 3])
            XCTAssertTrue(values.contains(-1), "early blocks have fewer than r eligible blocks")
            let read = try BigBirdPlan(sequenceLength: N, heads: H, blockSize: b, windowBlocks: w, randomPlan: values,
                                       planShape: shape, causal: true)
            XCTAssertEqual(read, seeded)
            XCTAssertFalse(read.random[0][10].isEmpty, "the last query block has random blocks")
        }
        // A hand-written plan for nb = 11, w = 3: query block i may use 1 ..< i - 1.
        var plan = [Int](repeating: -1, count: 10 * 2)
        plan[9 * 2] = 3; plan[9 * 2 + 1] = 8   // block 10: blocks 3 and 8
        plan[4 * 2] = 2                        // block 5: block 2
        let explicit = try BigBirdPlan(sequenceLength: N, heads: 1, blockSize: b, randomPlan: plan, planShape: [1, 10, 2], causal: true)
        XCTAssertEqual(explicit.random[0][10], [3, 8])
        XCTAssertEqual(explicit.random[0][5], [2])
        XCTAssertEqual(explicit.keyBlocks(head: 0, queryBlock: 10), [0, 3, 8, 9, 10])
        // Its output equals dense attention under the SPEC oracle's mask.
        let (q, k, v) = try Reference.inputs(B: 1, H: 1, Hkv: 1, N: N, M: N, d: 8, dv: 8, seed: 9)
        let out = try bigBirdAttention(queries: q, keys: k, values: v, plan: explicit)
        let bias = try BigBirdOracle.bias(N: N, H: 1, b: b, g: 1, w: 3, causal: true, random: explicit.random)
        XCTAssertLessThan(Reference.relError(out, Reference.attention(q: q, k: k, v: v, bias: bias)), 2e-6)
        // Ineligible entries: the sink, a window block, the diagonal, a later block, out of range, -2.
        for (slot, bad) in [(9 * 2, 0), (9 * 2, 9), (9 * 2, 10), (4 * 2, 7), (4 * 2, 11), (4 * 2, -2), (0, 0)] {
            var p = plan
            p[slot] = bad
            XCTAssertThrowsError(try BigBirdPlan(sequenceLength: N, heads: 1, blockSize: b, randomPlan: p, planShape: [1, 10, 2], causal: true),
                                 "entry \(bad) in slot \(slot)") { e in
                guard case .invalidArgument(let name, let value, let expected)? = e as? AttentionError else { return XCTFail("\(e)") }
                XCTAssertTrue(name.hasPrefix("random plan entry at [0, "), name)
                XCTAssertEqual(value, "\(bad)")
                XCTAssertTrue(expected.contains("an eligible block"), expected)
            }
        }
        // The non-causal layout [H, nb - 2, r] is refused for a causal plan, and vice versa.
        XCTAssertThrowsError(try BigBirdPlan(sequenceLength: N, heads: 1, blockSize: b, randomPlan: Array(repeating: -1, count: 18),
                                             planShape: [1, 9, 2], causal: true))
        XCTAssertThrowsError(try BigBirdPlan(sequenceLength: N, heads: 1, blockSize: b, randomPlan: plan, planShape: [1, 10, 2]))
        // Non-causal seeded plans round-trip through Hugging Face's layout too.
        let hf = try BigBirdPlan(sequenceLength: N, heads: H, blockSize: b, randomBlocks: 2, seed: 3)
        let (hs, hv) = try hf.explicitRandomPlan()
        XCTAssertEqual(hs, [H, 9, 2])
        XCTAssertEqual(try BigBirdPlan(sequenceLength: N, heads: H, blockSize: b, randomPlan: hv, planShape: hs), hf)
    }

    /// BigBird against an independent mask oracle written from SPEC.md (not the plan's own
    /// `attends`), non-causal and causal, g ∈ {1, 2}, w ∈ {1, 3, 5}; the random blocks are the
    /// plan's, checked against SPEC's rules for them.
    func testBigBirdAgainstTheSpecOracle() throws {
        var cases = 0
        for (n, b) in [(61, 4), (50, 5), (33, 8)] {
            for g in [1, 2] { for w in [1, 3, 5] { for causal in [false, true] {
                cases += 1
                let r = cases % 4
                let hkv = [3, 1][cases % 2]
                let plan = try BigBirdPlan(sequenceLength: n, heads: 3, blockSize: b, globalBlocks: g, windowBlocks: w,
                                           randomBlocks: r, seed: UInt64(cases), causal: causal)
                try BigBirdOracle.checkRandomBlocks(plan.random, nb: plan.blockCount, g: g, w: w, r: r, causal: causal)
                let bias = try BigBirdOracle.bias(N: n, H: 3, b: b, g: g, w: w, causal: causal, random: plan.random)
                let (q, k, v) = try Reference.inputs(B: 1, H: 3, Hkv: hkv, N: n, M: n, d: 8, dv: 5, seed: UInt64(cases))
                let out = try bigBirdAttention(queries: q, keys: k, values: v, plan: plan)
                XCTAssertLessThan(Reference.relError(out, Reference.attention(q: q, k: k, v: v, bias: bias)), 2e-6,
                                  "N \(n) b \(b) g \(g) w \(w) r \(r) causal \(causal)")
            } } }
        }
        XCTAssertEqual(cases, 36)
    }

    /// The non-causal linear paths with more than one state chunk (M > the chunk) agree with one
    /// chunk and with float64, for every feature map.
    func testLinearNonCausalAcrossStateChunks() throws {
        let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: 2, N: 33, M: 45, d: 8, dv: 6, seed: 31)
        let shape = AttentionShape(B: 1, H: 4, Hkv: 2, N: 33, M: 45, d: 8, dv: 6)
        for map in [LinearFeatureMap.elu, .relu, .softmax, .favor(features: 16, seed: 2)] {
            let one = try linearAttention(queries: q, keys: k, values: v, plan: LinearAttentionPlan(shape: shape, featureMap: map))
            for chunk in [1, 7, 44] {
                let many = try linearAttention(queries: q, keys: k, values: v,
                                               plan: LinearAttentionPlan(shape: shape, featureMap: map, stateChunk: chunk))
                XCTAssertLessThan(Reference.relError(many, one.scalars.map(Double.init)), 2e-6, "\(map.name) chunk \(chunk)")
            }
            switch map {
            case .elu, .relu:
                let expected = LinearAttentionTests.quadratic(q, k, v, map: map == .elu ? .elu : .relu, causal: false)
                XCTAssertLessThan(Reference.relError(one, expected), 2e-5, map.name)
            default: break
            }
        }
    }
}

/// BigBird's element mask as SPEC.md states it, written without BigBirdPlan's helpers.
enum BigBirdOracle {
    /// `[H, N, N]` bias: 0 where query p attends key q, -inf elsewhere.
    static func bias(N: Int, H: Int, b: Int, g: Int, w: Int, causal: Bool, random: [[[Int]]]) throws -> Tensor {
        let nb = (N + b - 1) / b
        var values = [Float](repeating: -.infinity, count: H * N * N)
        for h in 0..<H { for p in 0..<N { for q in 0..<N {
            let i = p / b, j = q / b
            var attends: Bool
            if causal {
                // Sinks: the first g query blocks see every earlier key; every query sees the first g blocks.
                if i < g { attends = true }
                else { attends = j < g || (j >= i - w / 2 && j <= i) || random[h][i].contains(j) }
                attends = attends && q <= p
            } else if i < g || i >= nb - g {
                attends = true
            } else {
                attends = j < g || j >= nb - g || abs(j - i) <= w / 2 || random[h][i].contains(j)
            }
            if attends { values[(h * N + p) * N + q] = 0 }
        } } }
        return try Tensor(shape: [H, N, N], scalars: values)
    }

    /// SPEC's rules for the random blocks: none for global rows; otherwise r drawn without
    /// replacement (fewer only when fewer candidates exist) from the blocks not already listed,
    /// strictly earlier ones when causal.
    static func checkRandomBlocks(_ random: [[[Int]]], nb: Int, g: Int, w: Int, r: Int, causal: Bool) throws {
        for rows in random {
            for i in 0..<nb {
                let global = causal ? i < g : (i < g || i >= nb - g)
                if global { XCTAssertTrue(rows[i].isEmpty); continue }
                var listed = Set(0..<min(g, nb))
                if !causal { listed.formUnion(max(0, nb - g)..<nb) }
                for j in max(0, i - w / 2)...(causal ? i : min(nb - 1, i + w / 2)) { listed.insert(j) }
                let candidates = (0..<(causal ? i : nb)).filter { !listed.contains($0) }
                XCTAssertEqual(Set(rows[i]).count, rows[i].count, "duplicates")
                XCTAssertTrue(Set(rows[i]).isSubset(of: Set(candidates)), "row \(i): \(rows[i]) outside \(candidates)")
                XCTAssertEqual(rows[i].count, min(r, candidates.count), "row \(i)")
            }
        }
    }
}
