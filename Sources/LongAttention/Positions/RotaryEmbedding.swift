import AttentionTensor
import CAttentionKernels
import Foundation

/// Rotary position embedding (RoPE, Su et al.), "rotate half" layout: for `i < d/2` the pair
/// `(x[i], x[i + d/2])` at position `p` is rotated by the angle `p' · θ_i`, `θ_i = base^(-2i/d)`.
///
/// Context extension:
/// - ``Scaling/linear(factor:)``: position interpolation, `p' = p / factor` (Chen et al. 2023);
/// - ``Scaling/ntk(factor:)``: NTK-aware base scaling, `base' = base · factor^(d / (d - 2))`,
///   which stretches low frequencies and keeps the highest ones.
///
/// Cos/sin tables for positions `0 ..< maxPositions` are computed once, in float64, at
/// initialisation; ``apply(to:positionOffset:)`` then rotates rows in place with a vectorised kernel.
public struct RotaryEmbedding: Sendable {
    public enum Scaling: Sendable, Equatable {
        case none
        case linear(factor: Double)
        case ntk(factor: Double)
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
        guard d > 0, d % 2 == 0 else { throw AttentionError.invalidArgument("RoPE needs an even head dimension, got \(d)") }
        guard maxPositions >= 1, maxPositions <= 1 << 24, maxPositions * d / 2 <= 1 << 28 else {
            throw AttentionError.invalidArgument("RoPE table of \(maxPositions) positions × \(d / 2) is out of range")
        }
        guard base > 1, base.isFinite else { throw AttentionError.invalidArgument("RoPE base must be > 1, got \(base)") }
        var effectiveBase = base, positionScale = 1.0
        switch scaling {
        case .none: break
        case .linear(let f):
            guard f >= 1, f.isFinite else { throw AttentionError.invalidArgument("linear scaling factor must be >= 1, got \(f)") }
            positionScale = 1 / f
        case .ntk(let f):
            guard f >= 1, f.isFinite else { throw AttentionError.invalidArgument("NTK scaling factor must be >= 1, got \(f)") }
            effectiveBase = d > 2 ? base * Foundation.pow(f, Double(d) / Double(d - 2)) : base
        }
        dimension = d
        self.base = base
        self.scaling = scaling
        self.maxPositions = maxPositions
        let h = d / 2
        var c = [Float](repeating: 0, count: maxPositions * h), s = c
        let theta = (0..<h).map { Foundation.pow(effectiveBase, -2 * Double($0) / Double(d)) }
        for p in 0..<maxPositions {
            for i in 0..<h {
                let angle = Double(p) * positionScale * theta[i]
                c[p * h + i] = Float(Foundation.cos(angle))
                s[p * h + i] = Float(Foundation.sin(angle))
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
            throw AttentionError.shapeMismatch("RoPE for d = \(dimension) applied to \(x.shape) (expected [B, H, N, \(dimension)])")
        }
        let (B, H, N) = (x.shape[0], x.shape[1], x.shape[2])
        guard positionOffset >= 0, positionOffset + N <= maxPositions else {
            throw AttentionError.invalidArgument("positions \(positionOffset)..<\(positionOffset + N) exceed the table's \(maxPositions)")
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
            throw AttentionError.invalidArgument("RoPE rows \(rows) with stride \(stride) < d = \(dimension)")
        }
        guard firstPosition >= 0, firstPosition + rows <= maxPositions else {
            throw AttentionError.invalidArgument("positions \(firstPosition)..<\(firstPosition + rows) exceed the table's \(maxPositions)")
        }
        let h = dimension / 2
        cos.withUnsafeBufferPointer { c in
            (inverse ? negatedSin : sin).withUnsafeBufferPointer { s in
                ak_rope_rows(x, rows, dimension, stride, c.baseAddress! + firstPosition * h, s.baseAddress! + firstPosition * h, h)
            }
        }
    }
}
