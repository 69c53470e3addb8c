import Foundation
import XCTest

/// Float64 reference forwards and gradients for the backward passes, written loop by loop from
/// SPEC.md on plain row-major `[Double]` arrays (no library types):
/// q `[B, H, N, d]`, k `[B, Hkv, M, d]`, v `[B, Hkv, M, dv]`, out `[B, H, N, dv]`; query head `h`
/// reads KV head `h / (H / Hkv)`. Gradients are those of `L = Σ out ⊙ dout`.
enum GradientReference {
    struct RefShape: Sendable, Equatable {
        var B: Int, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int

        init(B: Int, H: Int, Hkv: Int, N: Int, M: Int, d: Int, dv: Int) {
            precondition(B >= 1 && H >= 1 && Hkv >= 1 && H % Hkv == 0 && N >= 1 && M >= 1 && d >= 1 && dv >= 1,
                         "bad shape")
            (self.B, self.H, self.Hkv, self.N, self.M, self.d, self.dv) = (B, H, Hkv, N, M, d, dv)
        }

        var qCount: Int { B * H * N * d }
        var kCount: Int { B * Hkv * M * d }
        var vCount: Int { B * Hkv * M * dv }
        var outCount: Int { B * H * N * dv }
        /// Query heads per KV head.
        var group: Int { H / Hkv }

        func q(_ b: Int, _ h: Int, _ i: Int) -> Int { ((b * H + h) * N + i) * d }
        func k(_ b: Int, _ kh: Int, _ j: Int) -> Int { ((b * Hkv + kh) * M + j) * d }
        func v(_ b: Int, _ kh: Int, _ j: Int) -> Int { ((b * Hkv + kh) * M + j) * dv }
        func out(_ b: Int, _ h: Int, _ i: Int) -> Int { ((b * H + h) * N + i) * dv }
    }

    enum FeatureMap: Sendable { case elu, relu, softmax }

    // MARK: - Exact (softmax) attention

    /// `O = softmax(scale·QKᵀ + mask + bias) V` per (batch, head). Masks: bottom-right causal
    /// (`j <= i + M - N`), key lengths (`j < keyLengths[b]`), an additive bias `[B, H, N, M]`
    /// (-inf allowed) and ALiBi (`-slope_h·|i + M - N - j|`, one slope per query head).
    /// A row whose keys are all masked outputs zeros.
    static func exact(q: [Double], k: [Double], v: [Double], shape s: RefShape, scale: Double,
                      causal: Bool = false, window: Int? = nil, keyLengths: [Int]? = nil, bias: [Double]? = nil,
                      alibiSlopes: [Double]? = nil) -> [Double] {
        let mask = ExactMask(scale: scale, causal: causal, window: window, keyLengths: keyLengths, bias: bias,
                             alibiSlopes: alibiSlopes)
        checkInputs(q, k, v, s, mask)
        var out = [Double](repeating: 0, count: s.outCount)
        for b in 0..<s.B { for h in 0..<s.H {
            let kh = h / s.group
            for i in 0..<s.N {
                let p = softmax(scoreRow(q, k, s, mask, b: b, h: h, i: i))
                for j in 0..<s.M where p[j] != 0 {
                    for t in 0..<s.dv { out[s.out(b, h, i) + t] += p[j] * v[s.v(b, kh, j) + t] }
                }
            }
        } }
        return out
    }

