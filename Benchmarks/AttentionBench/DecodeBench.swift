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

/// One decode step (a single new query per sequence) against a ``KVCache`` of growing length:
/// time per token, K/V bytes read per second and that as a fraction of the copy bandwidth. The
/// cache is filled chunk by chunk (as a prefill would), then read through `decodeAttention`.
func benchDecode(lengths: [Int], kvHeads: [Int], threads: Int, peak: Double?, bandwidth: Double,
                 H: Int = 32, d: Int = 128) throws -> [Row] {
    var rows = [Row]()
    let sorted = lengths.sorted()
    let capacity = sorted.last ?? 0
    for hkv in kvHeads where H % hkv == 0 {
        progress("decode: a cache of \(capacity) positions, Hkv = \(hkv) (\(formatBytes(KVCache.bytes(layers: 1, batch: 1, kvHeads: hkv, capacity: capacity, headDimension: d))))")
        var cache = try KVCache(layers: 1, batch: 1, kvHeads: hkv, capacity: capacity, headDimension: d)
        let q = try Tensor.randomUniform([1, H, 1, d], seed: 1)
        var chunk: UInt64 = 0
        for m in sorted {
            while cache.lengths[0] < m {
                let n = min(8192, m - cache.lengths[0])
                try cache.append(layer: 0, keys: try Tensor.randomUniform([1, hkv, n, d], seed: 2 * chunk + 2),
                                 values: try Tensor.randomUniform([1, hkv, n, d], seed: 2 * chunk + 3))
                chunk += 1
            }
            progress("decode M=\(m) Hkv=\(hkv)")
            let t = try measure(minRuns: 5, budget: 0.5) {
                _ = try decodeAttention(queries: q, cache: cache, layer: 0, threads: threads)
            }
            let plan = ExactAttentionPlan(shape: AttentionShape(B: 1, H: H, Hkv: hkv, N: 1, M: m, d: d, dv: d),
                                          implementation: .tiled, threads: threads)
            let bytes = Double(2 * hkv * m * d * 4)
            let g = 4.0 * Double(H) * Double(m) * Double(d) / t.median * 1e-9
            var row = Row(variant: "decode", impl: "tiled", B: 1, H: H, Hkv: hkv, N: 1, M: m, d: d, causal: true,
                          threads: threads, seconds: t.median, gflops: g, peakFraction: peak.map { g / $0 },
                          workspaceBytes: plan.workspaceBytes, relError: nil, runs: t.runs, minSeconds: t.min,
                          note: String(format: "%.0f tokens/s, %.1f GB/s of K/V, %d key splits", 1 / t.median,
                                       bytes / t.median * 1e-9, plan.keySplits))
            row.bytesPerSecond = bytes / t.median
            row.bandwidthFraction = bytes / t.median / bandwidth
            rows.append(row)
        }
    }
    return rows
}
