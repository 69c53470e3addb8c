import AttentionTensor
import Foundation
import LongAttention

/// Backward rows (`pass: "backward"`): each variant's gradients with an upstream gradient of
/// ones-scale noise, timed against the forward a training step runs (the one that keeps what the
/// backward needs). FLOPs are 2.5× the forward's (FlashAttention's convention: recomputed scores,
/// dV, dP, dQ, dK); workspace is the backward's scratch and saved state beyond inputs, output
/// gradient and gradients.
func benchBackward(variants: [String], lengths: (String) -> [Int], threads: Int, peak: Double?, H: Int = 8, d: Int = 64) throws -> [Row] {
    var rows = [Row]()
    var exactBackward: [String: Double] = [:]
    func row(_ variant: String, _ impl: String, n: Int, causal: Bool, forward: Double, backward: (median: Double, min: Double, runs: Int),
             forwardFlops: Double, workspace: Int, note: String) -> Row {
        let g = 2.5 * forwardFlops / backward.median * 1e-9
        var r = Row(variant: variant, impl: impl, B: 1, H: H, Hkv: H, N: n, M: n, d: d, causal: causal, threads: threads,
                    seconds: backward.median, gflops: g, peakFraction: peak.map { g / $0 }, workspaceBytes: workspace,
                    relError: nil, runs: backward.runs, minSeconds: backward.min, note: note)
        r.pass = "backward"
        r.backwardForwardRatio = backward.median / forward
        r.tokensPerSecond = Double(n) / backward.median
        return r
    }
    if variants.contains("full") {
        for n in lengths("full") {
            let (q, k, v) = try standardInputs(n: n, H: H, Hkv: H, d: d)
            let dOut = try Tensor.randomUniform([1, H, n, d], seed: 4)
            for causal in [false, true] {
                let mask: AttentionMask = causal ? .causal : .none
                progress("full backward N=\(n) causal=\(causal)")
                var saved: SoftmaxAttentionForward?
                let f = try measure(budget: 1.0) { saved = try scaledDotProductAttentionForward(queries: q, keys: k, values: v, mask: mask, threads: threads) }
                let b = try measure(budget: 1.0) {
                    _ = try scaledDotProductAttentionBackward(queries: q, keys: k, values: v, forward: saved!, outputGradient: dOut,
                                                              mask: mask, threads: threads)
                }
                exactBackward[ExactCache.key(n, causal)] = b.median
                let flops = 4.0 * Double(H) * Double(n) * Double(n) * Double(d) * (causal ? 0.5 : 1)
                // Per worker: packed Q, dO, the dQ accumulator, S and dP tiles, D, lse, limits; plus the saved log-sum-exp.
                let shape = AttentionShape(B: 1, H: H, Hkv: H, N: n, M: n, d: d, dv: d)
                let ws = attentionBackwardWorkspaceBytes(shape: shape, threads: threads) + H * n * 4
                rows.append(row("full", "tiled", n: n, causal: causal, forward: f.median, backward: b, forwardFlops: flops, workspace: ws,
                                note: String(format: "forward keeping the log-sum-exp %.3f s", f.median)))
            }
        }
    }
    if variants.contains("bigbird") {
        for n in lengths("bigbird") {
            let (q, k, v) = try standardInputs(n: n, H: H, Hkv: H, d: d)
            let dOut = try Tensor.randomUniform([1, H, n, d], seed: 4)
            for causal in [false, true] {
                let plan = try BigBirdPlan(sequenceLength: n, heads: H, blockSize: 64, randomBlocks: 3, seed: 0, causal: causal)
                progress("bigbird backward N=\(n) causal=\(causal)")
                var saved: SoftmaxAttentionForward?
                let f = try measure(budget: 1.0) { saved = try bigBirdAttentionForward(queries: q, keys: k, values: v, plan: plan, threads: threads) }
                let b = try measure(budget: 1.0) {
                    _ = try bigBirdAttentionBackward(queries: q, keys: k, values: v, plan: plan, forward: saved!, outputGradient: dOut,
                                                     threads: threads)
                }
                var blocks = 0
                for h in 0..<H { blocks += plan.attendedBlocks(head: h) }
                let flops = 4.0 * Double(blocks) * 64 * 64 * Double(d)
                let shape = AttentionShape(B: 1, H: H, Hkv: H, N: n, M: n, d: d, dv: d)
                let ws = 2 * bigBirdWorkspaceBytesPerThread(plan: plan, shape: shape) * threads + H * n * 4
                var note = String(format: "forward keeping the log-sum-exp %.3f s", f.median)
                if let exact = exactBackward[ExactCache.key(n, causal)] {
                    note += String(format: "; %.1f× faster than exact backward (%.3f s)", exact / b.median, exact)
                }
                rows.append(row("bigbird", "b64-g1-w3-r3", n: n, causal: causal, forward: f.median, backward: b, forwardFlops: flops,
                                workspace: ws, note: note))
            }
        }
    }
    if variants.contains("linear") {
        for n in lengths("linear") {
            let (q, k, v) = try standardInputs(n: n, H: H, Hkv: H, d: d)
            let dOut = try Tensor.randomUniform([1, H, n, d], seed: 4)
            let shape = AttentionShape(B: 1, H: H, Hkv: H, N: n, M: n, d: d, dv: d)
            let plan = LinearAttentionPlan(shape: shape, featureMap: .elu, causal: true, threads: threads)
            progress("linear elu causal backward N=\(n)")
            let big = n >= 1 << 19
            var saved: LinearAttentionForward?
            let f = try measure(minRuns: big ? 1 : 3, budget: big ? 0 : 1.0) {
                saved = try linearAttentionForward(queries: q, keys: k, values: v, causal: true, threads: threads)
            }
            let b = try measure(minRuns: big ? 1 : 3, budget: big ? 0 : 1.0) {
                _ = try linearAttentionBackward(queries: q, keys: k, values: v, forward: saved!, outputGradient: dOut, causal: true,
                                                threads: threads)
            }
            // The backward's scratch per worker (chunks of 64 rows): independent of N. The forward
            // keeps one normaliser per query row (like the log-sum-exp of exact attention).
            let floats = 2 * 64 * d + 2 * 64 * d + 2 * 64 * 64 + 3 * 64 * d + 2 * 64 + 2 * d * d + 4 * d + 2 * 64 + 64 * d
            rows.append(row("linear", "elu", n: n, causal: true, forward: f.median, backward: b, forwardFlops: plan.gemmFlops,
                            workspace: floats * 4 * threads,
                            note: String(format: "one call; forward keeping the normalisers %.3f s (+%.0f MiB saved)", f.median,
                                         Double(H * n * 4) / 1048576)))
        }
    }
    if variants.contains("infini") {
        for n in lengths("infini") {
            let S = 2048
            let (q, k, v) = try standardInputs(n: n, H: H, Hkv: H, d: d)
            let dOut = try Tensor.randomUniform([1, H, n, d], seed: 4)
            let layer = try InfiniAttention(segmentLength: S, update: .linear, beta: Array(repeating: 0, count: H))
            progress("infini backward N=\(n)")
            let f = try measure(minRuns: 1, budget: 0) { _ = try layer(queries: q, keys: k, values: v, threads: threads) }
            resetPeakResident()
            let b = try measure(minRuns: 1, budget: 0) {
                _ = try layer.backward(queries: q, keys: k, values: v, outputGradient: dOut, threads: threads)
            }
            let segments = Double((n + S - 1) / S)
            let flops = segments * (2 * Double(H) * Double(S) * Double(S) * Double(d) + 4 * Double(H) * Double(S) * Double(d) * Double(d))
            let checkpoints = Int(segments) * H * (d * d + d) * 4
            var r = row("infini", "linear", n: n, causal: true, forward: f.median, backward: b, forwardFlops: flops,
                        workspace: checkpoints,
                        note: String(format: "segment %d; memory checkpoints %.1f MiB; forward %.2f s", S, Double(checkpoints) / 1048576, f.median))
            r.peakResidentBytes = peakResidentBytes()
            r.stateBytes = H * (d * d + d) * 4
            rows.append(r)
        }
    }
    return rows
}
