import AttentionTensor
import CAttentionKernels
import Foundation
import LongAttention

/// What one layer's backward needs from its forward. Rows are tokens (`N = B·T`), token-major.
final class LayerActivations {
    /// The residual stream entering the layer, `[N, D]`, and its normalised form `h1` with the
    /// per-row RMSNorm scale.
    var xIn: Tensor, h1: Tensor, rstd1: [Float]
    /// Projections `[N, H·hd]`, `[N, Hkv·hd]`, `[N, Hkv·hd]`; q and k after RoPE.
    var q: Tensor, k: Tensor, v: Tensor
    /// The attention forward's saved state, and its output as `[N, H·hd]` rows.
    var attention: AttentionState
    var attCat: Tensor
    /// The stream after attention, its normalised form and scale.
    var xMid: Tensor, h2: Tensor, rstd2: [Float]
    /// The MLP's state.
    var mlp: MLPActivations

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
    /// SwiGLU: gate and up projections `[N, F]` and their product `m = silu(g) ∘ u`.
    case dense(g: Tensor, u: Tensor, m: Tensor)
    case moe(MoEActivations)
    case none
}

/// A forward pass's results: logits `[B, T, V]` and, when kept, what the backward needs.
public final class ForwardPass: @unchecked Sendable {
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
/// One or two rows (a decoding step) go through GEMV: a GEMM packs a copy of W on every call,
/// which for one row costs more than the product (measured: 61% of a generation's time was
/// OpenBLAS's packing before this).
@inline(__always)
func project(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>,
             rows: Int, in k: Int, out n: Int, accumulate: Bool = false) {
    if rows <= 2 {
        for r in 0..<rows {
            BLAS.sgemv(.none, m: n, n: k, a: w, lda: k, x: x + r * k, beta: accumulate ? 1 : 0, y: y + r * n)
        }
        return
    }
    BLAS.sgemm(.none, .transpose, m: rows, n: n, k: k, a: x, lda: k, b: w, ldb: k, beta: accumulate ? 1 : 0, c: y, ldc: n)
}

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

extension CausalLM {
    /// The attention mask every layer uses: causal, with ALiBi slopes for an ALiBi model.
    var attentionMask: AttentionMask {
        if case .alibi = config.positions { return AttentionMask(isCausal: true, alibi: ALiBi(heads: config.heads)) }
        return .causal
    }

    /// Rotates rows of `x [B·T, heads·hd]` in place: positions `firstPosition ..< firstPosition + T`
    /// within each sequence (`inverse`: the backward's rotation by the negated angles).
    func applyRoPE(_ x: UnsafeMutablePointer<Float>, batch B: Int, length T: Int, heads: Int, firstPosition: Int = 0,
                   inverse: Bool = false) throws {
        guard let rope else { return }
        let table = try rope.embedding(positions: firstPosition + T)
        let hd = config.headDim, ld = heads * hd
        for b in 0..<B {
            for h in 0..<heads {
                try table.rotate(x + b * T * ld + h * hd, rows: T, stride: ld, firstPosition: firstPosition, inverse: inverse)
            }
        }
    }

    /// The embedding rows of `tokens`: `[tokens.count, D]`.
    func embed(_ tokens: [Int32]) throws -> Tensor {
        let D = config.hiddenSize, emb = parameters.pointer("model.embed_tokens.weight")
        var x = try Tensor(uninitialized: [tokens.count, D])
        let xp = x.unsafeMutableBaseAddress()
        for (n, t) in tokens.enumerated() { (xp + n * D).update(from: emb + Int(t) * D, count: D) }
        return x
    }

