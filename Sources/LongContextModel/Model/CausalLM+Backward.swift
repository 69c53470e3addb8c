import AttentionTensor
import CAttentionKernels
import Foundation
import LongAttention

/// The loss of one batch: the mean next-token cross-entropy over the positions that have a target.
public struct LossResult: Sendable {
    /// Mean cross-entropy in nats over `positions` targets (transformers' `labels = input_ids` loss).
    public let loss: Double
    public let positions: Int
    /// Logits `[B, T, V]` (before the gradient overwrote them), when asked for.
    public let logits: Tensor?
    /// MoE models: the load-balancing and z-losses summed over layers (not in `loss`).
    public let loadBalancingLoss: Double, routerZLoss: Double
}

extension CausalLM {
    /// Next-token targets of `tokens [B, T]`: position t predicts token t + 1; the last position
    /// of each sequence has none (−1).
    public static func nextTokenTargets(_ tokens: [Int32], batch B: Int, length T: Int) -> [Int32] {
        var t = [Int32](repeating: -1, count: B * T)
        for b in 0..<B {
            for i in 0..<(T - 1) { t[b * T + i] = tokens[b * T + i + 1] }
        }
        return t
    }

    /// The mean cross-entropy of `tokens [B, T]` against `targets` (default: the next tokens; −1
    /// marks a position without a target, as context-only positions in Temp-LoRA), and with
    /// `gradients` its gradient accumulated (+=) into them, times `gradientScale` (1/steps under
    /// gradient accumulation; `gradients` must have the layout of ``parameters``, else
    /// ``ModelError/layoutMismatch(what:found:expected:)``). With `routerAuxLoss`, MoE layers add `routerAuxLossCoef` × their mean
    /// load-balancing loss (`E·Σ f_e·P_e`, per layer; transformers pools the layers' tokens instead)
    /// to the gradient, not to the reported loss (reported apart, as transformers does).
    public func loss(tokens: [Int32], batch B: Int, length T: Int, targets: [Int32]? = nil, gradients: ParameterSet? = nil,
                     gradientScale: Float = 1, keepLogits: Bool = false, routerAuxLoss: Bool = false,
                     threads: Int? = nil) throws -> LossResult {
        try checkTokens(tokens, batch: B, length: T)
        // The backward writes each gradient through the offsets of `gradients`: they must be this model's.
        try gradients?.checkLayout(parameters.entries, "the gradients")
        let targets = targets ?? Self.nextTokenTargets(tokens, batch: B, length: T)
        guard targets.count == B * T else { throw ModelError.batchMismatch(count: targets.count, batch: B, length: T) }
        if let bad = targets.firstIndex(where: { $0 < -1 || Int($0) >= config.vocabSize }) {
            throw ModelError.targetOutOfRange(target: Int(targets[bad]), position: bad, vocabulary: config.vocabSize)
        }
        let count = targets.reduce(0) { $0 + ($1 >= 0 ? 1 : 0) }
        let pass = try forward(tokens: tokens, batch: B, length: T, keepForBackward: gradients != nil, threads: threads)
        let logits = keepLogits ? pass.logits.contiguous().copy() : nil
        let (N, V) = (B * T, config.vocabSize)
        // Cross-entropy over row blocks, summed in a fixed order (the same for any thread count).
        let parts = max(1, min(16, N / 64))
        var sums = [Double](repeating: 0, count: parts)
        let zp = pass.logits.unsafeMutableBaseAddress()
        let scale = count > 0 ? gradientScale / Float(count) : 0
        let write: Int32 = gradients != nil ? 1 : 0
        targets.withUnsafeBufferPointer { tp in
            sums.withUnsafeMutableBufferPointer { sp in
                let sp = sp.baseAddress!
                Parallel.run(items: parts, threads: min(parts, threads ?? Parallel.defaultThreads)) { _, queue in
                    while let p = queue.next() {
                        let r0 = N * p / parts, r1 = N * (p + 1) / parts
                        sp[p] = ak_cross_entropy_rows(zp + r0 * V, V, r1 - r0, V, tp.baseAddress! + r0, scale, write)
                    }
                }
            }
        }
        let loss = count > 0 ? sums.reduce(0, +) / Double(count) : 0
        guard loss.isFinite else { throw ModelError.nonFiniteLoss(step: nil) }
        // Training a Mixtral: the load-balancing loss, averaged over layers, weighted by router_aux_loss_coef.
        let auxWeight = routerAuxLoss && config.architecture == .mixtral
            ? Float(config.routerAuxLossCoef) / Float(config.layers) * gradientScale : 0
        if let gradients { try backward(pass, gradients: gradients, gradientScale: gradientScale, auxWeight: auxWeight, threads: threads) }
        return LossResult(loss: loss, positions: count, logits: logits, loadBalancingLoss: pass.loadBalancingLoss,
                          routerZLoss: pass.routerZLoss)
    }

