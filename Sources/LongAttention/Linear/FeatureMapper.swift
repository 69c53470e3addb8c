import AttentionTensor
import CAttentionKernels
import Foundation

/// φ for one work item: maps row blocks of queries or keys to features, keeping what a feature
/// map needs across chunks (FAVOR+'s running key stabiliser, Efficient Attention's column max).
struct FeatureMapper {
    let map: LinearFeatureMap
    let d: Int, F: Int
    /// FAVOR+ projection `W · d^(-1/4)`, `[m, d]`.
    let w: UnsafePointer<Float>?
    /// Scratch, one float per row of the largest block.
    let rowScratch: UnsafeMutablePointer<Float>, rowScratch2: UnsafeMutablePointer<Float>
    /// Efficient Attention: per-feature max of the keys over all positions.
    let colmax: UnsafeMutablePointer<Float>
    /// FAVOR+: the largest `w·k' - |k'|²/2` seen so far; key features are `exp(· - keyShift)`.
    var keyShift: Float = -.infinity

    /// φ(x) for `rows` rows at `src` (leading dimension ld) into `dst [rows, F]`.
    /// Row-wise constant factors are dropped where they cancel between numerator and normaliser:
    /// FAVOR+ query features are `exp(w·q' - max_j w_j·q')`.
    func queries(_ src: UnsafePointer<Float>, ld: Int, rows: Int, into dst: UnsafeMutablePointer<Float>) {
        queryFeatures(map, src, ld: ld, rows: rows, d: d, F: F, w: w, rowScratch: rowScratch, into: dst)
    }

    /// φ(k) for `rows` key rows into `dst [rows, F]`. FAVOR+ may raise its stabiliser, rescaling
    /// the state `S [F, dv]`, `z [F]` by the same factor so that state and new features agree.
    /// Efficient Attention adds the column sums of its features to `z`.
    mutating func keys(_ src: UnsafePointer<Float>, ld: Int, rows: Int, into dst: UnsafeMutablePointer<Float>,
                       S: UnsafeMutablePointer<Float>, z: UnsafeMutablePointer<Float>, dv: Int) {
        switch map {
        case .elu: ak_feature_rows(AK_FEATURE_ELU1, src, ld, dst, F, rows, d)
        case .relu: ak_feature_rows(AK_FEATURE_RELU, src, ld, dst, F, rows, d)
        case .softmax: ak_exp_sub_cols(src, rows, d, ld, colmax, dst, F, z)
        case .favor:
            BLAS.sgemm(.none, .transpose, m: rows, n: F, k: d, a: src, lda: ld, b: w!, ldb: d, c: dst, ldc: F)
            // |k'|²/2 with k' = k·d^(-1/4): |k|² / (2·sqrt(d)).
            ak_row_sumsq(src, rows, d, ld, 0.5 / Float(d).squareRoot(), rowScratch)
            ak_row_max(dst, rows, F, F, rowScratch2)
            var chunkMax: Float = -.infinity
            for r in 0..<rows { chunkMax = max(chunkMax, rowScratch2[r] - rowScratch[r]) }
            if chunkMax > keyShift {
                if keyShift > -.infinity {
                    let factor = Foundation.exp(keyShift - chunkMax)
                    ak_scale(S, F * dv, factor)
                    ak_scale(z, F, factor)
                }
                keyShift = chunkMax
            }
            for r in 0..<rows { rowScratch[r] += keyShift }
            ak_exp_sub_rows(dst, rows, F, F, rowScratch)
        }
    }
}

/// φ(q) for `rows` query rows (leading dimension ld) into `dst [rows, F]`, shared by the forward
/// and the backward. FAVOR+'s row constant `max_j w_j·q'` is subtracted (it cancels).
func queryFeatures(_ map: LinearFeatureMap, _ src: UnsafePointer<Float>, ld: Int, rows: Int, d: Int, F: Int,
                   w: UnsafePointer<Float>?, rowScratch: UnsafeMutablePointer<Float>, into dst: UnsafeMutablePointer<Float>) {
    switch map {
    case .elu: ak_feature_rows(AK_FEATURE_ELU1, src, ld, dst, F, rows, d)
    case .relu: ak_feature_rows(AK_FEATURE_RELU, src, ld, dst, F, rows, d)
    case .softmax:
        ak_copy_scaled(src, ld, dst, F, rows, d, 1)
        ak_softmax_rows(dst, rows, d, F, nil)
    case .favor:
        BLAS.sgemm(.none, .transpose, m: rows, n: F, k: d, a: src, lda: ld, b: w!, ldb: d, c: dst, ldc: F)
        ak_row_max(dst, rows, F, F, rowScratch)
        ak_exp_sub_rows(dst, rows, F, F, rowScratch)
    }
}