    /// The start of `layer`'s attention block on the stream `x [B·T, D]`: `h = RMSNorm(x)` (each
    /// row's scale into `rstd` when given), the q, k, v projections, and RoPE on q and k at
    /// positions `firstPosition ..<` of each sequence.
    func attentionInputs(layer: Int, x: Tensor, batch B: Int, length T: Int, firstPosition: Int = 0,
                         rstd: UnsafeMutablePointer<Float>?) throws -> (h: Tensor, q: Tensor, k: Tensor, v: Tensor) {
        let c = config, P = parameters, pre = "model.layers.\(layer)."
        let (N, D, H, Hkv, hd) = (B * T, c.hiddenSize, c.heads, c.kvHeads, c.headDim)
        var h = try Tensor(uninitialized: [N, D])
        rmsNorm(x.unsafeBaseAddress, P.pointer(pre + "input_layernorm.weight"), h.unsafeMutableBaseAddress(), rstd: rstd,
                rows: N, width: D, eps: Float(c.rmsNormEps))
        var q = try Tensor(uninitialized: [N, H * hd]), k = try Tensor(uninitialized: [N, Hkv * hd])
        var v = try Tensor(uninitialized: [N, Hkv * hd])
        project(h.unsafeBaseAddress, P.pointer(pre + "self_attn.q_proj.weight"), q.unsafeMutableBaseAddress(), rows: N, in: D, out: H * hd)
        project(h.unsafeBaseAddress, P.pointer(pre + "self_attn.k_proj.weight"), k.unsafeMutableBaseAddress(), rows: N, in: D, out: Hkv * hd)
        project(h.unsafeBaseAddress, P.pointer(pre + "self_attn.v_proj.weight"), v.unsafeMutableBaseAddress(), rows: N, in: D, out: Hkv * hd)
        try applyRoPE(q.unsafeMutableBaseAddress(), batch: B, length: T, heads: H, firstPosition: firstPosition)
        try applyRoPE(k.unsafeMutableBaseAddress(), batch: B, length: T, heads: Hkv, firstPosition: firstPosition)
        return (h, q, k, v)
    }

    /// The forward pass over `tokens` (`[B, T]` row-major ids). With `keepForBackward`, every
    /// activation the backward needs is kept in the result.
    public func forward(tokens: [Int32], batch B: Int, length T: Int, keepForBackward: Bool = false,
                        threads: Int? = nil) throws -> ForwardPass {
        try checkTokens(tokens, batch: B, length: T)
        let c = config, P = parameters
        let (N, D, V, H, hd) = (B * T, c.hiddenSize, c.vocabSize, c.heads, c.headDim)
        let eps = Float(c.rmsNormEps)
        let threads = threads ?? Parallel.defaultThreads
        var x = try embed(tokens)
        let pass = ForwardPass(batch: B, length: T, tokens: tokens, logits: try Tensor(uninitialized: [B, T, V]))
        for layer in 0..<c.layers {
            let pre = "model.layers.\(layer)."
            // Attention block: h1 = RMSNorm(x); q, k, v projections; RoPE; attention; o_proj.
            var rstd1 = [Float](repeating: 0, count: N)
            let (h1, q, k, v) = try attentionInputs(layer: layer, x: x, batch: B, length: T, rstd: &rstd1)
            let (out, state) = try attend(layer: layer, q: q, k: k, v: v, batch: B, length: T, keep: keepForBackward, threads: threads)
            // [B, H, T, hd] → rows [N, H·hd].
            let attCat = try out.permuted([0, 2, 1, 3]).contiguous().reshaped([N, H * hd])
            var xMid = x
            project(attCat.unsafeBaseAddress, P.pointer(pre + "self_attn.o_proj.weight"), xMid.unsafeMutableBaseAddress(),
                    rows: N, in: H * hd, out: D, accumulate: true)
            // MLP block: h2 = RMSNorm(x); SwiGLU or MoE; residual.
            var h2 = try Tensor(uninitialized: [N, D]), rstd2 = [Float](repeating: 0, count: N)
            rmsNorm(xMid.unsafeBaseAddress, P.pointer(pre + "post_attention_layernorm.weight"), h2.unsafeMutableBaseAddress(),
                    rstd: &rstd2, rows: N, width: D, eps: eps)
            var xOut = xMid
            let mlp = try mlpForward(layer: layer, h: h2, into: &xOut, rows: N, keep: keepForBackward, pass: pass, threads: threads)
            if keepForBackward {
                pass.layers.append(LayerActivations(xIn: x, h1: h1, rstd1: rstd1, q: q, k: k, v: v, attention: state, attCat: attCat,
                                                    xMid: xMid, h2: h2, rstd2: rstd2, mlp: mlp))
            }
            x = xOut
        }
        // Final norm and LM head.
        var hF = try Tensor(uninitialized: [N, D]), rstdF = [Float](repeating: 0, count: N)
        rmsNorm(x.unsafeBaseAddress, P.pointer("model.norm.weight"), hF.unsafeMutableBaseAddress(), rstd: &rstdF, rows: N, width: D, eps: eps)
        project(hF.unsafeBaseAddress, P.pointer(headName), pass.logits.unsafeMutableBaseAddress(), rows: N, in: D, out: V)
        if keepForBackward {
            pass.xOut = x
            pass.hF = hF
            pass.rstdF = rstdF
        }
        return pass
    }

