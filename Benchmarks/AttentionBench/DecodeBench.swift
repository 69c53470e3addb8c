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

/// One decode step (a single new query per sequence) against caches of growing length: time per
/// token, K/V bytes read per second and that as a fraction of the copy bandwidth.
func benchDecode(lengths: [Int], kvHeads: [Int], threads: Int, peak: Double?, bandwidth: Double,
                 H: Int = 32, d: Int = 128) throws -> [Row] {
    var rows = [Row]()
    let capacity = lengths.max() ?? 0
    for hkv in kvHeads where H % hkv == 0 {
        progress("decode: filling a cache of \(capacity) positions, Hkv = \(hkv) (\(formatBytes(2 * hkv * capacity * d * 4)))")
        // Cache-shaped storage: [1, Hkv, capacity, d]; each length reads a row view of it.
        let kAll = try Tensor.randomUniform([1, hkv, capacity, d], seed: 2)
        let vAll = try Tensor.randomUniform([1, hkv, capacity, d], seed: 3)
        let q = try Tensor.randomUniform([1, H, 1, d], seed: 1)
        for m in lengths {
            let k = try kAll.rows(0..<m), v = try vAll.rows(0..<m)
            let plan = ExactAttentionPlan(shape: AttentionShape(B: 1, H: H, Hkv: hkv, N: 1, M: m, d: d, dv: d),
                                          implementation: .tiled, threads: threads)
            progress("decode M=\(m) Hkv=\(hkv)")
            let t = try measure(minRuns: 5, budget: 0.5) {
                _ = try exactAttention(queries: q, keys: k, values: v, mask: .causal, plan: plan)
            }
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
