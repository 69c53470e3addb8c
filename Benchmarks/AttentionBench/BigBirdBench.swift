import AttentionTensor
import LongAttention

/// BigBird rows: GFLOP/s on the blocks computed (4·b²·d per attended block per head), speedup
/// over exact tiled attention for N ≤ 16K, error against exact attention for N ≤ 8K.
func benchBigBird(lengths: [Int], threads: Int, peak: Double?, H: Int = 8, Hkv: Int = 8, d: Int = 64,
                  blockSize b: Int = 64, randomBlocks r: Int = 3) throws -> [Row] {
    var rows = [Row]()
    for n in lengths {
        progress("bigbird: generating inputs N=\(n)")
        let (q, k, v) = try standardInputs(n: n, H: H, Hkv: Hkv, d: d)
        let shape = AttentionShape(B: 1, H: H, Hkv: Hkv, N: n, M: n, d: d, dv: d)
        for causal in [false, true] {
            let plan = try BigBirdPlan(sequenceLength: n, heads: H, blockSize: b, randomBlocks: r, seed: 0, causal: causal)
            progress("bigbird N=\(n) causal=\(causal)")
            var out: Tensor?
            let t = try measure(budget: 1.0) {
                out = try bigBirdAttention(queries: q, keys: k, values: v, plan: plan, threads: threads)
            }
            var blocks = 0
            for h in 0..<H { blocks += plan.attendedBlocks(head: h) }
            // Causal diagonal blocks do half their work; count them fully (it is computed).
            let flops = 4.0 * Double(blocks) * Double(b * b) * Double(d)
            let g = flops / t.median * 1e-9
            var note = String(format: "%d of %d blocks per head", blocks / H, plan.blockCount * plan.blockCount)
            var relError: Double?
            if n <= 16384 {
                let exact = try ExactCache.shared.time(n: n, causal: causal, q: q, k: k, v: v, threads: threads)
                note += String(format: ", %.1f× faster than exact (%.3f s)", exact / t.median, exact)
                if n <= 8192 {
                    relError = relativeError(out!, try ExactCache.shared.output(n: n, causal: causal, q: q, k: k, v: v, threads: threads))
                }
            }
            let ws = bigBirdWorkspaceBytesPerThread(plan: plan, shape: shape) * threads
            rows.append(Row(variant: "bigbird", impl: "b\(b)-g1-w3-r\(r)", B: 1, H: H, Hkv: Hkv, N: n, M: n, d: d,
                            causal: causal, threads: threads, seconds: t.median, gflops: g,
                            peakFraction: peak.map { g / $0 }, workspaceBytes: ws, relError: relError,
                            runs: t.runs, minSeconds: t.min, note: note))
        }
    }
    return rows
}