    /// The gradient buffer of `name` in `G`, or nil when the weight takes none (frozen).
    func gradient(_ G: ParameterSet, _ name: String) -> UnsafeMutablePointer<Float>? {
        G.entry(name) != nil ? G.pointer(name) : nil
    }

    /// The backward of `y = x · Wᵀ` for the weight `name`: `dx (+)= dy · W`, and `dW += dyᵀ · x`
    /// when `G` holds it.
    func projectBackward(_ x: UnsafePointer<Float>, _ name: String, _ dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>?,
                         gradients G: ParameterSet, rows: Int, in k: Int, out n: Int, accumulateDx: Bool) {
        let w = matrix(name)
        if let dx { projectInputGradient(w, dy, dx: dx, rows: rows, in: k, out: n, accumulate: accumulateDx) }
        if let dW = gradient(G, name) {
            BLAS.sgemm(.transpose, .none, m: n, n: k, k: rows, a: dy, lda: n, b: x, ldb: k, beta: 1, c: dW, ldc: k)
        }
        lora?.backward(name, x, dy, dx: dx, rows: rows, in: k, out: n)
    }

    /// The backward of `y = RMSNorm(x) ∘ w(name)` over rows: `dx += …` (accumulated), `dw += …`.
    func normBackward(_ name: String, x: UnsafePointer<Float>, rstd: [Float], dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>,
                      gradients G: ParameterSet, rows: Int, width: Int) {
        withNormWeight(name) { w in
            ak_rmsnorm_backward_rows(x, width, w, rstd, dy, width, dx, width, gradient(G, name), rows, width)
        }
    }

