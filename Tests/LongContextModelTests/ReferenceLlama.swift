import Foundation
@testable import LongContextModel

/// A float64 decoder written loop by loop from the definitions (transformers' modeling_llama,
/// modeling_qwen2/3, modeling_mistral, modeling_gemma3, modeling_rope_utils), on plain `[Double]`
/// weights keyed by transformers' names: the reference the model's logits, loss and (through
/// central finite differences) gradients are checked against. Exact attention with sliding
/// windows, RoPE (rotate half; linear, NTK, dynamic NTK, Llama 3, YaRN) or ALiBi, GQA, q/k/v
/// biases, q/k norms, Gemma's sandwich norms with (1 + w), GeGLU, embedding and score scales,
/// SwiGLU or experts, tied or separate head.
struct ReferenceLlama {
    let c: ModelConfig
    var w: [String: [Double]]
    /// An extra element-level mask (layer, head, query, key) → visible, on top of the causal and
    /// window masks: a sparse layer's dense equivalent (a BigBird plan's ``BigBirdPlan/attends``).
    var keyMask: ((Int, Int, Int, Int) -> Bool)? = nil

    init(_ model: CausalLM) {
        c = model.config
        var w = [String: [Double]]()
        for e in model.parameters.entries {
            w[e.name] = (0..<e.count).map { Double(model.parameters.scalars[e.offset + $0]) }
        }
        self.w = w
    }

    func rmsNorm(_ x: [Double], _ g: [Double]) -> [Double] {
        let r = 1 / (x.map { $0 * $0 }.reduce(0, +) / Double(x.count) + c.rmsNormEps).squareRoot()
        return zip(x, g).map { $0 * r * ($1 + Double(c.normWeightOffset)) }
    }

    /// Inverse frequencies of the layer's RoPE for a sequence of `T` tokens, and the cos/sin factor.
    func frequencies(layer: Int, T: Int) -> (inv: [Double], factor: Double)? {
        guard case .rope(let theta, let scaling) = c.positions(of: layer) else { return nil }
        let d = c.headDim
        func plain(_ b: Double) -> [Double] { stride(from: 0, to: d, by: 2).map { 1 / Foundation.pow(b, Double($0) / Double(d)) } }
        switch scaling {
        case .none: return (plain(theta), 1)
        case .linear(let f): return (plain(theta).map { $0 / f }, 1)
        case .ntk(let f): return (plain(theta * Foundation.pow(f, Double(d) / Double(d - 2))), 1)
        case .dynamic(let f):
            let C = Double(c.maxPositionEmbeddings), L = Swift.max(Double(T), C)
            return (plain(theta * Foundation.pow(f * L / C - (f - 1), Double(d) / Double(d - 2))), 1)
        case .llama3(let f, let lo, let hi, let ctx):
            // modeling_rope_utils._compute_llama3_parameters, term by term.
            let lowWave = Double(ctx) / lo, highWave = Double(ctx) / hi
            return (plain(theta).map { inv in
                let wave = 2 * Double.pi / inv
                let scaled = wave > lowWave ? inv / f : inv
                let smooth = (Double(ctx) / wave - lo) / (hi - lo)
                let medium = !(wave < highWave) && !(wave > lowWave)
                return medium ? (1 - smooth) * scaled / f + smooth * scaled : scaled
            }, 1)
        case .yarn(let f, let ctx, let fast, let slow, let att, let truncate):
            func dim(_ rot: Double) -> Double { Double(d) * Foundation.log(Double(ctx) / (rot * 2 * Double.pi)) / (2 * Foundation.log(theta)) }
            var low = dim(fast), high = dim(slow)
            if truncate { low = low.rounded(.down); high = high.rounded(.up) }
            low = Swift.max(low, 0); high = Swift.min(high, Double(d - 1))
            if low == high { high += 0.001 }
            let ext = plain(theta)
            return ((0..<(d / 2)).map { i in
                let ramp = Swift.min(1, Swift.max(0, (Double(i) - low) / (high - low)))
                let extrapolation = 1 - ramp
                return ext[i] / f * (1 - extrapolation) + ext[i] * extrapolation
            }, att)
        }
    }

