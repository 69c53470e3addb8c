import AttentionTensor
import LongAttention

/// Exact attention rows. Effective FLOPs are 4·B·H·N·M·d (two GEMMs of 2·N·M·d per head), half
/// that when causal. Tiled: every N, Hkv and causal flag; materialized: Hkv = H, N ≤ 8K (its
/// score block grows with N; the tiled path is the one for long contexts).
func benchFull(lengths: [Int], kvHeads: [Int], threads: Int, peak: Double?, H: Int = 8, d: Int = 64,
               stackedRows: Int? = nil, keyTile: Int? = nil, impls: [ExactAttentionImplementation] = [.tiled, .materialized]) throws -> [Row] {
    var rows = [Row]()
    for n in lengths {
        for hkv in kvHeads where H % hkv == 0 {
            let (q, k, v) = try standardInputs(n: n, H: H, Hkv: hkv, d: d)
            let shape = AttentionShape(B: 1, H: H, Hkv: hkv, N: n, M: n, d: d, dv: d)
            for causal in [false, true] {
                for impl in impls where impl == .tiled || (hkv == H && n <= 8192) || impls.count == 1 {
                    let plan = ExactAttentionPlan(shape: shape, implementation: impl, threads: threads,
                                                  queryBlock: stackedRows.map { max(1, $0 / (H / hkv)) }, keyTile: keyTile)
                    progress("full \(impl.rawValue) N=\(n) Hkv=\(hkv) causal=\(causal)")
                    let t = try measure(budget: 1.0) {
                        _ = try exactAttention(queries: q, keys: k, values: v, mask: causal ? .causal : .none, plan: plan)
                    }
                    if impl == .tiled && hkv == H && stackedRows == nil && keyTile == nil {
                        ExactCache.shared.seconds[ExactCache.key(n, causal)] = t.median
                    }
                    let flops = 4.0 * Double(H) * Double(n) * Double(n) * Double(d) * (causal ? 0.5 : 1)
                    let g = flops / t.median * 1e-9
                    rows.append(Row(variant: "full", impl: impl.rawValue, B: 1, H: H, Hkv: hkv, N: n, M: n, d: d,
                                    causal: causal, threads: threads, seconds: t.median, gflops: g,
                                    peakFraction: peak.map { g / $0 }, workspaceBytes: plan.workspaceBytes,
                                    relError: nil, runs: t.runs, minSeconds: t.min,
                                    note: "queryBlock \(plan.queryBlock), keyTile \(plan.keyTile)"))
                }
            }
        }
    }
    return rows
}
