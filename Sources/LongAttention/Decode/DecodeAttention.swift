import AttentionTensor

/// One decode step: attention of the `n` newest queries `[B, H, n, d]` against the cache's
/// `layer` (which already holds these tokens' keys and values), bottom-right causal: with `L` the
/// layer's length, query `i` sits at position `p = L - n + i` and sees positions `j <= p` (so a
/// chunk of `n` tokens, prefill included, is causal among itself). Returns `[B, H, n, dv]`, or
/// `[B, n, H, dv]` with `outputLayout: .tokenMajor` (the token-major rows `[B·n, H·dv]` a model's
/// output projection reads, after a reshape that is a view). The query heads of a GQA group
/// (`H / Hkv` of them) are stacked into one product; a single query's keys are split across the
/// cores and merged. Queries are read through their strides (only the last axis contiguous), so a
/// model's token-major `[B, n, H, d]` permuted to `[B, H, n, d]` is read in place.
///
/// **Sliding windows** (transformers' rule): query `p` sees only `p - W < j <= p`. On a windowed
/// layer of the cache (``KVCache/windows``) the layer's `W` applies; the keys are read from its
/// ring in position order as (at most) two contiguous segments, and only the band is visited
/// (O(n·W·d) work). On a full layer, `slidingWindow: W` restricts the key range the same way
/// (Mistral's window over a full-size cache). `slidingWindow` on a windowed layer may narrow its
/// window, not widen it.
///
/// A cache of a low-precision ``KVCacheType`` is read as stored (bf16, f16 or q8_0 rows converted
/// in registers): there is no float32 copy of the cache. Tiles of more than 4 stacked rows (MQA, a
/// prefill against the cache) convert one key tile at a time for their products.
///
/// Only the queries are checked for NaN/Inf here: the cache's contents were checked when appended.
///
/// - Parameters:
///   - alibi: ALiBi slopes (one per query head): a penalty on the distance `p - j`, with or without a window.
///   - slidingWindow: `W >= 1`, or nil (a full layer: plain causal; a windowed layer: its own `W`).
///   - threads: worker threads (default: all cores); the result does not depend on them.
/// - Throws: ``AttentionError/invalidWindow(window:layer:reason:)`` for `W < 1`, a `W` wider than a windowed
///   layer's, or queries whose windows reach positions the ring no longer holds (`n + W - 1`
///   positions needed: more queries than the `maxAppend` the ring was sized for); shape, NaN/Inf
///   and overflow errors as any attention call.
public func decodeAttention(queries: Tensor, cache: KVCache, layer: Int, scale: Float? = nil, alibi: ALiBi? = nil,
                            slidingWindow: Int? = nil, outputLayout: AttentionOutputLayout = .headMajor,
                            threads: Int? = nil) throws -> Tensor {
    try withDecodeInputs(queries: queries, cache: cache, layer: layer, scale: scale, alibi: alibi, slidingWindow: slidingWindow,
                         threads: threads) { inputs in
        try exactAttention(inputs, plan: .decoding(shape: inputs.shape, threads: inputs.threads), outputLayout: outputLayout)
    }
}

/// ``decodeAttention(queries:cache:layer:scale:alibi:slidingWindow:outputLayout:threads:)`` that also
/// returns each query row's log-sum-exp over the cache's visible positions (`[B, H, n]`, -inf for a
/// row that sees none, e.g. an empty cache): the partial result a cache sharded across processes
/// merges with the (max, sum, output) rule (``mergeAttentionBlock(output:logSumExp:blockOutput:blockLogSumExp:)``).
/// Shapes and masking as there (bottom-right causal against the layer's positions; a windowed
/// layer applies its window).
public func decodeAttentionKeepingLSE(queries: Tensor, cache: KVCache, layer: Int, scale: Float? = nil,
                                      threads: Int? = nil) throws -> SoftmaxAttentionForward {
    try withDecodeInputs(queries: queries, cache: cache, layer: layer, scale: scale, alibi: nil, slidingWindow: nil,
                         threads: threads) { inputs in
        try exactAttentionKeepingLSE(inputs, plan: .decoding(shape: inputs.shape, threads: inputs.threads))
    }
}

/// The accepted inputs of a decode call: the queries against the held positions of `layer`
/// (logical keys `0 ..< held`, position order), read in place from the float32 tensors or the
/// stored rows, through the ring when the layer's positions wrap; the window checked against what
/// the layer holds.
func withDecodeInputs<R>(queries: Tensor, cache: KVCache, layer: Int, scale: Float?, alibi: ALiBi?, slidingWindow: Int?,
                         threads: Int?, _ body: (AttentionInputs) throws -> R) throws -> R {
    guard (0..<cache.layers).contains(layer) else {
        throw AttentionError.invalidArgument(name: "layer", value: "\(layer)", expected: "0..<\(cache.layers)")
    }
    if let w = slidingWindow, w < 1 {
        throw AttentionError.invalidWindow(window: w, layer: nil, reason: "a window must be at least 1 position")
    }
    var window = slidingWindow
    if let layerWindow = cache.windows[layer] {
        if let w = slidingWindow, w > layerWindow {
            throw AttentionError.invalidWindow(window: w, layer: layer, reason: "the layer's ring serves a window of \(layerWindow)")
        }
        window = slidingWindow ?? layerWindow
    }
    // The shape checks of any attention call, against empty key and value tensors of the cache's shape.
    var shape = try AttentionShape(queries: queries,
                                   keys: try Tensor(zeros: [cache.batch, cache.kvHeads, 0, cache.headDimension]),
                                   values: try Tensor(zeros: [cache.batch, cache.kvHeads, 0, cache.valueDimension]))
    let held = cache.positions(layer: layer)
    shape.M = held.count
    // A layer that dropped positions (a ring past its first wrap) must still hold each query's
    // window: the first query (position L - n) reads from L - n - W + 1.
    if held.lowerBound > 0 {
        let n = shape.N
        guard let w = window, n <= held.count, w - 1 <= held.count - n else {
            throw AttentionError.invalidWindow(window: window, layer: layer, reason: "the layer holds positions \(held.lowerBound)..<\(held.upperBound); \(shape.N) queries need the last \(shape.N) + W - 1 (maxAppend is \(cache.maxAppend))")
        }
    }
    let mask = AttentionMask(isCausal: true, slidingWindow: window, alibi: alibi)
    let (maxK, maxV) = (cache.maxKey[layer], cache.maxValue[layer])
    let start = cache.ringStart(layer: layer), slots = cache.slots[layer]
    if cache.type == .float32 {
        // Every stored row as a view; the shape's M is the held positions, key j at row (start + j) mod slots.
        let (keys, values) = cache.storedTensors(layer: layer)
        var inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: scale, mask: mask,
                                         threads: threads, scan: .queries(maxK: maxK, maxV: maxV), shapeOverride: shape)
        if start != 0 { inputs.ring = (start, slots) }
        return try body(inputs)
    }
    return try cache.withStoredRows(layer: layer) { stored in
        var inputs = try AttentionInputs(queries: queries, stored: stored, shape: shape, scale: scale, mask: mask,
                                         threads: threads, maxK: maxK, maxV: maxV)
        if start != 0 { inputs.ring = (start, slots) }
        return try body(inputs)
    }
}