    /// Backward from `pass.logits`, which hold dLoss/dlogits; accumulates into `G`.
    func backward(_ pass: ForwardPass, gradients G: ParameterSet, gradientScale: Float, auxWeight: Float, threads: Int?) throws {
        let c = config
        let (B, T) = (pass.batch, pass.length)
        let (N, D, V, H, Hkv, hd) = (B * T, c.hiddenSize, c.vocabSize, c.heads, c.kvHeads, c.headDim)
        guard let xOut = pass.xOut, let hF = pass.hF, pass.layers.count == c.layers else {
            preconditionFailure("backward needs a forward that kept its activations")
        }
        let threads = threads ?? Parallel.defaultThreads
        // LM head and final norm.
        var dh = try Tensor(uninitialized: [N, D])
        projectBackward(hF.unsafeBaseAddress, headName, pass.logits.unsafeBaseAddress, dx: dh.unsafeMutableBaseAddress(),
                        gradients: G, rows: N, in: D, out: V, accumulateDx: false)
        var dx = try Tensor(zeros: [N, D])
        normBackward("model.norm.weight", x: xOut.unsafeBaseAddress, rstd: pass.rstdF, dy: dh.unsafeBaseAddress,
                     dx: dx.unsafeMutableBaseAddress(), gradients: G, rows: N, width: D)
        for layer in stride(from: c.layers - 1, through: 0, by: -1) {
            let a = pass.layers[layer], pre = "model.layers.\(layer).", names = normNames(layer)
            // MLP block: x_out = x_mid + MLP(RMSNorm(x_mid)) (or + RMSNorm(MLP(…)) with sandwich
            // norms); dx is dL/dx_out, and stays the residual path's gradient; dh collects dL/dh2.
            var dMLP = dx
            if let post = names.postMLP, let (m, r) = a.postMLP {
                dMLP = try Tensor(zeros: [N, D])
                normBackward(post, x: m.unsafeBaseAddress, rstd: r, dy: dx.unsafeBaseAddress, dx: dMLP.unsafeMutableBaseAddress(),
                             gradients: G, rows: N, width: D)
            }
            try mlpBackward(layer: layer, a, dOut: dMLP, dh: &dh, rows: N, pass: pass, gradients: G, auxWeight: auxWeight, threads: threads)
            normBackward(names.preMLP, x: a.xMid.unsafeBaseAddress, rstd: a.rstd2, dy: dh.unsafeBaseAddress,
                         dx: dx.unsafeMutableBaseAddress(), gradients: G, rows: N, width: D)
            // Attention block: x_mid = x_in + o_proj(attention(RoPE(q), RoPE(k), v)) (post-normed with sandwich norms).
            var dO = dx
            if let post = names.postAttention, let (o, r) = a.postAttention {
                dO = try Tensor(zeros: [N, D])
                normBackward(post, x: o.unsafeBaseAddress, rstd: r, dy: dx.unsafeBaseAddress, dx: dO.unsafeMutableBaseAddress(),
                             gradients: G, rows: N, width: D)
            }
            var dAtt = try Tensor(uninitialized: [N, H * hd])
            projectBackward(a.attCat.unsafeBaseAddress, pre + "self_attn.o_proj.weight", dO.unsafeBaseAddress,
                            dx: dAtt.unsafeMutableBaseAddress(), gradients: G, rows: N, in: H * hd, out: D, accumulateDx: false)
            let grads = try attentionBackward(layer: layer, a, dOutRows: dAtt, batch: B, length: T, threads: threads)
            if let beta = grads.beta, let gb = gradient(G, pre + "self_attn.infini_beta") {
                for h in 0..<H { gb[h] += beta[h] }
            }
            // Exact attention returns token-major gradients (`[B, T, heads, hd]`, already rows); the
            // other variants' `[B, heads, T, hd]` are permuted into rows.
            let tokenMajor = c.attention[layer] == .exact
            func rows(_ g: Tensor, _ heads: Int) throws -> Tensor {
                tokenMajor ? try g.reshaped([N, heads * hd]) : try g.permuted([0, 2, 1, 3]).contiguous().reshaped([N, heads * hd])
            }
            var dq = try rows(grads.queries, H), dk = try rows(grads.keys, Hkv)
            let dv = try rows(grads.values, Hkv)
            try applyRoPE(dq.unsafeMutableBaseAddress(), layer: layer, batch: B, length: T, heads: H, inverse: true)
            try applyRoPE(dk.unsafeMutableBaseAddress(), layer: layer, batch: B, length: T, heads: Hkv, inverse: true)
            if let n = a.qkNorm {
                var dqRaw = try Tensor(zeros: [N, H * hd]), dkRaw = try Tensor(zeros: [N, Hkv * hd])
                normBackward(pre + "self_attn.q_norm.weight", x: n.q.unsafeBaseAddress, rstd: n.rstdQ, dy: dq.unsafeBaseAddress,
                             dx: dqRaw.unsafeMutableBaseAddress(), gradients: G, rows: N * H, width: hd)
                normBackward(pre + "self_attn.k_norm.weight", x: n.k.unsafeBaseAddress, rstd: n.rstdK, dy: dk.unsafeBaseAddress,
                             dx: dkRaw.unsafeMutableBaseAddress(), gradients: G, rows: N * Hkv, width: hd)
                (dq, dk) = (dqRaw, dkRaw)
            }
            if c.qkvBias {
                for (name, g, width) in [("q_proj", dq, H * hd), ("k_proj", dk, Hkv * hd), ("v_proj", dv, Hkv * hd)] {
                    guard let db = gradient(G, pre + "self_attn.\(name).bias") else { continue }
                    let gp = g.unsafeBaseAddress
                    for r in 0..<N { for i in 0..<width { db[i] += gp[r * width + i] } }
                }
            }
            let dhp = dh.unsafeMutableBaseAddress()
            projectBackward(a.h1.unsafeBaseAddress, pre + "self_attn.q_proj.weight", dq.unsafeBaseAddress, dx: dhp,
                            gradients: G, rows: N, in: D, out: H * hd, accumulateDx: false)
            projectBackward(a.h1.unsafeBaseAddress, pre + "self_attn.k_proj.weight", dk.unsafeBaseAddress, dx: dhp,
                            gradients: G, rows: N, in: D, out: Hkv * hd, accumulateDx: true)
            projectBackward(a.h1.unsafeBaseAddress, pre + "self_attn.v_proj.weight", dv.unsafeBaseAddress, dx: dhp,
                            gradients: G, rows: N, in: D, out: Hkv * hd, accumulateDx: true)
            normBackward(names.preAttention, x: a.xIn.unsafeBaseAddress, rstd: a.rstd1, dy: dh.unsafeBaseAddress,
                         dx: dx.unsafeMutableBaseAddress(), gradients: G, rows: N, width: D)
        }
        // Embedding: each token's row receives its position's gradient (times the embedding scale).
        if let dE = gradient(G, "model.embed_tokens.weight") {
            let dxp = dx.unsafeBaseAddress, s = c.embeddingScale ?? 1
            for (n, t) in pass.tokens.enumerated() {
                let row = dE + Int(t) * D, g = dxp + n * D
                for i in 0..<D { row[i] += s * g[i] }
            }
        }
    }

