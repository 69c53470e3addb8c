import AttentionTensor
import CAttentionKernels
import Foundation

/// Rotary position embedding (RoPE, Su et al.), "rotate half" layout: for `i < d/2` the pair
/// `(x[i], x[i + d/2])` at position `p` is rotated by the angle `p' · θ_i`, `θ_i = base^(-2i/d)`.
///
/// Context extension:
/// - ``Scaling/linear(factor:)``: position interpolation, `p' = p / factor` (Chen et al. 2023);
/// - ``Scaling/ntk(factor:)``: NTK-aware base scaling, `base' = base · factor^(d / (d - 2))`,
///   which stretches low frequencies and keeps the highest ones;
/// - Llama 3's, YaRN's and dynamic NTK's frequency rules as transformers computes them.
///
/// Cos/sin tables for positions `0 ..< maxPositions` are computed once, in float64, at
/// initialisation; ``apply(to:positionOffset:)`` then rotates rows in place with a vectorised kernel.
public struct RotaryEmbedding: Sendable {
    public enum Scaling: Sendable, Equatable {
        case none
        case linear(factor: Double)
        case ntk(factor: Double)
        /// Llama 3.1's frequency-dependent interpolation (transformers' `rope_type: "llama3"`):
        /// wavelengths `λ = 2π/θ_i` longer than `C/low` are divided by `factor`, shorter than
        /// `C/high` are kept, and in between blended by `s = (C/λ − low)/(high − low)`:
        /// `θ' = (1 − s)·θ/factor + s·θ` (`C` the original context).
        case llama3(factor: Double, lowFrequencyFactor: Double, highFrequencyFactor: Double, originalContext: Int)
        /// YaRN (Peng et al. 2023, transformers' `rope_type: "yarn"`): per-frequency blend of
        /// interpolation (`θ/factor`) and extrapolation (`θ`) by a linear ramp between the
        /// dimensions that turn `betaFast` and `betaSlow` times over `originalContext` (floored
        /// and ceiled when `truncate`), with cos and sin multiplied by `attentionFactor`.
        case yarn(factor: Double, originalContext: Int, betaFast: Double, betaSlow: Double, attentionFactor: Double,
                  truncate: Bool)
        /// Dynamic NTK (transformers' `rope_type: "dynamic"`): the base becomes
        /// `base · (factor·L/C − (factor − 1))^(d/(d−2))` with `L = max(maxPositions, C)`: the
        /// table's length is the sequence length it is built for (`C` = `max_position_embeddings`).
        case dynamicNTK(factor: Double, originalContext: Int)
    }

    /// The inverse frequencies `θ_i` (`d/2` of them) and the factor applied to cos and sin.
    public static func frequencies(dimension d: Int, base: Double, scaling: Scaling, maxPositions: Int) throws
        -> (inverse: [Double], attentionFactor: Double) {
        let h = d / 2
        func plain(_ b: Double) -> [Double] { (0..<h).map { 1 / Foundation.pow(b, 2 * Double($0) / Double(d)) } }
        func factorAtLeastOne(_ f: Double, _ what: String) throws {
            guard f >= 1, f.isFinite else { throw AttentionError.invalidArgument(name: "\(what) scaling factor", value: "\(f)", expected: "finite and >= 1") }
        }
        switch scaling {
        case .none:
            return (plain(base), 1)
        case .linear(let f):
            try factorAtLeastOne(f, "linear")
            return (plain(base).map { $0 / f }, 1)
        case .ntk(let f):
            try factorAtLeastOne(f, "NTK")
            return (plain(d > 2 ? base * Foundation.pow(f, Double(d) / Double(d - 2)) : base), 1)
        case .llama3(let f, let low, let high, let context):
            try factorAtLeastOne(f, "llama3")
            guard low > 0, high > low, context >= 1, low.isFinite, high.isFinite else {
                throw AttentionError.invalidArgument(name: "llama3 RoPE low_freq_factor, high_freq_factor, original context", value: "\(low), \(high), \(context)", expected: "0 < low_freq_factor < high_freq_factor, both finite, and a positive original context")
            }
            let lowWavelength = Double(context) / low, highWavelength = Double(context) / high
            return (plain(base).map { theta in
                let wavelength = 2 * Double.pi / theta
                if wavelength > lowWavelength { return theta / f }
                if wavelength < highWavelength { return theta }
                let s = (Double(context) / wavelength - low) / (high - low)
                return (1 - s) * theta / f + s * theta
            }, 1)
        case .yarn(let f, let context, let fast, let slow, let attentionFactor, let truncate):
            try factorAtLeastOne(f, "YaRN")
            guard context >= 1, fast > 0, slow > 0, attentionFactor > 0, attentionFactor.isFinite else {
                throw AttentionError.invalidArgument(name: "YaRN original context, beta_fast, beta_slow, attention factor", value: "\(context), \(fast), \(slow), \(attentionFactor)", expected: "all positive (the attention factor finite)")
            }
            // The dimension whose frequency turns `rotations` times over the original context.
            func correction(_ rotations: Double) -> Double {
                Double(d) * Foundation.log(Double(context) / (rotations * 2 * Double.pi)) / (2 * Foundation.log(base))
            }
            var lo = correction(fast), hi = correction(slow)
            if truncate { lo = lo.rounded(.down); hi = hi.rounded(.up) }
            lo = Swift.max(lo, 0)
            hi = Swift.min(hi, Double(d - 1))
            if lo == hi { hi += 0.001 }
            let extrapolated = plain(base)
            return ((0..<h).map { i in
                let ramp = Swift.min(Swift.max((Double(i) - lo) / (hi - lo), 0), 1)
                let keep = 1 - ramp   // the share of extrapolation
                return extrapolated[i] / f * (1 - keep) + extrapolated[i] * keep
            }, attentionFactor)
        case .dynamicNTK(let f, let context):
            try factorAtLeastOne(f, "dynamic NTK")
            guard context >= 1 else { throw AttentionError.invalidArgument(name: "dynamic NTK original context", value: "\(context)", expected: "positive") }
            let L = Double(Swift.max(maxPositions, context))
            let b = d > 2 ? base * Foundation.pow(f * L / Double(context) - (f - 1), Double(d) / Double(d - 2)) : base
            return (plain(b), 1)
        }
    }

