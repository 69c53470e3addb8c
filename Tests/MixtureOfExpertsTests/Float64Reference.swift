import AttentionTensor
import Foundation
import MixtureOfExperts

/// The mixture of experts written out in float64, loop by loop, from SPEC.md § Mixture of
/// experts: the reference the float32 layer is tested against (and, by central differences, its
/// gradients).
struct Float64MoE {
    var D: Int
    var sizes: [Int]
    var gate: [Double]              // [E, D]
    var w1: [[Double]], w2: [[Double]], w3: [[Double]]
    var E: Int { sizes.count }

    init(_ layer: MixtureOfExperts) {
        D = layer.hidden
        sizes = layer.expertSizes
        gate = layer.gate.scalars.map(Double.init)
        w1 = (0..<layer.experts).map { layer.w1($0).scalars.map(Double.init) }
        w2 = (0..<layer.experts).map { layer.w2($0).scalars.map(Double.init) }
        w3 = (0..<layer.experts).map { layer.w3($0).scalars.map(Double.init) }
    }

    /// All parameters flat, in MoEParameterLayout's order (gate, then w1, w2, w3 per expert).
    var flat: [Double] {
        get { gate + (0..<E).flatMap { w1[$0] + w2[$0] + w3[$0] } }
        set {
            var o = 0
            func take(_ n: Int) -> [Double] { defer { o += n }; return Array(newValue[o..<(o + n)]) }
            gate = take(E * D)
            for e in 0..<E { w1[e] = take(sizes[e] * D); w2[e] = take(D * sizes[e]); w3[e] = take(sizes[e] * D) }
        }
    }

    struct Routing: Equatable {
        var choices: [[Int]]        // [T][k], most probable first, ties to the lower index
        var kept: [[Bool]]          // [T][k]
        var selected: [Int]         // [E] slots sent to each expert before the capacity
    }

    /// Router probabilities and log-sum-exps, per token.
    func router(_ x: [Double], tokens T: Int) -> (p: [[Double]], lse: [Double]) {
        var p = [[Double]](), lse = [Double]()
        for t in 0..<T {
            let logits = (0..<E).map { e in (0..<D).reduce(0.0) { $0 + x[t * D + $1] * gate[e * D + $1] } }
            let m = logits.max()!
            let s = logits.reduce(0.0) { $0 + exp($1 - m) }
            p.append(logits.map { exp($0 - m) / s })
            lse.append(m + log(s))
        }
        return (p, lse)
    }

    /// Top-k by probability (ties to the lower index); capacity: first choices of all tokens
    /// in token order, then second choices, each expert keeping its first `capacity` slots.
    func route(_ x: [Double], tokens T: Int, k: Int, capacity: Int?) -> Routing {
        let (p, _) = router(x, tokens: T)
        let choices = p.map { row in Array((0..<E).sorted { row[$0] != row[$1] ? row[$0] > row[$1] : $0 < $1 }.prefix(k)) }
        var selected = [Int](repeating: 0, count: E), taken = [Int](repeating: 0, count: E)
        var kept = [[Bool]](repeating: [Bool](repeating: false, count: k), count: T)
        for row in choices { for e in row { selected[e] += 1 } }
        for j in 0..<k {
            for t in 0..<T {
                let e = choices[t][j]
                if taken[e] < (capacity ?? Int.max) { taken[e] += 1; kept[t][j] = true }
            }
        }
        return Routing(choices: choices, kept: kept, selected: selected)
    }

    /// Expert e on one token row (plain loops over buffers: the gradient tests call this a lot).
    func expert(_ e: Int, _ x: ArraySlice<Double>) -> [Double] {
        let F = sizes[e], D = D
        var h = [Double](repeating: 0, count: F), y = [Double](repeating: 0, count: D)
        x.withUnsafeBufferPointer { x in
            w1[e].withUnsafeBufferPointer { w1 in
                w3[e].withUnsafeBufferPointer { w3 in
                    for f in 0..<F {
                        var g = 0.0, u = 0.0
                        for d in 0..<D { g += w1[f * D + d] * x[d]; u += w3[f * D + d] * x[d] }
                        h[f] = g / (1 + exp(-g)) * u
                    }
                }
            }
        }
        w2[e].withUnsafeBufferPointer { w2 in
            for d in 0..<D {
                var acc = 0.0
                for f in 0..<F { acc += w2[d * F + f] * h[f] }
                y[d] = acc
            }
        }
        return y
    }

    /// The combine weights of each token's choices (raw, or over their sum).
    func weights(_ p: [[Double]], _ routing: Routing, renormalize: Bool) -> [[Double]] {
        routing.choices.enumerated().map { t, row in
            let w = row.map { p[t][$0] }
            let s = w.reduce(0, +)
            return renormalize ? w.map { $0 / s } : w
        }
    }

    /// The output `[T·D]` under a fixed routing.
    func forward(_ x: [Double], tokens T: Int, renormalize: Bool, routing: Routing) -> [Double] {
        let (p, _) = router(x, tokens: T)
        let w = weights(p, routing, renormalize: renormalize)
        var out = [Double](repeating: 0, count: T * D)
        for t in 0..<T {
            for (j, e) in routing.choices[t].enumerated() where routing.kept[t][j] {
                let y = expert(e, x[(t * D)..<((t + 1) * D)])
                for d in 0..<D { out[t * D + d] += w[t][j] * y[d] }
            }
        }
        return out
    }

