import AttentionTensor

/// One decode step: attention of the `n` newest queries `[B, H, n, d]` against everything in the
/// cache's `layer` (which already holds these tokens' keys and values), bottom-right causal: query
/// `i` sees cache positions `j <= i + length - n`. Returns `[B, H, n, dv]`. The query heads of a
/// GQA group (`H / Hkv` of them) are stacked into one product; a single query's keys are split
/// across the cores and merged.
///
/// A cache of a low-precision ``KVCacheType`` is read as stored (bf16, f16 or q8_0 rows converted
/// in registers): there is no float32 copy of the cache. Tiles of more than 32 stacked rows (a
/// prefill against the cache) convert one key tile at a time for their GEMMs.
///
/// Only the queries are checked for NaN/Inf here: the cache's contents were checked when appended.
public func decodeAttention(queries: Tensor, cache: KVCache, layer: Int, scale: Float? = nil, alibi: ALiBi? = nil,
                            threads: Int? = nil) throws -> Tensor {
    guard (0..<cache.layers).contains(layer) else {
        throw AttentionError.invalidArgument("layer \(layer) outside 0..<\(cache.layers)")
    }
    let mask = AttentionMask(isCausal: true, alibi: alibi)
    let (maxK, maxV) = (cache.maxKey[layer], cache.maxValue[layer])
    if cache.type == .float32 {
        let keys = try cache.keys(layer: layer), values = try cache.values(layer: layer)
        let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: scale, mask: mask,
                                         threads: threads, scan: .queries(maxK: maxK, maxV: maxV))
        let plan = ExactAttentionPlan(shape: inputs.shape, implementation: .tiled, threads: inputs.threads)
        return try exactAttention(inputs, plan: plan)
    }
    // The shape checks of any attention call, against empty key and value tensors of the cache's shape.
    var shape = try AttentionShape(queries: queries,
                                   keys: try Tensor(zeros: [cache.batch, cache.kvHeads, 0, cache.headDimension]),
                                   values: try Tensor(zeros: [cache.batch, cache.kvHeads, 0, cache.valueDimension]))
    shape.M = cache.lengths[layer]
    return try cache.withStoredRows(layer: layer) { stored in
        let inputs = try AttentionInputs(queries: queries, stored: stored, shape: shape, scale: scale, mask: mask,
                                         threads: threads, maxK: maxK, maxV: maxV)
        let plan = ExactAttentionPlan(shape: shape, implementation: .tiled, threads: inputs.threads)
        return try exactAttention(inputs, plan: plan)
    }
}

/// ``decodeAttention(queries:cache:layer:scale:alibi:threads:)`` that also returns each query row's
/// log-sum-exp over the cache's visible positions (`[B, H, n]`, -inf for a row that sees none, e.g.
/// an empty cache): the partial result a cache sharded across processes merges with the
/// (max, sum, output) rule (``mergeAttentionBlock(output:logSumExp:blockOutput:blockLogSumExp:)``).
/// Shapes and masking as there (bottom-right causal against the cache's `length` positions).
public func decodeAttentionKeepingLSE(queries: Tensor, cache: KVCache, layer: Int, scale: Float? = nil,
                                      threads: Int? = nil) throws -> SoftmaxAttentionForward {
    guard (0..<cache.layers).contains(layer) else {
        throw AttentionError.invalidArgument("layer \(layer) outside 0..<\(cache.layers)")
    }
    let (maxK, maxV) = (cache.maxKey[layer], cache.maxValue[layer])
    if cache.type == .float32 {
        let keys = try cache.keys(layer: layer), values = try cache.values(layer: layer)
        let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: scale, mask: .causal,
                                         threads: threads, scan: .queries(maxK: maxK, maxV: maxV))
        return try exactAttentionKeepingLSE(inputs)
    }
    var shape = try AttentionShape(queries: queries,
                                   keys: try Tensor(zeros: [cache.batch, cache.kvHeads, 0, cache.headDimension]),
                                   values: try Tensor(zeros: [cache.batch, cache.kvHeads, 0, cache.valueDimension]))
    shape.M = cache.lengths[layer]
    return try cache.withStoredRows(layer: layer) { stored in
        let inputs = try AttentionInputs(queries: queries, stored: stored, shape: shape, scale: scale, mask: .causal,
                                         threads: threads, maxK: maxK, maxV: maxV)
        return try exactAttentionKeepingLSE(inputs)
    }
}
