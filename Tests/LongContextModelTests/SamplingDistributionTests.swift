import AttentionTensor
@testable import LongContextModel
import XCTest

/// Top-k, top-p and min-p sample from the distribution they promise: the softmax of logits / T over
/// the k most likely tokens, then over the smallest prefix whose probability reaches p, or over the
/// tokens of weight at least min-p times the top one's, renormalised.
/// Checked by the frequencies of 50,000 picks (within 5 standard deviations of each token's
/// probability; tokens outside the set never drawn).
final class SamplingDistributionTests: XCTestCase {
    /// The promised distribution, computed here independently of `pick`.
    func expected(_ logits: [Float], _ o: SamplingOptions) -> [Double] {
        let order = logits.indices.sorted { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }
        var kept = o.topK > 0 ? Array(order.prefix(o.topK)) : order
        let m = Double(logits.max()!)
        var w = kept.map { Foundation.exp((Double(logits[$0]) - m) / o.temperature) }
        if o.minP > 0 {
            // Min-p keeps the tokens whose weight is at least minP times the most likely one's.
            let keep = zip(kept, w).filter { $0.1 >= o.minP }
            (kept, w) = (keep.map(\.0), keep.map(\.1))
        }
        var total = w.reduce(0, +)
        if o.topP < 1 {
            var acc = 0.0, n = 0
            while n < w.count, acc < o.topP * total { acc += w[n]; n += 1 }
            kept = Array(kept.prefix(n))
            w = Array(w.prefix(n))
            total = w.reduce(0, +)
        }
        var p = [Double](repeating: 0, count: logits.count)
        for (t, x) in zip(kept, w) { p[t] = x / total }
        return p
    }

    func testTopKAndTopPDistributions() {
        let logits: [Float] = [0.5, 2.0, -1.0, 1.5, 1.0, 0.0, 2.5, -0.5]
        let cases = [
            SamplingOptions(temperature: 1, topK: 3, seed: 1),
            SamplingOptions(temperature: 1, topP: 0.7, seed: 2),
            SamplingOptions(temperature: 0.5, topK: 5, topP: 0.9, seed: 3),
            SamplingOptions(temperature: 2, seed: 4),
            SamplingOptions(temperature: 1, topK: 1, seed: 5),
            SamplingOptions(temperature: 1, minP: 0.3, seed: 6),   // keeps 6, 1, 3 (exp(-1) ≥ 0.3 > exp(-1.5))
        ]
        let n = 50_000
        for o in cases {
            let want = expected(logits, o)
            var counts = [Int](repeating: 0, count: logits.count)
            var rng = SplitMix64(seed: o.seed)
            logits.withUnsafeBufferPointer { l in
                for _ in 0..<n { counts[Int(o.pick(l.baseAddress!, vocab: logits.count, rng: &rng))] += 1 }
            }
            for t in logits.indices {
                let f = Double(counts[t]) / Double(n), sd = (want[t] * (1 - want[t]) / Double(n)).squareRoot()
                if want[t] == 0 {
                    XCTAssertEqual(counts[t], 0, "\(o): token \(t) is outside the kept set")
                } else {
                    XCTAssertEqual(f, want[t], accuracy: 5 * sd + 1e-12, "\(o): token \(t)")
                }
            }
        }
        // The kept sets themselves: top-3 is {6, 1, 3}; top-p 0.7 at T = 1 keeps 6, 1, 3 too
        // (0.40 + 0.24 = 0.64 < 0.7 <= 0.64 + 0.15).
        for o in cases.prefix(2) { XCTAssertEqual(expected(logits, o).indices.filter { expected(logits, o)[$0] > 0 }, [1, 3, 6]) }
    }

    /// The radix-sorted, lazily normalised `pick` chooses exactly the token of the comparison-sort
    /// reference (`pickBySorting`) for the same seed under top-k or top-p, and without them the
    /// token of the eager id-order reference (`pickInIdOrderReference`): random vocabularies of
    /// 49,152 logits with ties, signed zeros and repeated values, under every option.
    func testPickEqualsTheSortingReference() {
        var g = SplitMix64(seed: 77)
        let V = 49_152
        for trial in 0..<24 {
            var logits = (0..<V).map { _ in Float(g.nextUnitOpen() * 30 - 15) }
            // Ties (quantised values), signed zeros, a repeated maximum.
            if trial % 2 == 0 { logits = logits.map { ($0 * 4).rounded() / 4 } }
            for j in stride(from: 0, to: V, by: 97) { logits[j] = j % 2 == 0 ? 0 : -0.0 }
            logits[V - 1] = logits.max()!
            let options = [
                SamplingOptions(temperature: 0.7, seed: UInt64(trial)),
                SamplingOptions(temperature: 1, topK: 40, seed: UInt64(trial)),
                SamplingOptions(temperature: 0.9, topP: 0.95, seed: UInt64(trial)),
                SamplingOptions(temperature: 1.3, topK: 100, topP: 0.5, minP: 0.05, seed: UInt64(trial)),
                SamplingOptions(temperature: 50, minP: 0.3, seed: UInt64(trial)),
                SamplingOptions(temperature: 0.01, seed: UInt64(trial)),
            ]
            logits.withUnsafeBufferPointer { l in
                for o in options {
                    var r1 = SplitMix64(seed: o.seed), r2 = SplitMix64(seed: o.seed)
                    for _ in 0..<4 {
                        // Without top-k and top-p the draw walks the ids in order (no sort).
                        let reference = o.isUnordered ? o.pickInIdOrderReference(l.baseAddress!, vocab: V, rng: &r2)
                                                      : o.pickBySorting(l.baseAddress!, vocab: V, rng: &r2)
                        XCTAssertEqual(o.pick(l.baseAddress!, vocab: V, rng: &r1), reference, "trial \(trial), \(o)")
                    }
                }
            }
        }
        // A temperature below float's range is greedy (the top token's weight would be 0 / 0), on
        // the unordered draw and its reference; one token is always that token.
        let tiny: [Float] = [0.5, 3, -1, 3, 2]
        tiny.withUnsafeBufferPointer { l in
            for o in [SamplingOptions(temperature: 1e-300, seed: 1), SamplingOptions(temperature: 1e-46, minP: 0.5, seed: 2)] {
                var r1 = SplitMix64(seed: o.seed), r2 = SplitMix64(seed: o.seed)
                XCTAssertEqual(o.pick(l.baseAddress!, vocab: tiny.count, rng: &r1), 1, "\(o)")
                XCTAssertEqual(o.pickInIdOrderReference(l.baseAddress!, vocab: tiny.count, rng: &r2), 1, "\(o)")
            }
            var r = SplitMix64(seed: 3)
            XCTAssertEqual(SamplingOptions(temperature: 0.8).pick(l.baseAddress! + 2, vocab: 1, rng: &r), 0)
        }
        // Small vocabularies: orders of distinct, equal and signed-zero logits.
        let small: [[Float]] = [[0, -0.0, 0, 1, 1, -1], [3], [-0.0, 0], [-1e30, 1e30, 2, 2]]
        for l in small {
            l.withUnsafeBufferPointer { b in
                XCTAssertEqual(descendingOrder(b.baseAddress!, count: l.count),
                               l.indices.sorted { l[$0] != l[$1] ? l[$0] > l[$1] : $0 < $1 })
            }
        }
    }
}
