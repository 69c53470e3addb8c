import AttentionTensor
import COpenBLAS
import Foundation

/// Performer's FAVOR+ random features (Choromanski et al. 2021): `m` positive orthogonal random
/// features whose inner products approximate the softmax kernel `exp(q·k / sqrt(d))`.
///
/// `φ(x) = exp(W x' - |x'|²/2) / sqrt(m)` with `x' = x · d^(-1/4)`. The rows of `W [m, d]` come in
/// blocks of `d`: each block is the orthogonal factor of a `d × d` Gaussian matrix (LAPACK
/// `sgeqrf` + `sorgqr`), and each row is rescaled to the length of an independent Gaussian vector
/// in `R^d`, so rows are marginally Gaussian but exactly orthogonal within a block. The last
/// block is truncated when `d` does not divide `m`. Drawn from `seed`: same seed, same features.
public struct FavorFeatures: Sendable, Equatable {
    /// Head dimension `d`.
    public let dimension: Int
    /// Number of features `m`.
    public let count: Int
    /// The projection `W`, `[m, d]` row-major (unscaled by `d^(-1/4)`).
    public let projection: [Float]

    public init(dimension d: Int, features m: Int, seed: UInt64) throws {
        guard d > 0, m > 0 else {
            throw AttentionError.invalidArgument(name: d > 0 ? "FAVOR+ features m" : "FAVOR+ head dimension d", value: "\(d > 0 ? m : d)", expected: "positive")
        }
        guard m <= 1 << 16, d <= 1 << 12 else {
            throw AttentionError.invalidArgument(name: m > 65536 ? "FAVOR+ features m" : "FAVOR+ head dimension d", value: "\(m > 65536 ? m : d)", expected: m > 65536 ? "at most 65536" : "at most 4096")
        }
        dimension = d
        count = m
        var w = [Float](repeating: 0, count: m * d)
        var rng = SplitMix64(seed: seed)
        func gaussian() -> Float { Float(rng.nextNormal()) }
        var block = [Float](repeating: 0, count: d * d)
        var tau = [Float](repeating: 0, count: d)
        var row = 0
        while row < m {
            for i in 0..<(d * d) { block[i] = gaussian() }
            let info1 = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, Int32(d), Int32(d), &block, Int32(d), &tau)
            let info2 = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, Int32(d), Int32(d), Int32(d), &block, Int32(d), &tau)
            guard info1 == 0, info2 == 0 else {
                throw AttentionError.invalidArgument(name: "FAVOR+ orthogonal features", value: "LAPACK info sgeqrf \(info1), sorgqr \(info2)", expected: "a successful QR (info 0)")
            }
            // Q's columns are orthonormal; its transpose's rows are too. Take rows of Qᵀ.
            for r in 0..<min(d, m - row) {
                var norm: Float = 0
                for _ in 0..<d { let g = gaussian(); norm += g * g }
                norm = norm.squareRoot()
                for c in 0..<d { w[(row + r) * d + c] = block[c * d + r] * norm }
            }
            row += d
        }
        projection = w
    }

    /// Largest |⟨w_i, w_j⟩| / (|w_i| |w_j|) between distinct rows of one block: 0 up to rounding.
    public var orthogonalityError: Float {
        let d = dimension
        var worst: Float = 0
        for b in stride(from: 0, to: count, by: d) {
            let rows = b..<min(b + d, count)
            for i in rows {
                for j in rows where j > i {
                    var dot: Float = 0, ni: Float = 0, nj: Float = 0
                    for c in 0..<d {
                        dot += projection[i * d + c] * projection[j * d + c]
                        ni += projection[i * d + c] * projection[i * d + c]
                        nj += projection[j * d + c] * projection[j * d + c]
                    }
                    worst = max(worst, abs(dot) / (ni * nj).squareRoot())
                }
            }
        }
        return worst
    }
}
