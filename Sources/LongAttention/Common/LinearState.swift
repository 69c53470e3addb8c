import AttentionTensor
import CAttentionKernels

/// The state both linear attention and Infini-Attention's compressive memory carry per KV head:
/// `S [F, dv]` (Σ φ(k) vᵀ) and `z [F]` (Σ φ(k)), with its two operations on stacked feature rows.
/// It does not own its memory (a worker's scratch, or a ``CompressiveMemory``).
struct LinearState {
    let S: UnsafeMutablePointer<Float>, z: UnsafeMutablePointer<Float>
    /// Feature dimension `F` (d, or m for FAVOR+) and value width `dv`.
    let F: Int, dv: Int

    /// How keys enter the state.
    enum Rule {
        /// `S += φ(K)ᵀ V`.
        case linear
        /// `S += φ(K)ᵀ (V - φ(K) S / (φ(K) z))` (the subtracted term is 0 while z = 0), with scratch
        /// for the retrieved values `[rows, dv]`, their normalisers `[rows]` and the corrected
        /// values `[rows, dv]`.
        case delta(retrieved: UnsafeMutablePointer<Float>, normalizers: UnsafeMutablePointer<Float>,
                   corrected: UnsafeMutablePointer<Float>)
    }

    func reset() {
        S.update(repeating: 0, count: F * dv)
        z.update(repeating: 0, count: F)
    }

    /// `num = φ · S` (`[rows, dv]`, leading dimension ldn) and, if `den` is given, `den = φ · z`
    /// (`[rows]`) for `rows` feature rows `φ` (leading dimension ldf): one GEMM and one GEMV for
    /// all the query heads stacked in `φ`.
    func read(_ phi: UnsafePointer<Float>, ldf: Int, rows: Int, num: UnsafeMutablePointer<Float>, ldn: Int,
              den: UnsafeMutablePointer<Float>?) {
        BLAS.sgemm(.none, .none, m: rows, n: dv, k: F, a: phi, lda: ldf, b: S, ldb: dv, c: num, ldc: ldn)
        if let den { BLAS.sgemv(.none, m: rows, n: F, a: phi, lda: ldf, x: z, y: den) }
    }

    /// Absorbs `rows` keys with features `φ` (leading dimension ldf) and values `v` (leading
    /// dimension ldv) by `rule`; `z += Σ_rows φ` unless `updateNormalizer` is false (Efficient
    /// Attention keeps its own column sums).
    func write(_ phi: UnsafePointer<Float>, ldf: Int, rows: Int, values v: UnsafePointer<Float>, ldv: Int,
               rule: Rule = .linear, updateNormalizer: Bool = true) {
        guard rows > 0 else { return }
        var vUse = v, ld = ldv
        if case .delta(let retrieved, let normalizers, let corrected) = rule {
            // The delta rule reads the state as it was before these keys.
            read(phi, ldf: ldf, rows: rows, num: retrieved, ldn: dv, den: normalizers)
            ak_copy_scaled(v, ldv, corrected, dv, rows, dv, 1)
            ak_subtract_ratio_rows(corrected, dv, retrieved, dv, normalizers, rows, dv)
            vUse = UnsafePointer(corrected)
            ld = dv
        }
        BLAS.sgemm(.transpose, .none, m: F, n: dv, k: rows, a: phi, lda: ldf, b: vUse, ldb: ld, beta: 1, c: S, ldc: dv)
        if updateNormalizer { ak_col_sums_add(phi, rows, F, ldf, z) }
    }
}
