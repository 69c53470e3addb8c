import AttentionTensor
import LongAttention

extension CausalLM {
    /// The logits of positions `firstRow ..< T` of one sequence `tokens [T]` as decoding computes
    /// them: the tokens go through a fresh ``KVCache`` of `cacheType`, `rowsPerStep` at a time, so
    /// no product has more than `rowsPerStep` rows. Returns `[T − firstRow, V]`.
    ///
    /// ``forward(tokens:batch:length:keepForBackward:threads:logitRows:)`` multiplies all T rows at
    /// once, and under `.fast` products of more than ``WeightMatrix/fastRowLimit`` rows take the exact
    /// path; with `rowsPerStep ≤ fastRowLimit` every product here takes the integer kernels, which
    /// is how the fast path's quality (perplexity, top-1 agreement with `.exact`) is measured. Under
    /// `.exact` the result equals the forward pass's up to float32 rounding.
    public func stepwiseLogits(tokens: [Int32], firstRow: Int = 0, rowsPerStep: Int = WeightMatrix.fastRowLimit,
                               cacheType: KVCacheType = .float32, threads: Int? = nil) throws -> Tensor {
        let T = tokens.count, V = config.vocabSize
        guard T >= 1 else { throw ModelError.tooFewTokens(input: "the stepwise-logits input", count: T, minimum: 1) }
        try requireOption((0..<T).contains(firstRow), "firstRow", firstRow, "in 0..<\(T) (the tokens)")
        try requireOption((1...Self.prefillChunk).contains(rowsPerStep), "rowsPerStep", rowsPerStep, "in 1...\(Self.prefillChunk)")
        guard decodesWithCache else {
            throw ModelError.unsupportedModel(operation: "stepwise logits", requirement: "layers that all decode through a KV cache (exact attention)")
        }
        try checkTokens(tokens, batch: 1, length: T)
        var cache = try makeCache(positions: T, chunk: rowsPerStep, type: cacheType)
        var out = try Tensor(uninitialized: [T - firstRow, V])
        let o = out.unsafeMutableBaseAddress()
        var a = 0
        while a < T {
            let b = min(a + rowsPerStep, T), rows = max(0, b - max(a, firstRow))
            let z = try step(Array(tokens[a..<b]), cache: &cache, threads: threads, logitRows: rows)
            z.withUnsafeBufferPointer { (o + (b - rows - firstRow) * V).update(from: $0.baseAddress!, count: rows * V) }
            a = b
        }
        return out
    }
}
