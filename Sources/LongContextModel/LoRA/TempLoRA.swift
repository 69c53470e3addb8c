import AttentionTensor
import Foundation

/// Options of a Temp-LoRA pass (Wang et al. 2024, arXiv 2401.11504). The paper's settings for 7B
/// models: chunks of 1,024 tokens, 2 epochs per chunk, r = 64, α = 64 on every linear layer,
/// learning rate 5e-5 constant, up to 3,072 tokens of preceding context.
public struct TempLoRAOptions: Sendable, Equatable {
    /// Tokens scored and then trained on per step.
    public var chunk = 256
    /// Preceding tokens given as context (scored against, never trained on as targets).
    public var window = 768
    public var epochs = 2
    public var rank = 8
    public var alpha = 16.0
    public var targetModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    /// Constant learning rate of the adapter's AdamW (no weight decay).
    public var learningRate = 1e-3
    public var seed: UInt64 = 1
    public var threads: Int? = nil

    public init() {}

    public func validate() throws {
        try requireOption(chunk >= 2, "chunk", chunk, ">= 2 (Temp-LoRA)")
        try requireOption(window >= 0, "window", window, ">= 0")
        try requireOption(epochs >= 0, "epochs", epochs, ">= 0")
        try requireOption(rank >= 1, "rank", rank, ">= 1")
        try requireOption(alpha > 0, "alpha", alpha, "> 0")
        try requireOption(learningRate > 0 && learningRate.isFinite, "learning rate", learningRate, "> 0 and finite")
    }
}

/// One chunk's scores: mean next-token loss on its tokens (nats) with the adapter trained on the
/// chunks before it, and with the base model at the same window.
public struct TempLoRAChunk: Sendable, Codable {
    public let index: Int
    public let tokens: Int
    public let adaptedLoss: Double, baseLoss: Double
    /// Seconds spent training the adapter on this chunk (after scoring it).
    public let trainingSeconds: Double
}

/// Temp-LoRA: a long text is taken chunk by chunk; each chunk is first scored with the current
/// adapter, then the adapter trains on it (its tokens as targets, up to `window` preceding tokens
/// as context) before the next chunk. The adapter is discarded at the end; the base never changes.
public func runTempLoRA(model: CausalLM, tokens: [Int32], options o: TempLoRAOptions,
                        progress: (TempLoRAChunk) -> Void = { _ in }) throws -> [TempLoRAChunk] {
    try o.validate()
    guard tokens.count >= 2 else { throw ModelError.tooFewTokens(input: "the Temp-LoRA text", count: tokens.count, minimum: 2) }
    try model.checkTokens(tokens, batch: 1, length: tokens.count)
    let adapter = try LoRAAdapter(model: model, rank: o.rank, alpha: o.alpha, targetModules: o.targetModules, seed: o.seed)
    if adapter.adaptedWeights.contains(where: { model.parameters.entry($0) == nil }) {
        return try runAttachedTempLoRA(model: model, adapter: adapter, tokens: tokens, options: o, progress: progress)
    }
    let optimizer = try AdamW(parameters: adapter.parameters, beta2: 0.999, weightDecay: 0)
    let merged = try ParameterSet(copying: model.parameters)
    let mergedModel = try CausalLM(config: model.config, parameters: merged)
    let mergedGradients = try ParameterSet(zerosLike: merged), adapterGradients = try ParameterSet(zerosLike: adapter.parameters)
    var results = [TempLoRAChunk]()
    var start = 0, index = 0
    while start < tokens.count {
        let end = min(tokens.count, start + o.chunk)
        let from = max(0, start - o.window)
        // Positions from..<end; position p predicts token p + 1, so the chunk's tokens
        // start..<end are the targets of positions start - 1 ..< end - 1 (the first chunk's
        // first token has nothing before it).
        let sequence = Array(tokens[from..<end])
        var targets = [Int32](repeating: -1, count: sequence.count)
        for p in max(from, start - 1)..<(end - 1) { targets[p - from] = tokens[p + 1] }
        guard targets.contains(where: { $0 >= 0 }) else { start = end; continue }
        let base = try model.loss(tokens: sequence, batch: 1, length: sequence.count, targets: targets, threads: o.threads)
        // Without training (epochs 0) the adapter stays zero: the adapted score is the base's.
        var adapted = base
        if o.epochs > 0 {
            try adapter.merge(base: model.parameters, into: merged)
            adapted = try mergedModel.loss(tokens: sequence, batch: 1, length: sequence.count, targets: targets, threads: o.threads)
        }
        let t0 = Date()
        for _ in 0..<o.epochs {
            mergedGradients.zero()
            adapterGradients.zero()
            _ = try mergedModel.loss(tokens: sequence, batch: 1, length: sequence.count, targets: targets,
                                     gradients: mergedGradients, threads: o.threads)
            adapter.gradients(fromMerged: mergedGradients, into: adapterGradients)
            try optimizer.update(adapter.parameters, gradients: adapterGradients, lr: Float(o.learningRate))
            try adapter.merge(base: model.parameters, into: merged)
        }
        let r = TempLoRAChunk(index: index, tokens: adapted.positions, adaptedLoss: adapted.loss, baseLoss: base.loss,
                              trainingSeconds: Date().timeIntervalSince(t0))
        results.append(r)
        progress(r)
        start = end
        index += 1
    }
    return results
}

