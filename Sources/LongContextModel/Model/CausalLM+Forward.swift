import AttentionTensor
import CAttentionKernels
import Foundation
import LongAttention

/// What one layer's backward needs from its forward. Rows are tokens (`N = B·T`), token-major.
final class LayerActivations {
    /// The residual stream entering the layer, `[N, D]`, and its normalised form `h1` with the
    /// per-row RMSNorm scale.
    var xIn: Tensor, h1: Tensor, rstd1: [Float]
    /// Projections `[N, H·hd]`, `[N, Hkv·hd]`, `[N, Hkv·hd]` (with their biases); q and k after
    /// their norms and RoPE.
    var q: Tensor, k: Tensor, v: Tensor
    /// q and k before their per-head norms, and the norms' scales (`[N·H]`, `[N·Hkv]`; Qwen3, Gemma 3).
    var qkNorm: (q: Tensor, k: Tensor, rstdQ: [Float], rstdK: [Float])?
    /// The attention forward's saved state, and its output as `[N, H·hd]` rows.
    var attention: AttentionState
    var attCat: Tensor
    /// Sandwich norms (Gemma 3): the attention block's output before its post-norm, and the scale.
    var postAttention: (a: Tensor, rstd: [Float])?
    /// The stream after attention, its normalised form and scale.
    var xMid: Tensor, h2: Tensor, rstd2: [Float]
    /// The MLP's state.
    var mlp: MLPActivations
    /// Sandwich norms: the MLP's output before its post-norm, and the scale.
    var postMLP: (m: Tensor, rstd: [Float])?

    init(xIn: Tensor, h1: Tensor, rstd1: [Float], q: Tensor, k: Tensor, v: Tensor, attention: AttentionState, attCat: Tensor,
         xMid: Tensor, h2: Tensor, rstd2: [Float], mlp: MLPActivations) {
        (self.xIn, self.h1, self.rstd1, self.q, self.k, self.v) = (xIn, h1, rstd1, q, k, v)
        (self.attention, self.attCat, self.xMid, self.h2, self.rstd2, self.mlp) = (attention, attCat, xMid, h2, rstd2, mlp)
    }
}

/// The attention variants' saved forward state.
enum AttentionState {
    /// Exact and BigBird: output and log-sum-exp (the FlashAttention backward recomputes P).
    case softmax(SoftmaxAttentionForward)
    /// Linear: output and normalisers.
    case linear(LinearAttentionForward)
    /// Infini: nothing (its backward recomputes each segment from checkpoints of the memory).
    case infini
    /// Not kept (inference).
    case none
}

enum MLPActivations {
    /// SwiGLU or GeGLU: gate and up projections `[N, F]` and their product `m = act(g) ∘ u`.
    case dense(g: Tensor, u: Tensor, m: Tensor)
    case moe(MoEActivations)
    case none
}

/// A forward pass's results: logits `[B, T, V]` and, when kept, what the backward needs.
///
/// Not `Sendable`: the layers add into it during the forward (the MoE losses) and the backward
/// reads its activations; it belongs to the one training step that made it.
public final class ForwardPass {
    public let batch: Int, length: Int
    public let tokens: [Int32]
    /// `[B, T, V]`.
    public internal(set) var logits: Tensor
    var layers: [LayerActivations] = []
    var xOut: Tensor? = nil, hF: Tensor? = nil, rstdF: [Float] = []
    /// MoE models: Σ over layers of the load-balancing loss and the router z-loss (unweighted).
    public internal(set) var loadBalancingLoss: Double = 0
    public internal(set) var routerZLoss: Double = 0

    init(batch: Int, length: Int, tokens: [Int32], logits: Tensor) {
        (self.batch, self.length, self.tokens, self.logits) = (batch, length, tokens, logits)
    }
}

// MARK: - Row helpers shared by forward and backward

/// `y [rows, out] (+)= x [rows, in] · Wᵀ` with `W [out, in]` (a transformers Linear, no bias).
/// Up to ``gemvRowLimit`` rows (decoding steps) go through GEMV, row by row: a GEMM packs a copy
/// of W on every call, which for one row costs more than the product (measured: 61% of a
/// generation's time was OpenBLAS's packing before this), and a row's result is then the same
/// bits whether it is multiplied alone or with the other sequences of a batched decoding step.
@inline(__always)
func project(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
             rows: Int, in k: Int, out n: Int, accumulate: Bool = false) {
    if rows <= gemvRowLimit {
        for r in 0..<rows {
            BLAS.sgemv(.none, m: n, n: k, a: w, lda: k, x: x + r * k, beta: accumulate ? 1 : 0, y: y + r * n)
        }
        return
    }
    BLAS.sgemm(.none, .transpose, m: rows, n: n, k: k, a: x, lda: k, b: w, ldb: k, beta: accumulate ? 1 : 0, c: y, ldc: n)
}

/// The most rows ``project`` multiplies one at a time (GEMV): a batched decoding step's (``WeightMatrix/fastRowLimit``).
let gemvRowLimit = Int(AK_QDOT_MAX_ROWS)

/// The backward of ``project``: `dx [rows, in] (+)= dy · W`, `dW [out, in] += dyᵀ · x`.
@inline(__always)
func projectBackward(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ dy: UnsafePointer<Float>,
                     dx: UnsafeMutablePointer<Float>?, dW: UnsafeMutablePointer<Float>?, rows: Int, in k: Int, out n: Int,
                     accumulateDx: Bool) {
    if let dx {
        BLAS.sgemm(.none, .none, m: rows, n: k, k: n, a: dy, lda: n, b: w, ldb: k, beta: accumulateDx ? 1 : 0, c: dx, ldc: k)
    }
    if let dW {
        BLAS.sgemm(.transpose, .none, m: n, n: k, k: rows, a: dy, lda: n, b: x, ldb: k, beta: 1, c: dW, ldc: k)
    }
}

/// RMSNorm over rows, threads splitting the rows.
func rmsNorm(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
             rstd: UnsafeMutablePointer<Float>?, rows: Int, width: Int, eps: Float) {
    let parts = min(Parallel.defaultThreads, max(1, rows / 64))
    Parallel.run(items: parts, threads: parts) { _, queue in
        while let p = queue.next() {
            let r0 = rows * p / parts, r1 = rows * (p + 1) / parts
            ak_rmsnorm_rows(x + r0 * width, width, w, y + r0 * width, width, rstd.map { $0 + r0 }, r1 - r0, width, eps)
        }
    }
}