    /// One layer's attention on rows `q [N, H·hd]`, `k`, `v [N, Hkv·hd]` viewed as `[B, heads, T, hd]`:
    /// returns the output `[B, H, T, hd]` and the state its backward needs.
    func attend(layer: Int, q: Tensor, k: Tensor, v: Tensor, batch B: Int, length T: Int, keep: Bool,
                threads: Int) throws -> (Tensor, AttentionState) {
        let c = config, (H, Hkv, hd) = (c.heads, c.kvHeads, c.headDim)
        let qv = try q.reshaped([B, T, H, hd]).permuted([0, 2, 1, 3])
        let kv = try k.reshaped([B, T, Hkv, hd]).permuted([0, 2, 1, 3])
        let vv = try v.reshaped([B, T, Hkv, hd]).permuted([0, 2, 1, 3])
        switch c.attention[layer] {
        case .exact:
            if !keep {
                return (try scaledDotProductAttention(queries: qv, keys: kv, values: vv, mask: attentionMask, threads: threads), .none)
            }
            let f = try scaledDotProductAttentionForward(queries: qv, keys: kv, values: vv, mask: attentionMask, threads: threads)
            return (f.output, .softmax(f))
        case .bigbird:
            let plan = try bigBirdPlan(layer: layer, length: T)
            let f = try bigBirdAttentionForward(queries: qv, keys: kv, values: vv, plan: plan, alibi: attentionMask.alibi, threads: threads)
            return (f.output, keep ? .softmax(f) : .none)
        case .linear(let map):
            let f = try linearAttentionForward(queries: qv, keys: kv, values: vv, featureMap: map, causal: true, threads: threads)
            return (f.output, keep ? .linear(f) : .none)
        case .infini:
            let infini = try infiniAttention(layer: layer)
            return (try infini(queries: qv, keys: kv, values: vv, threads: threads), keep ? .infini : .none)
        }
    }

    func bigBirdPlan(layer: Int, length T: Int) throws -> BigBirdPlan {
        guard case .bigbird(let b, let w, let r, let seed) = config.attention[layer] else { preconditionFailure("not a BigBird layer") }
        return try BigBirdPlan(sequenceLength: T, heads: config.heads, blockSize: b, globalBlocks: 1, windowBlocks: w,
                               randomBlocks: r, seed: seed &+ UInt64(layer), causal: true)
    }

    func infiniAttention(layer: Int) throws -> InfiniAttention {
        guard case .infini(let segment, let update) = config.attention[layer] else { preconditionFailure("not an Infini layer") }
        let beta = Array(UnsafeBufferPointer(start: parameters.pointer("model.layers.\(layer).self_attn.infini_beta"),
                                             count: config.heads))
        return try InfiniAttention(segmentLength: segment, update: update, beta: beta)
    }

    /// The MLP of `layer` on normalised rows `h [N, D]`, added into the residual stream `x`.
    func mlpForward(layer: Int, h: Tensor, into x: inout Tensor, rows N: Int, keep: Bool, pass: ForwardPass,
                    threads: Int) throws -> MLPActivations {
        let c = config, D = c.hiddenSize, pre = "model.layers.\(layer)."
        if c.architecture == .mixtral {
            return try mixtureForward(layer: layer, h: h, into: &x, rows: N, keep: keep, pass: pass, threads: threads)
        }
        let F = c.intermediateSize, P = parameters
        var g = try Tensor(uninitialized: [N, F]), u = try Tensor(uninitialized: [N, F]), m = try Tensor(uninitialized: [N, F])
        project(h.unsafeBaseAddress, P.pointer(pre + "mlp.gate_proj.weight"), g.unsafeMutableBaseAddress(), rows: N, in: D, out: F)
        project(h.unsafeBaseAddress, P.pointer(pre + "mlp.up_proj.weight"), u.unsafeMutableBaseAddress(), rows: N, in: D, out: F)
        ak_swiglu(g.unsafeBaseAddress, u.unsafeBaseAddress, m.unsafeMutableBaseAddress(), N * F)
        project(m.unsafeBaseAddress, P.pointer(pre + "mlp.down_proj.weight"), x.unsafeMutableBaseAddress(), rows: N, in: F, out: D,
                accumulate: true)
        return keep ? .dense(g: g, u: u, m: m) : .none
    }
}
