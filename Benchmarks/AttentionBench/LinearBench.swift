import AttentionTensor
import LongAttention

/// Max |a - b| / max(1, max |b|): the error measure of the benchmark contract and check.py.
func relativeError(_ a: Tensor, _ b: Tensor) -> Double {
    var err = 0.0, scale = 1.0
    a.withUnsafePointer { pa in
        b.withUnsafePointer { pb in
            for i in 0..<a.count {
                err = max(err, Double(abs(pa[i] - pb[i])))
                scale = max(scale, Double(abs(pb[i])))
            }
        }
    }
    return err / scale
}

/// Linear attention rows: each N, feature map and causal flag. GFLOP/s count the GEMM work
/// (``LinearAttentionPlan/gemmFlops``); error is against exact (tiled) attention where N ≤ 8K.
func benchLinear(lengths: [Int], maps: [LinearFeatureMap], threads: Int, peak: Double?, H: Int = 8, Hkv: Int = 8,
                 d: Int = 64) throws -> [Row] {
    var rows = [Row]()
    for n in lengths {
        progress("linear: generating inputs N=\(n)")
        let (q, k, v) = try standardInputs(n: n, H: H, Hkv: Hkv, d: d)
        let shape = AttentionShape(B: 1, H: H, Hkv: Hkv, N: n, M: n, d: d, dv: d)
        for causal in [false, true] {
            let exact = n <= 8192 ? try ExactCache.shared.output(n: n, causal: causal, q: q, k: k, v: v, threads: threads) : nil
            for map in maps where !(causal && map == .softmax) {
                let plan = LinearAttentionPlan(shape: shape, featureMap: map, causal: causal, threads: threads)
                progress("linear \(map.name) N=\(n) causal=\(causal)")
                // The output is allocated and touched once, then reused: the row times the attention,
                // not the first touch of a multi-GiB buffer (seconds per GiB on this VM).
                var output = try Tensor(zeros: [1, H, n, d])
                let t = try measure(minRuns: n >= 1 << 19 ? 1 : 3, budget: n >= 1 << 19 ? 0 : 1.0) {
                    try linearAttention(queries: q, keys: k, values: v, plan: plan, into: &output)
                }
                let out: Tensor? = output
                let g = plan.gemmFlops / t.median * 1e-9
                rows.append(Row(variant: "linear", impl: map.name, B: 1, H: H, Hkv: Hkv, N: n, M: n, d: d,
                                causal: causal, threads: threads, seconds: t.median, gflops: g,
                                peakFraction: peak.map { g / $0 }, workspaceBytes: plan.workspaceBytes,
                                relError: exact.map { relativeError(out!, $0) }, runs: t.runs, minSeconds: t.min,
                                note: String(format: "%.0f tokens/s", Double(n) / t.median)))
            }
        }
    }
    return rows
}
