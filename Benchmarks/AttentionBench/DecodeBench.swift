import AttentionTensor
import Foundation
import LongAttention

/// Copy bandwidth with every thread copying its half of a 1 GiB buffer (STREAM's convention:
/// bytes read plus bytes written, per second). Decode rows are compared against it.
func measureCopyBandwidth(threads: Int, bytes: Int = 1 << 30) -> Double {
    let n = bytes / 4
    let src = UnsafeMutablePointer<Float>.allocate(capacity: n), dst = UnsafeMutablePointer<Float>.allocate(capacity: n)
    defer { src.deallocate(); dst.deallocate() }
    src.initialize(repeating: 1, count: n)
    dst.initialize(repeating: 0, count: n)
    let parts = max(1, threads)
    let t = measure(minRuns: 5, budget: 1.0) {
        Parallel.run(items: parts, threads: parts) { _, queue in
            while let p = queue.next() {
                let lo = n / parts * p, hi = p == parts - 1 ? n : n / parts * (p + 1)
                memcpy(dst + lo, src + lo, (hi - lo) * 4)
            }
        }
    }
    return 2 * Double(bytes) / t.median
}

/// One decode step (a single new query per sequence) against a ``KVCache`` of growing length, per
/// KV-head count and storage type: time per token, K/V bytes read per second and that as a
/// fraction of the copy bandwidth. The cache is filled chunk by chunk (as a prefill would) with
/// the same seeded keys and values for every type, then read through `decodeAttention`; each
/// low-precision row's `relError` is against the float32 cache's output on those inputs.
func benchDecode(lengths: [Int], kvHeads: [Int], types: [KVCacheType], threads: Int, peak: Double?, bandwidth: Double,
                 H: Int = 32, d: Int = 128) throws -> [Row] {
    var rows = [Row]()
    let sorted = lengths.sorted()
    let capacity = sorted.last ?? 0
    // float32 first: its outputs are the other types' reference (kept per M; one cache alive at a time).
    let order = [KVCacheType.float32] + types.filter { $0 != .float32 }
    let q = try Tensor.randomUniform([1, H, 1, d], seed: 1)
    for hkv in kvHeads where H % hkv == 0 {
        var reference = [Int: [Double]]()
        for type in order {
            let recorded = types.contains(type)
            let cacheBytes = KVCache.bytes(layers: 1, batch: 1, kvHeads: hkv, capacity: capacity, headDimension: d, type: type) ?? 0
            progress("decode: a \(type) cache of \(capacity) positions, Hkv = \(hkv) (\(formatBytes(cacheBytes)))\(recorded ? "" : ", as the reference")")
            var cache = try KVCache(layers: 1, batch: 1, kvHeads: hkv, capacity: capacity, headDimension: d, type: type)
            var chunk: UInt64 = 0
            for m in sorted {
                while cache.lengths[0] < m {
                    let n = min(8192, m - cache.lengths[0])
                    try cache.append(layer: 0, keys: try Tensor.randomUniform([1, hkv, n, d], seed: 2 * chunk + 2),
                                     values: try Tensor.randomUniform([1, hkv, n, d], seed: 2 * chunk + 3))
                    chunk += 1
                }
                let out = try decodeAttention(queries: q, cache: cache, layer: 0, threads: threads).scalars.map(Double.init)
                if type == .float32 { reference[m] = out }
                guard recorded else { continue }
                progress("decode M=\(m) Hkv=\(hkv) \(type)")
                let t = try measure(minRuns: 5, budget: 0.5) {
                    _ = try decodeAttention(queries: q, cache: cache, layer: 0, threads: threads)
                }
                let plan = ExactAttentionPlan(shape: AttentionShape(B: 1, H: H, Hkv: hkv, N: 1, M: m, d: d, dv: d),
                                              implementation: .tiled, threads: threads)
                let bytes = Double(2 * hkv * m * type.rowBytes(d))
                let g = 4.0 * Double(H) * Double(m) * Double(d) / t.median * 1e-9
                let error = type == .float32 ? nil : reference[m].map { relativeError(out, $0) }
                // Low-precision types with more than 4 query heads per KV head convert each key
                // and value tile once (one tile-sized float32 buffer per worker).
                let workspace = plan.workspaceBytes + (type != .float32 && H / hkv > 4 ? plan.keyTile * d * 4 * threads : 0)
                var row = Row(variant: "decode", impl: "tiled", B: 1, H: H, Hkv: hkv, N: 1, M: m, d: d, causal: true,
                              threads: threads, seconds: t.median, gflops: g, peakFraction: peak.map { g / $0 },
                              workspaceBytes: workspace, relError: error, runs: t.runs, minSeconds: t.min,
                              note: String(format: "%@ cache, %.0f tokens/s, %.1f GB/s of K/V, %d key splits", type.rawValue,
                                           1 / t.median, bytes / t.median * 1e-9, plan.keySplits))
                row.bytesPerSecond = bytes / t.median
                row.bandwidthFraction = bytes / t.median / bandwidth
                row.kvType = type.rawValue
                rows.append(row)
            }
        }
    }
    return rows
}

/// max |got − expected| / max |expected|.
func relativeError(_ got: [Double], _ expected: [Double]) -> Double {
    var num = 0.0, den = 0.0
    for (a, b) in zip(got, expected) { num = max(num, abs(a - b)); den = max(den, abs(b)) }
    return den > 0 ? num / den : num
}
