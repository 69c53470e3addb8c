import Foundation
@testable import LongContextModel

/// A float64 Llama written loop by loop from the definition (transformers' modeling_llama), on
/// plain `[Double]` weights keyed by transformers' names: the reference the model's logits, loss
/// and (through central finite differences) gradients are checked against. Exact attention, RoPE
/// (rotate half; linear or NTK scaling) or ALiBi, GQA, SwiGLU, tied or separate head.
struct ReferenceLlama {
    let c: ModelConfig
    var w: [String: [Double]]

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
        return zip(x, g).map { $0 * r * $1 }
    }

    /// y = W x, W [out, in] row-major.
    func linear(_ name: String, _ x: [Double], out: Int) -> [Double] {
        let W = w[name]!, n = x.count
        return (0..<out).map { o in (0..<n).reduce(0.0) { $0 + W[o * n + $1] * x[$1] } }
    }

    func rope(_ v: inout [Double], position p: Int) {
        guard case .rope(let theta, let scaling) = c.positions else { return }
        let d = c.headDim, h = d / 2
        var base = theta, pos = Double(p)
        switch scaling {
        case .none: break
        case .linear(let f): pos /= f
        case .ntk(let f): base = theta * Foundation.pow(f, Double(d) / Double(d - 2))
        }
        for i in 0..<h {
            let a = pos * Foundation.pow(base, -2 * Double(i) / Double(d))
            let (x1, x2) = (v[i], v[i + h])
            v[i] = x1 * Foundation.cos(a) - x2 * Foundation.sin(a)
            v[i + h] = x2 * Foundation.cos(a) + x1 * Foundation.sin(a)
        }
    }

    /// Logits `[B·T, V]` of `tokens [B, T]`.
    func logits(_ tokens: [Int32], B: Int, T: Int) -> [[Double]] {
        let (D, H, Hkv, hd, V) = (c.hiddenSize, c.heads, c.kvHeads, c.headDim, c.vocabSize)
        var out = [[Double]]()
        let emb = w["model.embed_tokens.weight"]!
        for b in 0..<B {
            var x = (0..<T).map { t in Array(emb[Int(tokens[b * T + t]) * D..<(Int(tokens[b * T + t]) + 1) * D]) }
            for l in 0..<c.layers {
                let p = "model.layers.\(l)."
                let h = x.map { rmsNorm($0, w[p + "input_layernorm.weight"]!) }
                var q = h.map { linear(p + "self_attn.q_proj.weight", $0, out: H * hd) }
                var k = h.map { linear(p + "self_attn.k_proj.weight", $0, out: Hkv * hd) }
                let v = h.map { linear(p + "self_attn.v_proj.weight", $0, out: Hkv * hd) }
                for t in 0..<T {
                    for head in 0..<H { var s = Array(q[t][head * hd..<(head + 1) * hd]); rope(&s, position: t); q[t].replaceSubrange(head * hd..<(head + 1) * hd, with: s) }
                    for head in 0..<Hkv { var s = Array(k[t][head * hd..<(head + 1) * hd]); rope(&s, position: t); k[t].replaceSubrange(head * hd..<(head + 1) * hd, with: s) }
                }
                var att = [[Double]](repeating: [Double](repeating: 0, count: H * hd), count: T)
                for head in 0..<H {
                    let kh = head / (H / Hkv)
                    let slope: Double = {
                        if case .alibi = c.positions { return Foundation.pow(2, -8 * Double(head + 1) / Double(H)) }
                        return 0
                    }()
                    for i in 0..<T {
                        var s = (0...i).map { j -> Double in
                            var dot = 0.0
                            for t in 0..<hd { dot += q[i][head * hd + t] * k[j][kh * hd + t] }
                            return dot / Double(hd).squareRoot() - slope * Double(i - j)
                        }
                        let m = s.max()!
                        s = s.map { Foundation.exp($0 - m) }
                        let z = s.reduce(0, +)
                        for j in 0...i { for t in 0..<hd { att[i][head * hd + t] += s[j] / z * v[j][kh * hd + t] } }
                    }
                }
                for t in 0..<T {
                    let o = linear(p + "self_attn.o_proj.weight", att[t], out: D)
                    for i in 0..<D { x[t][i] += o[i] }
                    let h2 = rmsNorm(x[t], w[p + "post_attention_layernorm.weight"]!)
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
                    let m = zip(g, u).map { $0 / (1 + Foundation.exp(-$0)) * $1 }
                    let dwn = linear(p + "mlp.down_proj.weight", m, out: D)
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
