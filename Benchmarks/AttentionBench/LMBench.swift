import AttentionTensor
import Foundation
import LongAttention
import LongContextModel

/// The benchmark model of the language-model issue: vocabulary 260, hidden 256, intermediate 688,
/// 4 layers, 8 heads, 2 KV heads (head dim 32), tied embeddings off, RoPE.
func benchmarkModelConfig() throws -> ModelConfig {
    try ModelConfig(vocabSize: 260, hiddenSize: 256, intermediateSize: 688, layers: 4, heads: 8, kvHeads: 2, rmsNormEps: 1e-5,
                    maxPositionEmbeddings: 2048)
}

/// FLOPs of one training token: 6 per weight touched (forward 2, backward 4; the embedding lookup
/// is not a product) plus causal attention's 4·T·d per head forward, ×3.5 with the backward.
func trainingFlopsPerToken(_ c: ModelConfig, length T: Int) -> Double {
    let weights = CausalLM.layout(c).filter { $0.name != "model.embed_tokens.weight" && $0.shape.count == 2 }
        .reduce(0) { $0 + $1.shape[0] * $1.shape[1] }
    let attention = Double(c.layers * c.heads) * 4 * Double(T) * Double(c.headDim) * 0.5 * 3.5
    return 6 * Double(weights) + attention
}

/// `lm-train`: optimizer steps (forward, backward, AdamW) of the benchmark model on random tokens,
/// B = 8 sequences of T = 256; `lm-generate`: greedy generation of 256 tokens after a 64-token
/// prompt through the KV cache (prefill included), tokens per second as transformers' `generate`
/// counts them.
func benchLM(variants: [String], threads: Int, peak: Double?, quick: Bool) throws -> [Row] {
    var rows = [Row]()
    let c = try benchmarkModelConfig()
    let model = try CausalLM(config: c, seed: 1)
    let params = model.parameters.count
    if variants.contains("lm-train") {
        let (B, T) = (8, 256)
        var options = TrainingOptions()
        (options.batch, options.length, options.steps, options.warmupSteps, options.evalEvery) = (B, T, 1_000_000, 10, 0)
        options.threads = threads
        var rng = SplitMix64(seed: 3)
        let stream = (0..<200_000).map { _ in Int32(rng.next() % 256) }
        let trainer = try Trainer(model: model, options: options, train: stream, validation: [], directory: nil)
        progress("lm-train: \(params) parameters, B = \(B), T = \(T)")
        var times = [Double]()
        let steps = quick ? 3 : 8
        _ = try trainer.run(until: 1) { _ in }   // warm-up: first-touch allocations, RoPE tables
        for s in 0..<steps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = try trainer.run(until: 2 + s) { _ in }
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) * 1e-9)
        }
        times.sort()
        let median = times[times.count / 2]
        let flops = trainingFlopsPerToken(c, length: T) * Double(B * T)
        let g = flops / median * 1e-9
        // Activations kept for the backward, per layer: x, h1, q, k, v, attention output and lse,
        // x_mid, h2, gate, up, product (floats per token), plus logits and the optimizer's moments.
        let perToken = c.layers * (4 * c.hiddenSize + 2 * c.heads * c.headDim + 2 * c.kvHeads * c.headDim + c.heads
                                   + 3 * c.intermediateSize) + 2 * c.vocabSize
        var row = Row(variant: "lm-train", impl: "llama-exact", B: B, H: c.heads, Hkv: c.kvHeads, N: T, M: T, d: c.headDim,
                      causal: true, threads: threads, seconds: median, gflops: g, peakFraction: peak.map { g / $0 },
                      workspaceBytes: (perToken * B * T + 3 * params) * 4, relError: nil, runs: times.count, minSeconds: times[0],
                      note: String(format: "%d parameters; one optimizer step of %d tokens", params, B * T))
        row.tokensPerSecond = Double(B * T) / median
        rows.append(row)
    }
    if variants.contains("lm-generate") {
        progress("lm-generate: 64-token prompt, 256 new tokens")
        let prompt = (0..<64).map { Int32($0 * 7 % 256) }
        let n = quick ? 64 : 256
        _ = try model.generate(prompt: prompt, maxTokens: 8, threads: threads)
        let t = try measure(minRuns: 3, budget: 1.0) { _ = try model.generate(prompt: prompt, maxTokens: n, threads: threads) }
        let flops = 2.0 * Double(params) * Double(64 + n)
        var row = Row(variant: "lm-generate", impl: "kv-cache-f32", B: 1, H: c.heads, Hkv: c.kvHeads, N: n, M: 64 + n, d: c.headDim,
                      causal: true, threads: threads, seconds: t.median, gflops: flops / t.median * 1e-9,
                      peakFraction: peak.map { flops / t.median * 1e-9 / $0 },
                      workspaceBytes: KVCache.bytes(layers: c.layers, batch: 1, kvHeads: c.kvHeads, capacity: 64 + n,
                                                    headDimension: c.headDim) ?? 0,
                      relError: nil, runs: t.runs, minSeconds: t.min,
                      note: String(format: "greedy, prefill of 64 included; %.0f new tokens/s", Double(n) / t.median))
        row.tokensPerSecond = Double(n) / t.median
        rows.append(row)
    }
    return rows
}