    /// One layer's attention backward from `dOutRows [N, H·hd]`: gradients of q, k, v (token-major
    /// `[B, T, heads, hd]` for exact attention, `[B, heads, T, hd]` for the other variants) and of Infini's β.
    func attentionBackward(layer: Int, _ a: LayerActivations, dOutRows: Tensor, batch B: Int, length T: Int,
                           threads: Int) throws -> AttentionGradients {
        let c = config, (H, Hkv, hd) = (c.heads, c.kvHeads, c.headDim)
        let qv = try a.q.reshaped([B, T, H, hd]).permuted([0, 2, 1, 3])
        let kv = try a.k.reshaped([B, T, Hkv, hd]).permuted([0, 2, 1, 3])
        let vv = try a.v.reshaped([B, T, Hkv, hd]).permuted([0, 2, 1, 3])
        let dOutView = try dOutRows.reshaped([B, T, H, hd]).permuted([0, 2, 1, 3])
        if case (.exact, .softmax(let f)) = (c.attention[layer], a.attention) {
            return try scaledDotProductAttentionBackward(queries: qv, keys: kv, values: vv, forward: f, outputGradient: dOutView,
                                                         scale: attentionScale, mask: attentionMask(layer: layer),
                                                         gradientLayout: .tokenMajor, threads: threads)
        }
        let dOut = dOutView.contiguous()
        switch (c.attention[layer], a.attention) {
        case (.bigbird, .softmax(let f)):
            return try bigBirdAttentionBackward(queries: qv, keys: kv, values: vv, plan: try bigBirdPlan(layer: layer, length: T),
                                                forward: f, outputGradient: dOut, alibi: attentionMask(layer: layer).alibi, threads: threads)
        case (.linear(let map), .linear(let f)):
            return try linearAttentionBackward(queries: qv, keys: kv, values: vv, forward: f, outputGradient: dOut,
                                               featureMap: map, causal: true, threads: threads)
        case (.infini, .infini):
            return try infiniAttention(layer: layer).backward(queries: qv, keys: kv, values: vv, outputGradient: dOut, threads: threads)
        default:
            preconditionFailure("layer \(layer): the forward did not keep what the backward needs")
        }
    }

    /// The MLP's backward: from `dOut [N, D]` (dL/dx_out) into `dh` (dL/dh2, overwritten) and the weights' gradients.
    func mlpBackward(layer: Int, _ a: LayerActivations, dOut: Tensor, dh: inout Tensor, rows N: Int, pass: ForwardPass,
                     gradients G: ParameterSet, auxWeight: Float, threads: Int) throws {
        let c = config, D = c.hiddenSize, pre = "model.layers.\(layer)."
        switch a.mlp {
        case .dense(let g, let u, let m):
            let F = c.intermediateSize
            var dm = try Tensor(uninitialized: [N, F]), dg = try Tensor(uninitialized: [N, F]), du = try Tensor(uninitialized: [N, F])
            projectBackward(m.unsafeBaseAddress, pre + "mlp.down_proj.weight", dOut.unsafeBaseAddress,
                            dx: dm.unsafeMutableBaseAddress(), gradients: G, rows: N, in: F, out: D, accumulateDx: false)
            switch c.activation {
            case .silu:
                ak_swiglu_backward(g.unsafeBaseAddress, u.unsafeBaseAddress, dm.unsafeBaseAddress, dg.unsafeMutableBaseAddress(),
                                   du.unsafeMutableBaseAddress(), N * F)
            case .geluTanh:
                ak_geglu_tanh_backward(g.unsafeBaseAddress, u.unsafeBaseAddress, dm.unsafeBaseAddress, dg.unsafeMutableBaseAddress(),
                                       du.unsafeMutableBaseAddress(), N * F)
            }
            let dhp = dh.unsafeMutableBaseAddress()
            projectBackward(a.h2.unsafeBaseAddress, pre + "mlp.gate_proj.weight", dg.unsafeBaseAddress, dx: dhp,
                            gradients: G, rows: N, in: D, out: F, accumulateDx: false)
            projectBackward(a.h2.unsafeBaseAddress, pre + "mlp.up_proj.weight", du.unsafeBaseAddress, dx: dhp,
                            gradients: G, rows: N, in: D, out: F, accumulateDx: true)
        case .moe(let state):
            try mixtureBackward(layer: layer, a, state: state, dOut: dOut, dh: &dh, rows: N, gradients: G, auxWeight: auxWeight,
                            threads: threads)
        case .none:
            preconditionFailure("layer \(layer): the forward did not keep the MLP's activations")
        }
    }
}

extension Tensor {
    /// A copy with its own storage.
    func copy() -> Tensor {
        var c = self
        _ = c.unsafeMutableBaseAddress()   // shared storage: copied here
        return c
    }
}
