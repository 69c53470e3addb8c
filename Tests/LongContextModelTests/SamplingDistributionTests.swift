import AttentionTensor
@testable import LongContextModel
import XCTest

/// Top-k and top-p sample from the distribution they promise: the softmax of logits / T over the
/// k most likely tokens, then over the smallest prefix whose probability reaches p, renormalised.
/// Checked by the frequencies of 50,000 picks (within 5 standard deviations of each token's
/// probability; tokens outside the set never drawn).
final class SamplingDistributionTests: XCTestCase {
    /// The promised distribution, computed here independently of `pick`.
    func expected(_ logits: [Float], _ o: SamplingOptions) -> [Double] {
        let order = logits.indices.sorted { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }
        var kept = o.topK > 0 ? Array(order.prefix(o.topK)) : order
        let m = Double(logits.max()!)
        var w = kept.map { Foundation.exp((Double(logits[$0]) - m) / o.temperature) }
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
}