    /// Analytic vector-Jacobian product of `exact`. Per row, with P the softmax row:
    /// `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ∘ (dP − rowsum(dO ∘ O))`, `dQ = scale·dS K`,
    /// `dK += scale·dSᵀ Q`. Masked pairs have P = 0 and so contribute nothing; a KV head's dk/dv
    /// sum over its query heads.
    static func exactVJP(q: [Double], k: [Double], v: [Double], shape s: RefShape, scale: Double,
                         causal: Bool = false, window: Int? = nil, keyLengths: [Int]? = nil, bias: [Double]? = nil,
                         alibiSlopes: [Double]? = nil,
                         dout: [Double]) -> (dq: [Double], dk: [Double], dv: [Double]) {
        let mask = ExactMask(scale: scale, causal: causal, window: window, keyLengths: keyLengths, bias: bias,
                             alibiSlopes: alibiSlopes)
        checkInputs(q, k, v, s, mask)
        precondition(dout.count == s.outCount, "dout has \(dout.count) values, expected \(s.outCount)")
        var dq = [Double](repeating: 0, count: s.qCount)
        var dk = [Double](repeating: 0, count: s.kCount)
        var dv = [Double](repeating: 0, count: s.vCount)
        for b in 0..<s.B { for h in 0..<s.H {
            let kh = h / s.group
            for i in 0..<s.N {
                let p = softmax(scoreRow(q, k, s, mask, b: b, h: h, i: i))
                let qi = s.q(b, h, i), oi = s.out(b, h, i)
                // O_i, then D_i = dO_i · O_i.
                var o = [Double](repeating: 0, count: s.dv)
                for j in 0..<s.M where p[j] != 0 {
                    for t in 0..<s.dv { o[t] += p[j] * v[s.v(b, kh, j) + t] }
                }
                var D = 0.0
                for t in 0..<s.dv { D += dout[oi + t] * o[t] }
                for j in 0..<s.M where p[j] != 0 {
                    let kj = s.k(b, kh, j), vj = s.v(b, kh, j)
                    var dP = 0.0
                    for t in 0..<s.dv {
                        dP += dout[oi + t] * v[vj + t]
                        dv[vj + t] += p[j] * dout[oi + t]
                    }
                    let dS = p[j] * (dP - D)
                    for a in 0..<s.d {
                        dq[qi + a] += scale * dS * k[kj + a]
                        dk[kj + a] += scale * dS * q[qi + a]
                    }
                }
            }
        } }
        return (dq, dk, dv)
    }

    private struct ExactMask {
        var scale: Double, causal: Bool, window: Int?, keyLengths: [Int]?, bias: [Double]?, alibiSlopes: [Double]?
    }

    private static func checkInputs(_ q: [Double], _ k: [Double], _ v: [Double], _ s: RefShape, _ mask: ExactMask) {
        checkQKV(q, k, v, s)
        if let keyLengths = mask.keyLengths { precondition(keyLengths.count == s.B, "one key length per batch") }
        if let bias = mask.bias { precondition(bias.count == s.B * s.H * s.N * s.M, "bias must be [B, H, N, M]") }
        if let slopes = mask.alibiSlopes { precondition(slopes.count == s.H, "one ALiBi slope per query head") }
    }

    private static func checkQKV(_ q: [Double], _ k: [Double], _ v: [Double], _ s: RefShape) {
        precondition(q.count == s.qCount, "q has \(q.count) values, expected \(s.qCount)")
        precondition(k.count == s.kCount, "k has \(k.count) values, expected \(s.kCount)")
        precondition(v.count == s.vCount, "v has \(v.count) values, expected \(s.vCount)")
    }

    /// Scores of query row (b, h, i) against every key, -inf where masked.
    private static func scoreRow(_ q: [Double], _ k: [Double], _ s: RefShape, _ mask: ExactMask,
                                 b: Int, h: Int, i: Int) -> [Double] {
        let kh = h / s.group
        var scores = [Double](repeating: -.infinity, count: s.M)
        for j in 0..<s.M {
            if mask.causal && j > i + s.M - s.N { continue }
            // Sliding window W (transformers): the query at p = i + M - N sees p - W < j <= p.
            if let w = mask.window, j <= i + s.M - s.N - w { continue }
            if let keyLengths = mask.keyLengths, j >= keyLengths[b] { continue }
            var x = 0.0
            for a in 0..<s.d { x += q[s.q(b, h, i) + a] * k[s.k(b, kh, j) + a] }
            x *= mask.scale
            if let bias = mask.bias { x += bias[((b * s.H + h) * s.N + i) * s.M + j] }
            if let slopes = mask.alibiSlopes { x -= slopes[h] * Double(abs(i + s.M - s.N - j)) }
            scores[j] = x
        }
        return scores
    }

    /// Softmax of a row; all zeros when every entry is -inf (a fully masked row).
    private static func softmax(_ x: [Double]) -> [Double] {
        let mx = x.max() ?? -.infinity
        if mx == -.infinity { return [Double](repeating: 0, count: x.count) }
        let e = x.map { Foundation.exp($0 - mx) }
        let sum = e.reduce(0, +)
        return e.map { $0 / sum }
    }

    // MARK: - Linear attention