    /// Load-balancing loss E · Σ f_e P_e (f_e: the routing's slot fractions, fixed) and z-loss.
    func auxiliaryLosses(_ x: [Double], tokens T: Int, routing: Routing) -> (loadBalancing: Double, z: Double) {
        let (p, lse) = router(x, tokens: T)
        let k = routing.choices.first?.count ?? 1
        var lb = 0.0
        for e in 0..<E {
            let f = Double(routing.selected[e]) / Double(T * k)
            lb += f * p.reduce(0.0) { $0 + $1[e] } / Double(T)
        }
        return (Double(E) * lb, lse.reduce(0.0) { $0 + $1 * $1 } / Double(T))
    }

    /// Token t's share of L = Σ out ⊙ dout + λ_lb · loadBalancing + λ_z · z (routing fixed), a sum over
    /// tokens (P_e and the z-loss are means over tokens, f_e is fixed by the routing): so a
    /// finite difference in token t's row, or in an expert none of whose tokens reach it, needs
    /// only the tokens it touches.
    func tokenLoss(_ t: Int, _ x: ArraySlice<Double>, tokens T: Int, renormalize: Bool, routing: Routing, dout: [Double],
                   lb: Double, z: Double) -> Double {
        let (p, lse) = router(Array(x), tokens: 1)
        let k = routing.choices[t].count
        let tokenRouting = Routing(choices: [routing.choices[t]], kept: [routing.kept[t]], selected: routing.selected)
        let w = weights(p, tokenRouting, renormalize: renormalize)[0]
        var l = 0.0
        for (j, e) in routing.choices[t].enumerated() where routing.kept[t][j] {
            let y = expert(e, x)
            for d in 0..<D { l += w[j] * y[d] * dout[t * D + d] }
        }
        for e in 0..<E { l += lb * Double(E) * Double(routing.selected[e]) / Double(T * k) * p[0][e] / Double(T) }
        return l + z * lse[0] * lse[0] / Double(T)
    }

    /// Adds `h` to parameter `i` of ``flat``'s order.
    mutating func perturb(_ i: Int, by h: Double) {
        var o = i
        if o < E * D { gate[o] += h; return }
        o -= E * D
        for e in 0..<E {
            let n = sizes[e] * D
            if o < n { w1[e][o] += h; return }
            o -= n
            if o < n { w2[e][o] += h; return }
            o -= n
            if o < n { w3[e][o] += h; return }
            o -= n
        }
        preconditionFailure("parameter \(i) out of range")
    }

    /// The expert parameter `i` belongs to (nil: the gate).
    func expertOf(_ i: Int) -> Int? {
        var o = i - E * D
        if o < 0 { return nil }
        for e in 0..<E {
            o -= 3 * sizes[e] * D
            if o < 0 { return e }
        }
        preconditionFailure("parameter \(i) out of range")
    }

    /// dL/d(parameters) in ``flat``'s order by central differences (step h), each parameter
    /// through the tokens it reaches.
    mutating func parameterGradient(_ x: [Double], tokens T: Int, renormalize: Bool, routing: Routing, dout: [Double],
                                    lb: Double, z: Double, h: Double = 1e-5) -> [Double] {
        var reaching = [[Int]](repeating: [], count: E)
        for t in 0..<T { for (j, e) in routing.choices[t].enumerated() where routing.kept[t][j] { reaching[e].append(t) } }
        let count = flat.count
        return (0..<count).map { i in
            let tokens = expertOf(i).map { reaching[$0] } ?? Array(0..<T)
            func f() -> Double {
                tokens.reduce(0.0) { $0 + tokenLoss($1, x[($1 * D)..<(($1 + 1) * D)], tokens: T, renormalize: renormalize,
                                                    routing: routing, dout: dout, lb: lb, z: z) }
            }
            perturb(i, by: h); let a = f()
            perturb(i, by: -2 * h); let b = f()
            perturb(i, by: h)
            return (a - b) / (2 * h)
        }
    }

    /// dL/dx by central differences (step h), each row through its own token.
    func inputGradient(_ x: [Double], tokens T: Int, renormalize: Bool, routing: Routing, dout: [Double],
                       lb: Double, z: Double) -> [Double] {
        (0..<T).flatMap { t in
            numericGradient(Array(x[(t * D)..<((t + 1) * D)])) {
                tokenLoss(t, $0[...], tokens: T, renormalize: renormalize, routing: routing, dout: dout, lb: lb, z: z)
            }
        }
    }
}

/// Central differences of f at v, step h.
func numericGradient(_ v: [Double], h: Double = 1e-5, _ f: ([Double]) -> Double) -> [Double] {
    var v = v
    return (0..<v.count).map { i in
        let keep = v[i]
        v[i] = keep + h; let a = f(v)
        v[i] = keep - h; let b = f(v)
        v[i] = keep
        return (a - b) / (2 * h)
    }
}

/// max |a − b| / max(|b|) (b the reference; 1e-30 guards an all-zero reference).
func relativeError(_ a: [Float], _ b: [Double]) -> Double {
    precondition(a.count == b.count, "\(a.count) vs \(b.count) values")
    var err = 0.0, scale = 1e-30
    for (x, y) in zip(a, b) { err = max(err, abs(Double(x) - y)); scale = max(scale, abs(y)) }
    return err / scale
}

/// Float32 normal values as Double (so the reference sees exactly the float32 inputs).
func randomRows(_ count: Int, seed: UInt64, std: Float = 1) -> [Float] {
    (try! Tensor.randomNormal([count], seed: seed, std: std)).scalars
}