    /// y = W x, W [out, in] row-major.
    func linear(_ name: String, _ x: [Double], out: Int) -> [Double] {
        let W = w[name]!, n = x.count
        var y = [Double](repeating: 0, count: out)
        W.withUnsafeBufferPointer { W in
            x.withUnsafeBufferPointer { x in
                for o in 0..<out {
                    var acc = 0.0
                    for i in 0..<n { acc += W[o * n + i] * x[i] }
                    y[o] = acc
                }
            }
        }
        return y
    }

    func rope(_ v: inout [Double], position p: Int, layer: Int, T: Int) {
        guard let (inv, factor) = frequencies(layer: layer, T: T) else { return }
        let h = c.headDim / 2
        for i in 0..<h {
            let a = Double(p) * inv[i]
            let (x1, x2) = (v[i], v[i + h])
            v[i] = (x1 * Foundation.cos(a) - x2 * Foundation.sin(a)) * factor
            v[i + h] = (x2 * Foundation.cos(a) + x1 * Foundation.sin(a)) * factor
        }
    }

    func act(_ g: Double) -> Double {
        switch c.activation {
        case .silu: return g / (1 + Foundation.exp(-g))
        case .geluTanh: return 0.5 * g * (1 + Foundation.tanh((2 / Double.pi).squareRoot() * (g + 0.044715 * g * g * g)))
        }
    }

