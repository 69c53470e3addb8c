import AttentionTensor
@testable import LongAttention
import XCTest

/// Appending writes into the cache's own stores: no copy-on-write copy of a layer's store per
/// token (which once cost 14 MB of copying per SmolLM2 token and grew with the context).
final class KVCacheAppendInPlaceTests: XCTestCase {
    /// The address of every key and value store of `cache`.
    func addresses(_ cache: KVCache) -> [Int] {
        (cache.keyStore + cache.valueStore + cache.sinkKeyStore + cache.sinkValueStore).map { store in
            store.withUnsafePointer { Int(bitPattern: $0) }
        }
    }

    func testAppendsWriteInPlace() throws {
        for type in [KVCacheType.float32, .bfloat16, .int8] {
            for (windows, sinks) in [([Int?](repeating: nil, count: 3), [0, 0, 0]), ([nil, 8, 8], [0, 0, 2])] {
                var cache = try KVCache(layers: 3, batch: 1, kvHeads: 2, capacity: 40, headDimension: 32, type: type,
                                        windows: windows, maxAppend: 4, sinks: sinks)
                let (q, k, v) = try Reference.inputs(B: 1, H: 4, Hkv: 2, N: 1, M: 1, d: 32, dv: 32, seed: 7)
                let before = addresses(cache)
                for step in 0..<20 {
                    for layer in 0..<3 {
                        try cache.append(layer: layer, keys: k, values: v)
                        // Reading the cache between appends, as a decoder does, must not pin a second reference.
                        _ = try cache.keys(layer: layer)
                        if layer == 0 { _ = try decodeAttention(queries: q, cache: cache, layer: layer) }
                    }
                    XCTAssertEqual(addresses(cache), before, "\(type), windows \(windows), sinks \(sinks): a store moved at step \(step)")
                }
                XCTAssertEqual(cache.lengths, [20, 20, 20])
            }
        }
    }
}
