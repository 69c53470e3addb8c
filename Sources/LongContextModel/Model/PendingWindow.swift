// TEMPORARY (not to be committed): stand-ins until the sliding-window kernels land.
import LongAttention
import AttentionTensor
func decodeAttention(queries: Tensor, cache: KVCache, layer: Int, scale: Float?, alibi: ALiBi?, window: Int?, threads: Int?) throws -> Tensor {
    precondition(window == nil)
    return try decodeAttention(queries: queries, cache: cache, layer: layer, scale: scale, alibi: alibi, threads: threads)
}
extension KVCache {
    init(layers: Int, batch: Int, kvHeads: Int, capacity: Int, headDimension: Int, type: KVCacheType, windows: [Int?], maxAppend: Int) throws {
        precondition(windows.allSatisfy { $0 == nil })
        try self.init(layers: layers, batch: batch, kvHeads: kvHeads, capacity: capacity, headDimension: headDimension, type: type)
    }
}