    /// `elu`/`relu`: `O_i = φ(q_i)ᵀ S / (φ(q_i)·z + ε)` with `S = Σ_j φ(k_j) v_jᵀ`, `z = Σ_j φ(k_j)`,
    /// the sums over `j <= i + M - N` when causal; φ(x) = elu(x) + 1 or relu(x). No scale.
    /// `softmax` (Efficient Attention, non-causal only): `O = ρq(Q) (ρk(K)ᵀ V)`, ρq a softmax
    /// over each query's d features, ρk a softmax over the M positions of each feature; no ε.
    static func linear(q: [Double], k: [Double], v: [Double], shape s: RefShape, map: FeatureMap,
                       causal: Bool = false, eps: Double = 1e-6) -> [Double] {
        checkQKV(q, k, v, s)
        var out = [Double](repeating: 0, count: s.outCount)
        for b in 0..<s.B { for h in 0..<s.H {
            let kh = h / s.group
            switch map {
            case .softmax:
                precondition(!causal, "Efficient Attention (softmax map) is non-causal only")
                // context[a, t] = Σ_j ρk(K)[j, a] v[j, t]
                var context = [Double](repeating: 0, count: s.d * s.dv)
                for a in 0..<s.d {
                    let rho = softmax((0..<s.M).map { k[s.k(b, kh, $0) + a] })
                    for j in 0..<s.M { for t in 0..<s.dv { context[a * s.dv + t] += rho[j] * v[s.v(b, kh, j) + t] } }
                }
                for i in 0..<s.N {
                    let rho = softmax((0..<s.d).map { q[s.q(b, h, i) + $0] })
                    for t in 0..<s.dv {
                        var o = 0.0
                        for a in 0..<s.d { o += rho[a] * context[a * s.dv + t] }
                        out[s.out(b, h, i) + t] = o
                    }
                }
            case .elu, .relu:
                // S and z grow key by key as the causal limit i + M - N moves forward (all keys at
                // once when non-causal).
                var S = [Double](repeating: 0, count: s.d * s.dv), z = [Double](repeating: 0, count: s.d)
                var next = 0
                for i in 0..<s.N {
                    let last = causal ? min(i + s.M - s.N, s.M - 1) : s.M - 1
                    while next <= last {
                        for a in 0..<s.d {
                            let f = phi(k[s.k(b, kh, next) + a], map)
                            z[a] += f
                            for t in 0..<s.dv { S[a * s.dv + t] += f * v[s.v(b, kh, next) + t] }
                        }
                        next += 1
                    }
                    let fq = (0..<s.d).map { phi(q[s.q(b, h, i) + $0], map) }
                    var den = 0.0
                    for a in 0..<s.d { den += fq[a] * z[a] }
                    for t in 0..<s.dv {
                        var num = 0.0
                        for a in 0..<s.d { num += fq[a] * S[a * s.dv + t] }
                        out[s.out(b, h, i) + t] = num / (den + eps)
                    }
                }
            }
        } }
        return out
    }

    private static func phi(_ x: Double, _ map: FeatureMap) -> Double {
        switch map {
        case .elu: sigma(x)
        case .relu: max(x, 0)
        case .softmax: preconditionFailure("softmax is not an elementwise feature map")
        }
    }

    /// σ(x) = elu(x) + 1.
    private static func sigma(_ x: Double) -> Double { x > 0 ? x + 1 : Foundation.exp(x) }

    // MARK: - Infini-Attention

