import AttentionTensor
import Foundation
import LongAttention

/// Plain float64 attention, written loop by loop from SPEC.md, the reference every kernel is
/// tested against. Masks: bottom-right causal, a sliding window (query at `p = i + M - N` sees
/// `p - W < j <= p`, transformers' rule), key lengths, additive bias `[B|1, H|1, N, M]`.
enum Reference {
    static func attention(q: Tensor, k: Tensor, v: Tensor, scale: Double? = nil, causal: Bool = false,
                          window: Int? = nil, keyLengths: [Int]? = nil, bias: Tensor? = nil) -> [Double] {
        let (B, H, N, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3])
        let (Hkv, M, dv) = (k.shape[1], k.shape[2], v.shape[3])
        let scale = scale ?? 1 / Double(d).squareRoot()
        let qs = q.scalars, ks = k.scalars, vs = v.scalars
        let bs = bias?.scalars
        let bshape = bias.map { [Int](repeating: 1, count: 4 - $0.rank) + $0.shape }
        var out = [Double](repeating: 0, count: B * H * N * dv)
        for b in 0..<B {
            for h in 0..<H {
                let kh = h / (H / Hkv)
                for i in 0..<N {
                    var scores = [Double](repeating: -.infinity, count: M)
                    for j in 0..<M {
                        if causal && j > i + M - N { continue }
                        if let window, j <= i + M - N - window { continue }
                        if let keyLengths, j >= keyLengths[b] { continue }
                        var s = 0.0
                        for t in 0..<d {
                            s += Double(qs[((b * H + h) * N + i) * d + t]) * Double(ks[((b * Hkv + kh) * M + j) * d + t])
                        }
                        s *= scale
                        if let bs, let bshape {
                            let bb = bshape[0] == 1 ? 0 : b, bh = bshape[1] == 1 ? 0 : h
                            s += Double(bs[((bb * bshape[1] + bh) * N + i) * M + j])
                        }
                        scores[j] = s
                    }
                    let mx = scores.max()!
                    if mx == -.infinity { continue }   // fully masked row: zeros
                    let w = scores.map { Foundation.exp($0 - mx) }
                    let sum = w.reduce(0, +)
                    for j in 0..<M where w[j] > 0 {
                        for t in 0..<dv {
                            out[((b * H + h) * N + i) * dv + t] += w[j] / sum * Double(vs[((b * Hkv + kh) * M + j) * dv + t])
                        }
                    }
                }
            }
        }
        return out
    }

    /// Max |got - expected| over max(1, max |expected|).
    static func relError(_ got: Tensor, _ expected: [Double]) -> Double {
        let g = got.scalars
        precondition(g.count == expected.count, "sizes \(g.count) vs \(expected.count)")
        var err = 0.0, scale = 1.0
        for (x, e) in zip(g, expected) {
            if !x.isFinite { return .infinity }
            err = max(err, abs(Double(x) - e))
            scale = max(scale, abs(e))
        }
        return err / scale
    }

    static func inputs(B: Int, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int, seed: UInt64, std: Float = 1)
        throws -> (Tensor, Tensor, Tensor) {
        (try Tensor.randomNormal([B, H, N, d], seed: seed, std: std),
         try Tensor.randomNormal([B, Hkv, M, d], seed: seed &+ 1, std: std),
         try Tensor.randomNormal([B, Hkv, M, dv], seed: seed &+ 2))
    }
}