    /// Head dimension `d` (even).
    public let dimension: Int
    public let base: Double
    public let scaling: Scaling
    /// Positions the tables cover.
    public let maxPositions: Int
    let cos: [Float], sin: [Float]   // [maxPositions, d/2]
    /// −sin: the inverse rotation (RoPE's backward pass).
    let negatedSin: [Float]

    public init(dimension d: Int, maxPositions: Int, base: Double = 10000, scaling: Scaling = .none) throws {
        guard d > 0, d % 2 == 0 else { throw AttentionError.invalidArgument(name: "RoPE head dimension", value: "\(d)", expected: "positive and even") }
        guard maxPositions >= 1, maxPositions <= 1 << 24, maxPositions * d / 2 <= 1 << 28 else {
            throw AttentionError.invalidArgument(name: "RoPE maxPositions", value: "\(maxPositions) (× \(d / 2) frequencies)", expected: "1...2^24, with at most 2^28 table entries")
        }
        guard base > 1, base.isFinite else { throw AttentionError.invalidArgument(name: "RoPE base", value: "\(base)", expected: "finite and > 1") }
        let (inverse, attentionFactor) = try Self.frequencies(dimension: d, base: base, scaling: scaling, maxPositions: maxPositions)
        dimension = d
        self.base = base
        self.scaling = scaling
        self.maxPositions = maxPositions
        let h = d / 2
        var c = [Float](repeating: 0, count: maxPositions * h), s = c
        for p in 0..<maxPositions {
            for i in 0..<h {
                let angle = Double(p) * inverse[i]
                c[p * h + i] = Float(Foundation.cos(angle) * attentionFactor)
                s[p * h + i] = Float(Foundation.sin(angle) * attentionFactor)
            }
        }
        cos = c
        sin = s
        negatedSin = s.map { -$0 }
    }

    /// Rotates `x [B, H, N, d]` in place, position `positionOffset + n` for row `n` (the offset is
    /// the number of tokens already in a KV cache when decoding).
    public func apply(to x: inout Tensor, positionOffset: Int = 0) throws {
        guard x.rank == 4, x.shape[3] == dimension else {
            throw AttentionError.shapeMismatch(tensor: "RoPE input", shape: x.shape, expected: "[B, H, N, \(dimension)]")
        }
        let (B, H, N) = (x.shape[0], x.shape[1], x.shape[2])
        guard positionOffset >= 0, positionOffset + N <= maxPositions else {
            throw AttentionError.invalidArgument(name: "positions", value: "\(positionOffset)..<\(positionOffset + N)", expected: "within the RoPE table's 0..<\(maxPositions)")
        }
        let h = dimension / 2
        x.withUnsafeMutableBufferPointer { buf in
            cos.withUnsafeBufferPointer { c in
                sin.withUnsafeBufferPointer { s in
                    for bh in 0..<(B * H) {
                        ak_rope_rows(buf.baseAddress! + bh * N * dimension, N, dimension, dimension,
                                     c.baseAddress! + positionOffset * h, s.baseAddress! + positionOffset * h, h)
                    }
                }
            }
        }
    }

    /// Rotates `rows` rows of `dimension` floats in place, `stride` floats apart (a head of a
    /// `[tokens, heads · d]` projection: stride `heads · d`), row r at position `firstPosition + r`.
    /// `inverse` rotates by the negated angles: RoPE is orthogonal, so that is its transpose, the
    /// backward pass of ``apply(to:positionOffset:)``.
    public func rotate(_ x: UnsafeMutablePointer<Float>, rows: Int, stride: Int, firstPosition: Int, inverse: Bool = false) throws {
        guard rows >= 0, stride >= dimension else {
            throw AttentionError.invalidArgument(name: rows < 0 ? "rows" : "stride", value: "\(rows < 0 ? rows : stride)", expected: rows < 0 ? ">= 0" : "at least d = \(dimension)")
        }
        guard firstPosition >= 0, firstPosition + rows <= maxPositions else {
            throw AttentionError.invalidArgument(name: "positions", value: "\(firstPosition)..<\(firstPosition + rows)", expected: "within the RoPE table's 0..<\(maxPositions)")
        }
        let h = dimension / 2
        cos.withUnsafeBufferPointer { c in
            (inverse ? negatedSin : sin).withUnsafeBufferPointer { s in
                ak_rope_rows(x, rows, dimension, stride, c.baseAddress! + firstPosition * h, s.baseAddress! + firstPosition * h, h)
            }
        }
    }
}