    /// Segments of `segment` tokens (the last may be shorter), in order; per (batch, KV head) a
    /// memory `Mem [d, dv]` and `z [d]`, zero at the start. Per segment:
    /// `A_dot` = causal softmax attention within the segment (scale 1/sqrt(d));
    /// `A_mem = σ(Q) Mem / (σ(Q) z)` with the memory before this segment, zero while z = 0;
    /// `A = sigmoid(β_h) A_mem + (1 − sigmoid(β_h)) A_dot`;
    /// then `Mem += σ(K)ᵀ V` (linear) or `Mem += σ(K)ᵀ (V − σ(K) Mem / (σ(K) z))` (delta, the
    /// subtracted term only where its denominator is > 0), and `z += Σ_t σ(K_t)`.
    static func infini(q: [Double], k: [Double], v: [Double], shape s: RefShape, segment S: Int,
                       delta: Bool, beta: [Double]) -> [Double] {
        checkQKV(q, k, v, s)
        precondition(s.N == s.M, "Infini-Attention needs N == M")
        precondition(S >= 1, "segment must be positive")
        precondition(beta.count == s.H, "one β per query head")
        let scale = 1 / Double(s.d).squareRoot()
        var out = [Double](repeating: 0, count: s.outCount)
        for b in 0..<s.B { for kh in 0..<s.Hkv {
            var mem = [Double](repeating: 0, count: s.d * s.dv), z = [Double](repeating: 0, count: s.d)
            var start = 0
            while start < s.N {
                let end = min(s.N, start + S)
                for g in 0..<s.group {
                    let h = kh * s.group + g
                    let gate = 1 / (1 + Foundation.exp(-beta[h]))
                    for i in start..<end {
                        let qi = s.q(b, h, i)
                        // A_dot: keys start...i of this segment.
                        var scores = [Double](repeating: -.infinity, count: s.M)
                        for j in start...i {
                            var x = 0.0
                            for a in 0..<s.d { x += q[qi + a] * k[s.k(b, kh, j) + a] }
                            scores[j] = scale * x
                        }
                        let p = softmax(scores)
                        // A_mem's denominator σ(q_i)·z.
                        let sq = (0..<s.d).map { sigma(q[qi + $0]) }
                        var den = 0.0
                        for a in 0..<s.d { den += sq[a] * z[a] }
                        for t in 0..<s.dv {
                            var dot = 0.0
                            for j in start...i { dot += p[j] * v[s.v(b, kh, j) + t] }
                            var num = 0.0
                            for a in 0..<s.d { num += sq[a] * mem[a * s.dv + t] }
                            let memRead = den > 0 ? num / den : 0
                            out[s.out(b, h, i) + t] = gate * memRead + (1 - gate) * dot
                        }
                    }
                }
                // The segment's update reads the memory as it was before the segment.
                var newMem = mem
                for j in start..<end {
                    let sk = (0..<s.d).map { sigma(k[s.k(b, kh, j) + $0]) }
                    var den = 0.0
                    for a in 0..<s.d { den += sk[a] * z[a] }
                    for t in 0..<s.dv {
                        var value = v[s.v(b, kh, j) + t]
                        if delta && den > 0 {
                            var retrieved = 0.0
                            for a in 0..<s.d { retrieved += sk[a] * mem[a * s.dv + t] }
                            value -= retrieved / den
                        }
                        for a in 0..<s.d { newMem[a * s.dv + t] += sk[a] * value }
                    }
                }
                for j in start..<end { for a in 0..<s.d { z[a] += sigma(k[s.k(b, kh, j) + a]) } }
                mem = newMem
                start = end
            }
        } }
        return out
    }

    // MARK: - Numerical gradients

    /// Central differences of `L(x) = Σ f(x) ⊙ dout` at the coordinates `indices` of x:
    /// `dL/dx_i ≈ Σ (f(x + h e_i) − f(x − h e_i)) ⊙ dout / (2h)`. The differences are taken per
    /// output before the dot product, which keeps cancellation error small.
    static func numericalGradient(of f: ([Double]) -> [Double], at x: [Double], dout: [Double],
                                  indices: [Int], h: Double = 1e-6) -> [Double] {
        var xh = x
        var grad = [Double]()
        grad.reserveCapacity(indices.count)
        for i in indices {
            let x0 = x[i]
            xh[i] = x0 + h
            let plus = f(xh)
            xh[i] = x0 - h
            let minus = f(xh)
            xh[i] = x0
            precondition(plus.count == dout.count && minus.count == dout.count, "f's output and dout differ in size")
            var sum = 0.0
            for n in 0..<dout.count { sum += (plus[n] - minus[n]) * dout[n] }
            // The step actually taken, (x0 + h) − (x0 − h), not 2h.
            grad.append(sum / ((x0 + h) - (x0 - h)))
        }
        return grad
    }

    /// Sampled numerical dq, dk, dv of `exact` (each array follows its index list).
    static func numericalExact(q: [Double], k: [Double], v: [Double], shape s: RefShape, scale: Double,
                               causal: Bool = false, window: Int? = nil, keyLengths: [Int]? = nil, bias: [Double]? = nil,
                               alibiSlopes: [Double]? = nil, dout: [Double],
                               qIndices: [Int], kIndices: [Int], vIndices: [Int],
                               h: Double = 1e-6) -> (dq: [Double], dk: [Double], dv: [Double]) {
        func f(_ q: [Double], _ k: [Double], _ v: [Double]) -> [Double] {
            exact(q: q, k: k, v: v, shape: s, scale: scale, causal: causal, window: window, keyLengths: keyLengths,
                  bias: bias, alibiSlopes: alibiSlopes)
        }
        return (numericalGradient(of: { f($0, k, v) }, at: q, dout: dout, indices: qIndices, h: h),
                numericalGradient(of: { f(q, $0, v) }, at: k, dout: dout, indices: kIndices, h: h),
                numericalGradient(of: { f(q, k, $0) }, at: v, dout: dout, indices: vIndices, h: h))
    }

