import AttentionTensor
import Foundation
import LongAttention
import LongContextModel

/// `lora-train`: one Temp-LoRA training step (forward, backward, AdamW on the adapter) of the real
/// SmolLM2 GGUF of `--models-dir` (Q4_1 weights) with LoRA rank 64 on every projection, on `T`
/// tokens: the base's products dequantise the stored blocks panel by panel, forward and backward.
/// `gflops` counts the step's products (forward `2·N·P`, backward `2·N·P` for dx only — the base
/// takes no gradient — LoRA's own `2·N·r·(3·in + 2·out)` forward and `2·N·r·(3·in + 2·out)`
/// backward, and causal attention's `4·T²·d·H/2` forward ×3.5 with the backward); `peakFraction`
/// is that over the sgemm peak of the same run. Skipped (no row) when the model file is absent.
func benchLoRATrain(models: String, threads: Int, peak: Double?, quick: Bool) throws -> [Row] {
    let path = models + "/SmolLM2-135M-Instruct.Q4_1.gguf"
    guard FileManager.default.fileExists(atPath: path) else {
        progress("lora-train: \(path) is missing (make models); no row")
        return []
    }
    let base = try CausalLM(gguf: path)
    let c = base.config
    let T = quick ? 512 : 2048, rank = 64
    let adapter = try LoRAAdapter(model: base, rank: rank, alpha: 64, targetModules: TempLoRAOptions().targetModules, seed: 1)
    let model = try base.attaching(adapter)
    let optimizer = try AdamW(parameters: adapter.parameters, beta2: 0.999, weightDecay: 0)
    let unused = try ParameterSet(zerosLike: base.parameters)
    let tokens = (0..<T).map { Int32(($0 * 7919 + 13) % (c.vocabSize - 1000) + 500) }
    progress("lora-train: SmolLM2 Q4_1, rank \(rank) on every projection, T = \(T)")
    func step() throws {
        unused.zero()
        model.lora!.gradients.zero()
        _ = try model.loss(tokens: tokens, batch: 1, length: T, gradients: unused, threads: threads)
        try optimizer.update(adapter.parameters, gradients: model.lora!.gradients, lr: 5e-5)
    }
    try step()   // warm-up: RoPE tables, first-touch allocations
    let t = try measure(minRuns: quick ? 1 : 2, maxRuns: 3, budget: quick ? 1 : 4, singleRunAbove: 20) { try step() }
    let shapes = CausalLM.layout(c).filter { $0.shape.count == 2 && $0.name != "model.embed_tokens.weight" }
    var products = 0.0
    for s in shapes { products += 4 * Double(T) * Double(s.shape[0] * s.shape[1]) }
    products += 4 * Double(T) * Double(c.vocabSize * c.hiddenSize)   // the tied LM head, forward and dx
    for s in shapes { products += 4 * Double(T) * Double(rank) * Double(3 * s.shape[1] + 2 * s.shape[0]) }
    let attention = Double(c.layers * c.heads) * 4 * Double(T) * Double(T) * Double(c.headDim) * 0.5 * 3.5
    let flops = products + attention
    let g = flops / t.median * 1e-9
    let types = Set(try GGUFFile(path: path).tensors.filter { $0.shape.count == 2 }.map { "\($0.type)" }).sorted().joined(separator: ",")
    var row = Row(variant: "lora-train", impl: "smollm2-q4_1-unmerged", B: 1, H: c.heads, Hkv: c.kvHeads, N: T, M: T, d: c.headDim,
                  causal: true, threads: threads, seconds: t.median, gflops: g, peakFraction: peak.map { g / $0 },
                  workspaceBytes: 0, relError: nil, runs: t.runs, minSeconds: t.min,
                  note: String(format: "one LoRA step (r = %d, every projection) on %d tokens: %.0f tokens/s; base products dequantised panel by panel",
                               rank, T, Double(T) / t.median))
    row.model = "SmolLM2-135M-Instruct.Q4_1"
    row.weights = types
    row.tokensPerSecond = Double(T) / t.median
    return [row]
}