/// Temp-LoRA on a model whose projections are frozen (a GGUF file's quantised matrices): the
/// adapter is applied unmerged (``CausalLM/attaching(_:)``), every base product dequantising the
/// stored blocks panel by panel, in the backward too. The chunk's adapted score is the loss of
/// the first epoch's forward (the same adapter, the same tokens), so scoring costs no extra pass.
func runAttachedTempLoRA(model: CausalLM, adapter: LoRAAdapter, tokens: [Int32], options o: TempLoRAOptions,
                         progress: (TempLoRAChunk) -> Void) throws -> [TempLoRAChunk] {
    let adapted = try model.attaching(adapter)
    let lora = adapted.lora!
    let optimizer = try AdamW(parameters: adapter.parameters, beta2: 0.999, weightDecay: 0)
    // The float32 vectors' gradients (norms): computed by the backward, never applied.
    let unused = try ParameterSet(zerosLike: model.parameters)
    var results = [TempLoRAChunk]()
    var start = 0, index = 0
    while start < tokens.count {
        let end = min(tokens.count, start + o.chunk)
        let from = max(0, start - o.window)
        let sequence = Array(tokens[from..<end])
        var targets = [Int32](repeating: -1, count: sequence.count)
        for p in max(from, start - 1)..<(end - 1) { targets[p - from] = tokens[p + 1] }
        guard targets.contains(where: { $0 >= 0 }) else { start = end; continue }
        // The base's score without [T, V] logits (a 262K-token vocabulary): the scored positions' losses.
        let first = max(from, start - 1) - from
        let losses = try model.sequenceLosses(sequence, from: first, threads: o.threads)
        let baseLoss = losses[first..<(sequence.count - 1)].reduce(0.0) { $0 + Double($1) } / Double(sequence.count - 1 - first)
        var score = (loss: baseLoss, positions: sequence.count - 1 - first)
        let t0 = Date()
        for epoch in 0..<o.epochs {
            unused.zero()
            lora.gradients.zero()
            let r = try adapted.loss(tokens: sequence, batch: 1, length: sequence.count, targets: targets, gradients: unused,
                                     threads: o.threads)
            if epoch == 0 { score = (r.loss, r.positions) }
            try optimizer.update(adapter.parameters, gradients: lora.gradients, lr: Float(o.learningRate))
        }
        let r = TempLoRAChunk(index: index, tokens: score.positions, adaptedLoss: score.loss, baseLoss: baseLoss,
                              trainingSeconds: Date().timeIntervalSince(t0))
        results.append(r)
        progress(r)
        start = end
        index += 1
    }
    return results
}