    /// Sampled numerical dq, dk, dv of `linear`.
    static func numericalLinear(q: [Double], k: [Double], v: [Double], shape s: RefShape, map: FeatureMap,
                                causal: Bool = false, eps: Double = 1e-6, dout: [Double],
                                qIndices: [Int], kIndices: [Int], vIndices: [Int],
                                h: Double = 1e-6) -> (dq: [Double], dk: [Double], dv: [Double]) {
        func f(_ q: [Double], _ k: [Double], _ v: [Double]) -> [Double] {
            linear(q: q, k: k, v: v, shape: s, map: map, causal: causal, eps: eps)
        }
        return (numericalGradient(of: { f($0, k, v) }, at: q, dout: dout, indices: qIndices, h: h),
                numericalGradient(of: { f(q, $0, v) }, at: k, dout: dout, indices: kIndices, h: h),
                numericalGradient(of: { f(q, k, $0) }, at: v, dout: dout, indices: vIndices, h: h))
    }

    /// Sampled numerical dq, dk, dv of `infini`, and dβ at `betaIndices` (every head when nil).
    static func numericalInfini(q: [Double], k: [Double], v: [Double], shape s: RefShape, segment: Int,
                                delta: Bool, beta: [Double], dout: [Double],
                                qIndices: [Int], kIndices: [Int], vIndices: [Int], betaIndices: [Int]? = nil,
                                h: Double = 1e-6) -> (dq: [Double], dk: [Double], dv: [Double], dbeta: [Double]) {
        func f(_ q: [Double], _ k: [Double], _ v: [Double], _ beta: [Double]) -> [Double] {
            infini(q: q, k: k, v: v, shape: s, segment: segment, delta: delta, beta: beta)
        }
        return (numericalGradient(of: { f($0, k, v, beta) }, at: q, dout: dout, indices: qIndices, h: h),
                numericalGradient(of: { f(q, $0, v, beta) }, at: k, dout: dout, indices: kIndices, h: h),
                numericalGradient(of: { f(q, k, $0, beta) }, at: v, dout: dout, indices: vIndices, h: h),
                numericalGradient(of: { f(q, k, v, $0) }, at: beta, dout: dout,
                                  indices: betaIndices ?? Array(0..<s.H), h: h))
    }

    // MARK: - Helpers for tests

    /// Up to `n` distinct sorted indices into an array of `count` values, always including the first
    /// and the last; a pure function of `seed`.
    static func sampleIndices(count: Int, n: Int = 16, seed: UInt64) -> [Int] {
        precondition(count >= 1)
        if count <= n { return Array(0..<count) }
        var rng = SplitMix64(seed: seed)
        var picked: Set<Int> = [0, count - 1]
        while picked.count < n { picked.insert(Int(rng.next() % UInt64(count))) }
        return picked.sorted()
    }

    /// `count` values uniform in [-scale, scale); a pure function of `seed`.
    static func random(count: Int, seed: UInt64, scale: Double = 1) -> [Double] {
        var rng = SplitMix64(seed: seed)
        return (0..<count).map { _ in (Double(rng.next() >> 11) / Double(1 << 53) * 2 - 1) * scale }
    }

    /// max |got − expected| over max(floor, max |expected|).
    static func relError(_ got: [Double], _ expected: [Double], floor: Double = 1) -> Double {
        precondition(got.count == expected.count, "sizes \(got.count) vs \(expected.count)")
        var err = 0.0, scale = floor
        for (g, e) in zip(got, expected) {
            if !g.isFinite || !e.isFinite { return .infinity }
            err = max(err, abs(g - e))
            scale = max(scale, abs(e))
        }
        return err / scale
    }

    private struct SplitMix64 {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }
}

/// Checks of the reference itself: the analytic exact VJP against central differences, and the
/// forwards and wrappers against closed forms.
final class GradientReferenceTests: XCTestCase {
    typealias G = GradientReference

    /// Central differences in float64 agree with the analytic gradients to ~1e-9 here; 1e-6 of the
    /// gradient's largest entry leaves room and still catches any wrong term.
    let tolerance = 1e-6

    func testNumericalGradientOfAKnownFunction() {
        // f(x) = [x0·x1, sin x2, exp x0]: dL/dx = [x1·w0 + exp(x0)·w2, x0·w0, cos(x2)·w1].
        let x = [0.3, -1.2, 0.7], w = [0.5, -2.0, 1.5]
        let f: ([Double]) -> [Double] = { [$0[0] * $0[1], Foundation.sin($0[2]), Foundation.exp($0[0])] }
        let expected = [x[1] * w[0] + Foundation.exp(x[0]) * w[2], x[0] * w[0], Foundation.cos(x[2]) * w[1]]
        let got = G.numericalGradient(of: f, at: x, dout: w, indices: [0, 1, 2])
        XCTAssertLessThan(G.relError(got, expected, floor: 1e-3), 1e-9)
        XCTAssertEqual(G.numericalGradient(of: f, at: x, dout: w, indices: [2, 0]).count, 2)
    }

