import AttentionTensor
import Foundation
import LongAttention

/// Sliding-window decode (`--variants swa`): one new token (H = 32, d = 128) after `positions - 200`
/// positions (not a multiple of W, so the ring's oldest position sits mid-ring: two segments), three ways per cache type: plain causal decode over a full cache (what every
/// position costs), the window `W` over that full cache (`slidingWindow: W`, Mistral's layout: the
/// band only is read), and a windowed cache layer (a ring of `W` rows, `maxAppend` = 1: Gemma 3's
/// local layers). Rows give the time per token, tokens/s, the K/V bytes read per step and the
/// layer's cache bytes (``KVCache/bytes(layer:)``). The ring is filled by ``KVCache/copy(from:)``
/// of the full cache (it keeps the last `W` positions); its `relError` is against the windowed
/// full cache's output, the same attention read from the other layout.
func benchSlidingWindowDecode(positions: Int, window W: Int, kvHeads hkv: Int, types: [KVCacheType], threads: Int,
                              peak: Double?, bandwidth: Double, H: Int = 32, d: Int = 128) throws -> [Row] {
    var rows = [Row]()
    let q = try Tensor.randomUniform([1, H, 1, d], seed: 1)
    for type in types {
        progress("swa: a \(type) cache of \(formatLength(positions)) positions, Hkv = \(hkv), W = \(W)")
        let length = positions - 200
        var full = try KVCache(layers: 1, batch: 1, kvHeads: hkv, capacity: positions, headDimension: d, type: type)
        var chunk: UInt64 = 0
        while full.lengths[0] < length {
            let n = min(8192, length - full.lengths[0])
            try full.append(layer: 0, keys: try Tensor.randomUniform([1, hkv, n, d], seed: 2 * chunk + 2),
                            values: try Tensor.randomUniform([1, hkv, n, d], seed: 2 * chunk + 3))
            chunk += 1
        }
        var ring = try KVCache(layers: 1, batch: 1, kvHeads: hkv, capacity: positions, headDimension: d, type: type, windows: [W])
        try ring.copy(from: full)
        let windowedOnFull = try decodeAttention(queries: q, cache: full, layer: 0, slidingWindow: W, threads: threads)
            .scalars.map(Double.init)
        let cases: [(String, KVCache, Int?, Int)] = [("full cache", full, nil, length), ("full cache, window", full, W, W),
                                                     ("ring of W", ring, nil, W)]
        for (impl, cache, window, keys) in cases {
            progress("swa \(impl) \(type)")
            let t = try measure(minRuns: 5, budget: 0.5) {
                _ = try decodeAttention(queries: q, cache: cache, layer: 0, slidingWindow: window, threads: threads)
            }
            let out = try decodeAttention(queries: q, cache: cache, layer: 0, slidingWindow: window, threads: threads).scalars.map(Double.init)
            let plan = ExactAttentionPlan(shape: AttentionShape(B: 1, H: H, Hkv: hkv, N: 1, M: cache.positions(layer: 0).count, d: d, dv: d),
                                          implementation: .tiled, threads: threads)
            let bytes = Double(2 * hkv * keys * type.rowBytes(d))
            let g = 4.0 * Double(H) * Double(keys) * Double(d) / t.median * 1e-9
            let error = impl == "ring of W" ? relativeError(out, windowedOnFull) : nil
            var row = Row(variant: "swa", impl: impl, B: 1, H: H, Hkv: hkv, N: 1, M: length, d: d, causal: true,
                          threads: threads, seconds: t.median, gflops: g, peakFraction: peak.map { g / $0 },
                          workspaceBytes: plan.workspaceBytes, relError: error, runs: t.runs, minSeconds: t.min,
                          note: String(format: "%@ cache, W = %d, %.0f tokens/s, %.1f GB/s of K/V, cache layer %@", type.rawValue, W,
                                       1 / t.median, bytes / t.median * 1e-9, formatBytes(cache.bytes(layer: 0))))
            row.bytesPerSecond = bytes / t.median
            row.bandwidthFraction = bytes / t.median / bandwidth
            row.tokensPerSecond = 1 / t.median
            row.stateBytes = cache.bytes(layer: 0)
            row.kvType = type.rawValue
            rows.append(row)
        }
    }
    return rows
}

/// The sliding-window decode rows side by side: time, tokens/s, bytes read and the layer's cache bytes.
func swaTable(_ rows: [Row]) -> String {
    let swa = rows.filter { $0.variant == "swa" }
    guard !swa.isEmpty else { return "" }
    var s = "| positions | Hkv | cache | layout | time per token | tokens/s | K/V read per token | cache layer | faster than full | rel. error |\n"
    s += "|---|---|---|---|---|---|---|---|---|---|\n"
    for r in swa {
        let full = swa.first { $0.M == r.M && $0.Hkv == r.Hkv && $0.kvType == r.kvType && $0.impl == "full cache" }
        let ratio = full.map { String(format: "%.1f×", $0.seconds / r.seconds) } ?? "–"
        let read = r.bytesPerSecond.map { formatBytes(Int($0 * r.seconds)) } ?? "–"
        let err = r.relError.map { String(format: "%.1e", $0) } ?? "–"
        s += "| \(formatLength(r.M)) | \(r.Hkv) | \(r.kvType ?? "f32") | \(r.impl) | \(String(format: "%.3f ms", r.seconds * 1e3)) | "
        s += "\(String(format: "%.0f", 1 / r.seconds)) | \(read) | \(formatBytes(r.stateBytes ?? 0)) | \(ratio) | \(err) |\n"
    }
    return s
}