    /// Logits `[B·T, V]` of `tokens [B, T]`.
    func logits(_ tokens: [Int32], B: Int, T: Int) -> [[Double]] {
        let (D, H, Hkv, hd, V) = (c.hiddenSize, c.heads, c.kvHeads, c.headDim, c.vocabSize)
        var out = [[Double]]()
        let emb = w["model.embed_tokens.weight"]!
        for b in 0..<B {
            let es = Double(c.embeddingScale ?? 1)
            var x = (0..<T).map { t in Array(emb[Int(tokens[b * T + t]) * D..<(Int(tokens[b * T + t]) + 1) * D]).map { $0 * es } }
            for l in 0..<c.layers {
                let p = "model.layers.\(l)."
                let h = x.map { rmsNorm($0, w[p + "input_layernorm.weight"]!) }
                func proj(_ name: String, _ x: [Double], out: Int) -> [Double] {
                    let y = linear(p + "self_attn.\(name).weight", x, out: out)
                    guard let bias = w[p + "self_attn.\(name).bias"] else { return y }
                    return zip(y, bias).map { $0 + $1 }
                }
                var q = h.map { proj("q_proj", $0, out: H * hd) }
                var k = h.map { proj("k_proj", $0, out: Hkv * hd) }
                let v = h.map { proj("v_proj", $0, out: Hkv * hd) }
                for t in 0..<T {
                    for head in 0..<H {
                        var s = Array(q[t][head * hd..<(head + 1) * hd])
                        if c.queryKeyNorm { s = rmsNorm(s, w[p + "self_attn.q_norm.weight"]!) }
                        rope(&s, position: t, layer: l, T: T)
                        q[t].replaceSubrange(head * hd..<(head + 1) * hd, with: s)
                    }
                    for head in 0..<Hkv {
                        var s = Array(k[t][head * hd..<(head + 1) * hd])
                        if c.queryKeyNorm { s = rmsNorm(s, w[p + "self_attn.k_norm.weight"]!) }
                        rope(&s, position: t, layer: l, T: T)
                        k[t].replaceSubrange(head * hd..<(head + 1) * hd, with: s)
                    }
                }
                let scale = c.attentionScale ?? 1 / Double(hd).squareRoot()
                let first: (Int) -> Int = { i in c.window(of: l).map { Swift.max(0, i - $0 + 1) } ?? 0 }
                var att = [[Double]](repeating: [Double](repeating: 0, count: H * hd), count: T)
                for head in 0..<H {
                    let kh = head / (H / Hkv)
                    let slope: Double = {
                        if case .alibi = c.positions { return Foundation.pow(2, -8 * Double(head + 1) / Double(H)) }
                        return 0
                    }()
                    for i in 0..<T {
                        let j0 = first(i)
                        var s = (j0...i).map { j -> Double in
                            if let keyMask, !keyMask(l, head, i, j) { return -Double.infinity }
                            var dot = 0.0
                            for t in 0..<hd { dot += q[i][head * hd + t] * k[j][kh * hd + t] }
                            return dot * scale - slope * Double(i - j)
                        }
                        let m = s.max()!
                        s = s.map { Foundation.exp($0 - m) }
                        let z = s.reduce(0, +)
                        for j in j0...i { for t in 0..<hd { att[i][head * hd + t] += s[j - j0] / z * v[j][kh * hd + t] } }
                    }
                }
                for t in 0..<T {
                    var o = linear(p + "self_attn.o_proj.weight", att[t], out: D)
                    if c.sandwichNorms { o = rmsNorm(o, w[p + "post_attention_layernorm.weight"]!) }
                    for i in 0..<D { x[t][i] += o[i] }
                    let h2 = rmsNorm(x[t], w[p + (c.sandwichNorms ? "pre_feedforward_layernorm.weight" : "post_attention_layernorm.weight")]!)
                    if c.architecture == .mixtral {
                        // Router softmax, top-k (ties to the lower index), weights renormalised over the k.
                        let logits = linear(p + "block_sparse_moe.gate.weight", h2, out: c.experts)
                        let mx = logits.max()!
                        let pr = logits.map { Foundation.exp($0 - mx) }, z = pr.reduce(0, +)
                        let top = Array(pr.indices.sorted { pr[$0] != pr[$1] ? pr[$0] > pr[$1] : $0 < $1 }.prefix(c.expertsPerToken))
                        let norm = top.reduce(0.0) { $0 + pr[$1] / z }
                        for e in top {
                            let q = p + "block_sparse_moe.experts.\(e)."
                            let g = linear(q + "w1.weight", h2, out: c.expertSize(e)), u = linear(q + "w3.weight", h2, out: c.expertSize(e))
                            let y = linear(q + "w2.weight", zip(g, u).map { $0 / (1 + Foundation.exp(-$0)) * $1 }, out: D)
                            for i in 0..<D { x[t][i] += pr[e] / z / norm * y[i] }
                        }
                        continue
                    }
                    let g = linear(p + "mlp.gate_proj.weight", h2, out: c.intermediateSize)
                    let u = linear(p + "mlp.up_proj.weight", h2, out: c.intermediateSize)
                    let m = zip(g, u).map { act($0) * $1 }
                    var dwn = linear(p + "mlp.down_proj.weight", m, out: D)
                    if c.sandwichNorms { dwn = rmsNorm(dwn, w[p + "post_feedforward_layernorm.weight"]!) }
                    for i in 0..<D { x[t][i] += dwn[i] }
                }
            }
            let head = c.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"
            for t in 0..<T { out.append(linear(head, rmsNorm(x[t], w["model.norm.weight"]!), out: V)) }
        }
        return out
    }

    /// Mean next-token cross-entropy (targets −1 skipped).
    func loss(_ tokens: [Int32], B: Int, T: Int, targets: [Int32]) -> Double {
        let z = logits(tokens, B: B, T: T)
        var total = 0.0, n = 0
        for (r, t) in targets.enumerated() where t >= 0 {
            let m = z[r].max()!
            total += m + Foundation.log(z[r].map { Foundation.exp($0 - m) }.reduce(0, +)) - z[r][Int(t)]
            n += 1
        }
        return total / Double(n)
    }
}