    func testExactVJPAgainstCentralDifferences() {
        struct Case {
            var name: String, shape: G.RefShape, scale: Double? = nil, causal = false
            var keyLengths: [Int]? = nil, bias: Bool = false, alibi = false
        }
        let odd = G.RefShape(B: 2, H: 4, Hkv: 2, N: 7, M: 5, d: 3, dv: 2)
        let wide = G.RefShape(B: 2, H: 4, Hkv: 2, N: 5, M: 7, d: 3, dv: 2)
        let one = G.RefShape(B: 1, H: 4, Hkv: 2, N: 1, M: 1, d: 3, dv: 2)
        let mqa = G.RefShape(B: 1, H: 4, Hkv: 1, N: 6, M: 6, d: 3, dv: 2)
        let cases = [
            Case(name: "N>M", shape: odd),
            Case(name: "N>M causal (rows 0, 1 fully masked)", shape: odd, causal: true),
            Case(name: "N<M causal, scale 0.7", shape: wide, scale: 0.7, causal: true),
            Case(name: "N=M=1", shape: one),
            Case(name: "N=M=1 causal", shape: one, causal: true),
            Case(name: "key lengths", shape: odd, keyLengths: [3, 5]),
            Case(name: "key lengths causal, one batch fully masked", shape: wide, causal: true, keyLengths: [4, 0]),
            Case(name: "bias with -inf", shape: odd, bias: true),
            Case(name: "bias causal", shape: wide, causal: true, bias: true),
            Case(name: "ALiBi", shape: odd, alibi: true),
            Case(name: "ALiBi causal MQA", shape: mqa, causal: true, alibi: true),
            Case(name: "everything", shape: wide, scale: 1.3, causal: true, keyLengths: [6, 2], bias: true, alibi: true),
        ]
        for (n, c) in cases.enumerated() {
            let s = c.shape, seed = UInt64(10 * n)
            let q = G.random(count: s.qCount, seed: seed, scale: 2)
            let k = G.random(count: s.kCount, seed: seed + 1, scale: 2)
            let v = G.random(count: s.vCount, seed: seed + 2)
            let dout = G.random(count: s.outCount, seed: seed + 3)
            var bias: [Double]?
            if c.bias {
                // A random bias, one -inf entry, and row (b 0, h 1, i 2) entirely -inf.
                var values = G.random(count: s.B * s.H * s.N * s.M, seed: seed + 4)
                values[3] = -.infinity
                for j in 0..<s.M { values[((0 * s.H + 1) * s.N + 2) * s.M + j] = -.infinity }
                bias = values
            }
            // Slopes 2^(-8h/H), h 1-based (SPEC.md, Positions).
            let slopes = c.alibi ? (1...s.H).map { Foundation.pow(2, -8 * Double($0) / Double(s.H)) } : nil
            let scale = c.scale ?? 1 / Double(s.d).squareRoot()

            let analytic = G.exactVJP(q: q, k: k, v: v, shape: s, scale: scale, causal: c.causal,
                                      keyLengths: c.keyLengths, bias: bias, alibiSlopes: slopes, dout: dout)
            // 40 coordinates per tensor (all of them when fewer), the first and last included.
            let qi = G.sampleIndices(count: s.qCount, n: 40, seed: seed + 5)
            let ki = G.sampleIndices(count: s.kCount, n: 40, seed: seed + 6)
            let vi = G.sampleIndices(count: s.vCount, n: 40, seed: seed + 7)
            let numeric = G.numericalExact(q: q, k: k, v: v, shape: s, scale: scale, causal: c.causal,
                                           keyLengths: c.keyLengths, bias: bias, alibiSlopes: slopes, dout: dout,
                                           qIndices: qi, kIndices: ki, vIndices: vi)
            for (label, got, expected, all) in [("dq", numeric.dq, qi.map { analytic.dq[$0] }, analytic.dq),
                                                ("dk", numeric.dk, ki.map { analytic.dk[$0] }, analytic.dk),
                                                ("dv", numeric.dv, vi.map { analytic.dv[$0] }, analytic.dv)] {
                XCTAssert(all.allSatisfy(\.isFinite), "\(c.name): \(label) not finite")
                XCTAssertLessThan(G.relError(got, expected, floor: 1e-3), tolerance, "\(c.name): \(label)")
            }
            if c.causal && s.N > s.M {
                // Query rows 0..N-M-1 see no key: zero output, zero dq.
                let out = G.exact(q: q, k: k, v: v, shape: s, scale: scale, causal: true)
                for b in 0..<s.B { for h in 0..<s.H { for i in 0..<(s.N - s.M) {
                    XCTAssertEqual(out[s.out(b, h, i)..<(s.out(b, h, i) + s.dv)].map { abs($0) }.max(), 0)
                    XCTAssertEqual(analytic.dq[s.q(b, h, i)..<(s.q(b, h, i) + s.d)].map { abs($0) }.max(), 0)
                } } }
            }
            if let keyLengths = c.keyLengths {
                // Keys past a batch's length get no gradient.
                for b in 0..<s.B { for kh in 0..<s.Hkv { for j in keyLengths[b]..<s.M {
                    XCTAssertEqual(analytic.dk[s.k(b, kh, j)..<(s.k(b, kh, j) + s.d)].map { abs($0) }.max(), 0)
                    XCTAssertEqual(analytic.dv[s.v(b, kh, j)..<(s.v(b, kh, j) + s.dv)].map { abs($0) }.max(), 0)
                } } }
            }
        }
    }

