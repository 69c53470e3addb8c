import AttentionTensor

/// One decode step: attention of the `n` newest queries `[B, H, n, d]` against everything in the
/// cache's `layer` (which already holds these tokens' keys and values), bottom-right causal: query
/// `i` sees cache positions `j <= i + length - n`. The query heads of a GQA group are stacked into
/// one GEMM; a single query's keys are split across the cores and merged.
///
/// Only the queries are checked for NaN/Inf here: the cache's contents were checked when appended.
public func decodeAttention(queries: Tensor, cache: KVCache, layer: Int, scale: Float? = nil, alibi: ALiBi? = nil,
                            threads: Int? = nil) throws -> Tensor {
    let keys = try cache.keys(layer: layer), values = try cache.values(layer: layer)
    let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: scale,
                                     mask: AttentionMask(isCausal: true, alibi: alibi), threads: threads,
                                     scan: .queries(maxK: cache.maxKey[layer], maxV: cache.maxValue[layer]))
    let plan = ExactAttentionPlan(shape: inputs.shape, implementation: .tiled, threads: inputs.threads)
    return try exactAttention(inputs, plan: plan)
}