    /// The forwards agree where SPEC.md says they must.
    func testForwardsAgreeWithEachOther() {
        // Infini with one β → −∞ is local attention alone: exact attention under a mask that is
        // causal within each segment.
        let s = G.RefShape(B: 2, H: 4, Hkv: 2, N: 7, M: 7, d: 3, dv: 2)
        let q = G.random(count: s.qCount, seed: 1, scale: 2), k = G.random(count: s.kCount, seed: 2, scale: 2)
        let v = G.random(count: s.vCount, seed: 3)
        let S = 3
        var segmentMask = [Double](repeating: 0, count: s.B * s.H * s.N * s.M)
        for b in 0..<s.B { for h in 0..<s.H { for i in 0..<s.N { for j in 0..<s.M where j > i || j / S != i / S {
            segmentMask[((b * s.H + h) * s.N + i) * s.M + j] = -.infinity
        } } } }
        let local = G.exact(q: q, k: k, v: v, shape: s, scale: 1 / Double(s.d).squareRoot(), bias: segmentMask)
        for delta in [false, true] {
            let infini = G.infini(q: q, k: k, v: v, shape: s, segment: S, delta: delta, beta: [-60, -60, -60, -60])
            XCTAssertLessThan(G.relError(infini, local), 1e-12)
        }
        // One segment covering everything: the memory is never read, so β only scales A_dot.
        let causal = G.exact(q: q, k: k, v: v, shape: s, scale: 1 / Double(s.d).squareRoot(), causal: true)
        let whole = G.infini(q: q, k: k, v: v, shape: s, segment: s.N, delta: true, beta: [0.5, -1, 2, 0])
        for h in 0..<s.H {
            let gate = 1 / (1 + Foundation.exp(-[0.5, -1, 2, 0][h]))
            for b in 0..<s.B { for i in 0..<s.N { for t in 0..<s.dv {
                let o = s.out(b, h, i) + t
                XCTAssertEqual(whole[o], (1 - gate) * causal[o], accuracy: 1e-12)
            } } }
        }

        // Linear: the causal query row that sees every key equals the non-causal one; rows that
        // see no key are zero.
        let w = G.RefShape(B: 1, H: 2, Hkv: 1, N: 7, M: 5, d: 3, dv: 2)
        let lq = G.random(count: w.qCount, seed: 4), lk = G.random(count: w.kCount, seed: 5)
        let lv = G.random(count: w.vCount, seed: 6)
        for map in [G.FeatureMap.elu, .relu] {
            let full = G.linear(q: lq, k: lk, v: lv, shape: w, map: map)
            let causalLinear = G.linear(q: lq, k: lk, v: lv, shape: w, map: map, causal: true)
            for h in 0..<w.H {
                let last = w.out(0, h, w.N - 1), first = w.out(0, h, 0)
                XCTAssertEqual(Array(causalLinear[last..<(last + w.dv)]), Array(full[last..<(last + w.dv)]))
                XCTAssertEqual(Array(causalLinear[first..<(first + w.dv)]), [0, 0])
            }
        }
        // Efficient Attention with constant keys: ρk is uniform, so every output is ρq times the
        // mean value row, i.e. the mean value row itself (ρq sums to 1).
        let constantKeys = [Double](repeating: 0.25, count: w.kCount)
        let efficient = G.linear(q: lq, k: constantKeys, v: lv, shape: w, map: .softmax)
        for t in 0..<w.dv {
            let mean = (0..<w.M).map { lv[w.v(0, 0, $0) + t] }.reduce(0, +) / Double(w.M)
            for h in 0..<w.H { for i in 0..<w.N { XCTAssertEqual(efficient[w.out(0, h, i) + t], mean, accuracy: 1e-12) } }
        }
    }

    /// The sampled wrappers against closed forms: linear attention is linear in v, and Infini's output
    /// is affine in sigmoid(β_h).
    func testWrappersAgainstClosedForms() {
        // dv_j = Σ_i w_ij dO_i with w_ij = φ(q_i)·φ(k_j) / (Σ_j' φ(q_i)·φ(k_j') + ε), causal.
        let s = G.RefShape(B: 1, H: 2, Hkv: 1, N: 5, M: 6, d: 3, dv: 2)
        let q = G.random(count: s.qCount, seed: 7), k = G.random(count: s.kCount, seed: 8)
        let v = G.random(count: s.vCount, seed: 9), dout = G.random(count: s.outCount, seed: 10)
        let phi: (Double) -> Double = { $0 > 0 ? $0 + 1 : Foundation.exp($0) }
        var expectedDV = [Double](repeating: 0, count: s.vCount)
        for h in 0..<s.H { for i in 0..<s.N {
            let visible = 0...(i + s.M - s.N)
            let a = visible.map { j in (0..<s.d).reduce(0.0) { $0 + phi(q[s.q(0, h, i) + $1]) * phi(k[s.k(0, 0, j) + $1]) } }
            let den = a.reduce(0, +) + 1e-6
            for j in visible { for t in 0..<s.dv { expectedDV[s.v(0, 0, j) + t] += a[j] / den * dout[s.out(0, h, i) + t] } }
        } }
        let vIndices = G.sampleIndices(count: s.vCount, n: 5, seed: 11)
        let linear = G.numericalLinear(q: q, k: k, v: v, shape: s, map: .elu, causal: true, dout: dout,
                                       qIndices: [0], kIndices: [s.kCount - 1], vIndices: vIndices)
        XCTAssertEqual(vIndices.count, 5)
        XCTAssertLessThan(G.relError(linear.dv, vIndices.map { expectedDV[$0] }, floor: 1e-3), tolerance)
        XCTAssert((linear.dq + linear.dk).allSatisfy(\.isFinite))

        // dβ_h = sigmoid'(β_h) Σ (A_mem − A_dot) ⊙ dO over head h; A_mem and A_dot are the outputs at
        // β = +60 and −60 (sigmoid is 1 and 0 there in float64).
        let t = G.RefShape(B: 2, H: 4, Hkv: 2, N: 7, M: 7, d: 3, dv: 2)
        let tq = G.random(count: t.qCount, seed: 12), tk = G.random(count: t.kCount, seed: 13)
        let tv = G.random(count: t.vCount, seed: 14), tdout = G.random(count: t.outCount, seed: 15)
        let beta = [0.3, -0.8, 1.1, 0]
        for delta in [false, true] {
            let mem = G.infini(q: tq, k: tk, v: tv, shape: t, segment: 3, delta: delta, beta: [60, 60, 60, 60])
            let dot = G.infini(q: tq, k: tk, v: tv, shape: t, segment: 3, delta: delta, beta: [-60, -60, -60, -60])
            let expected = (0..<t.H).map { h in
                let g = 1 / (1 + Foundation.exp(-beta[h]))
                var sum = 0.0
                for b in 0..<t.B { for i in 0..<t.N { for c in 0..<t.dv {
                    let o = t.out(b, h, i) + c
                    sum += (mem[o] - dot[o]) * tdout[o]
                } } }
                return g * (1 - g) * sum
            }
            let numeric = G.numericalInfini(q: tq, k: tk, v: tv, shape: t, segment: 3, delta: delta, beta: beta,
                                            dout: tdout, qIndices: [1], kIndices: [2], vIndices: [3])
            XCTAssertLessThan(G.relError(numeric.dbeta, expected, floor: 1e-3), tolerance, "delta \(delta)")
            XCTAssertEqual(G.numericalInfini(q: tq, k: tk, v: tv, shape: t, segment: 3, delta: delta, beta: beta,
                                             dout: tdout, qIndices: [], kIndices: [], vIndices: [],
                                             betaIndices: [2]).dbeta.count, 1)
        }
    }
}
