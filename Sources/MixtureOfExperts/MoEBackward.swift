import AttentionTensor
import CAttentionKernels
import COpenBLAS

/// What a backward call spent.
public struct MoEBackwardReport: Sendable, Equatable {
    /// Bytes of scratch the call allocated.
    public let workspaceBytes: Int
    /// FLOPs of its GEMMs: `12 · D · F_e` per computed slot (the w2 product, the two input-gradient
    /// products and the three weight gradients) and `4 · T · D · E` for the router.
    public let flops: Int
}

/// Rows of a weight gradient per work item (each item owns its rows: no two items add into the
/// same element, and each element's sum over tokens runs in one GEMM, in a fixed order).
let weightRowBlock = 256

/// The backward of ``moeForward(_:weights:x:tokens:output:keepForBackward:threads:)``: the
/// gradients of `L = Σ output ⊙ outputGradient + λ_lb · loadBalancingLoss + λ_z · zLoss` with the
/// routing selection held fixed (autograd's convention). The gradient reaches the router through
/// the selected probabilities (and their renormalisation), the load-balancing loss (through the
/// mean probabilities P_e; the slot fractions f_e are counts) and the z-loss.
///
/// `inputGradient` `[T, D]` and every gradient in `gradients` are accumulated into (`+=`), so a
/// residual stream or a parameter buffer shared across calls can be passed as is. A slot dropped
/// by the capacity passes no gradient to its expert, and its own weight gets none.
///
/// The forward must have been run with `keepForBackward` on the same configuration, weights, x
/// and token count (``MoEError/forwardMismatch(_:)`` otherwise). Bitwise the same for any `threads`.
@discardableResult
public func moeBackward(_ config: MoEConfig, weights: MoEWeights, x: UnsafePointer<Float>, tokens T: Int,
                        forward: MoEForward, outputGradient: UnsafePointer<Float>,
                        inputGradient: UnsafeMutablePointer<Float>, gradients: MoEGradients,
                        loadBalancingWeight: Float = 0, zLossWeight: Float = 0,
                        threads: Int = Parallel.defaultThreads) throws -> MoEBackwardReport {
    try config.validate()
    let E = config.experts, k = config.topK, D = config.hidden, sizes = config.expertSizes
    for n in [weights.w1.count, weights.w2.count, weights.w3.count, gradients.w1.count, gradients.w2.count, gradients.w3.count] where n != E {
        throw MoEError.expertCountMismatch(expected: E, got: n)
    }
    guard threads >= 1 else { throw MoEError.invalidThreadCount(threads) }
    guard forward.config == config else { throw MoEError.forwardConfigurationMismatch }
    guard forward.tokens == T else { throw MoEError.forwardTokenMismatch(saved: forward.tokens, given: T) }
    guard forward.keptForBackward, let activations = forward.activations else {
        throw MoEError.forwardNotKept
    }
    guard loadBalancingWeight.isFinite else { throw MoEError.nonFinite(name: "loadBalancingWeight", index: 0) }
    guard zLossWeight.isFinite else { throw MoEError.nonFinite(name: "zLossWeight", index: 0) }
    if T > 0 {
        var largest: Float = 0
        let bad = ak_scan_values(outputGradient, T * D, 0, &largest)
        if bad >= 0 { throw MoEError.nonFinite(name: "output gradient", index: bad) }
    }
    guard T > 0 else { return MoEBackwardReport(workspaceBytes: 0, flops: 0) }

    let counts = forward.expertTokenCounts, rowOffsets = forward.rowOffsets
    let rows = rowOffsets[E]
    var hOffsets = [Int](repeating: 0, count: E + 1)   // per expert [n_e, F_e] blocks of H, dG, dU
    for e in 0..<E { hOffsets[e + 1] = hOffsets[e] + counts[e] * sizes[e] }

    // Phase 1 items: blocks of each expert's rows.
    var expertItems = [MoEWorkItem]()
    for e in 0..<E {
        for (a, b) in rowBlocks(counts[e], expertRowBlock) { expertItems.append(MoEWorkItem(kind: 0, expert: e, start: a, end: b, cost: (b - a) * sizes[e])) }
    }
    expertItems = expertItems.largestFirst()
    let workers = max(1, min(threads, max(1, expertItems.count)))
    let maxF = sizes.max()!
    let block = max(1, expertItems.map { $0.end - $0.start }.max() ?? 1)   // the largest row block

    var plan = MoEScratch.Plan()
    let xAllAt = plan.reserve(rows * D), dyAllAt = plan.reserve(rows * D), dxAllAt = plan.reserve(rows * D)
    let hAt = plan.reserve(hOffsets[E]), dgAt = plan.reserve(hOffsets[E]), duAt = plan.reserve(hOffsets[E])
    let dlogitsAt = plan.reserve(T * E), dwSlotAt = plan.reserve(T * k)
    let dhAt = (0..<workers).map { _ in plan.reserve(block * maxF) }
    let scratch = try MoEScratch(plan)
    let xAll = scratch.floats(xAllAt), dyAll = scratch.floats(dyAllAt), dxAll = scratch.floats(dxAllAt)
    let hAll = scratch.floats(hAt), dgAll = scratch.floats(dgAt), duAll = scratch.floats(duAt)
    let dlogits = scratch.floats(dlogitsAt), dwSlot = scratch.floats(dwSlotAt)
    dwSlot.update(repeating: 0, count: T * k)

    // Phase 1: per block of an expert's rows, H again from the kept G and U; dH = w · (dout · w2);
    // each slot's weight gradient dw = (dout · w2) · h; dG, dU through SwiGLU; the rows' input
    // gradients dG · w1 + dU · w3.
    do {
        let act = UnsafePointer(activations.floats(0))
        forward.groupedSlots.withUnsafeBufferPointer { gsb in
            forward.routingWeights.withUnsafeBufferPointer { rwb in
                let groupedSlots = gsb.baseAddress!, routingWeights = rwb.baseAddress!
                Parallel.run(items: expertItems.count, threads: threads) { w, queue in
                    let dh = scratch.floats(dhAt[w])
                    while let i = queue.next() {
                        let item = expertItems[i], e = item.expert, F = sizes[e], n = item.end - item.start
                        let row0 = rowOffsets[e] + item.start
                        for r in 0..<n {
                            let t = Int(groupedSlots[row0 + r]) / k
                            (xAll + (row0 + r) * D).update(from: x + t * D, count: D)
                            (dyAll + (row0 + r) * D).update(from: outputGradient + t * D, count: D)
                        }
                        let g = act + forward.activationOffsets[e] + item.start * F
                        let u = act + forward.activationOffsets[e] + counts[e] * F + item.start * F
                        let h = hAll + hOffsets[e] + item.start * F
                        let dg = dgAll + hOffsets[e] + item.start * F, du = duAll + hOffsets[e] + item.start * F
                        ak_swiglu(g, u, h, n * F)
                        BLAS.sgemm(.none, .none, m: n, n: F, k: D, a: dyAll + row0 * D, lda: D, b: weights.w2[e], ldb: F, c: dh, ldc: F)
                        for r in 0..<n {
                            let s = Int(groupedSlots[row0 + r]), wt = routingWeights[s]
                            dwSlot[s] = cblas_sdot(blasint(F), dh + r * F, 1, h + r * F, 1)
                            cblas_sscal(blasint(F), wt, dh + r * F, 1)
                            cblas_sscal(blasint(D), wt, dyAll + (row0 + r) * D, 1)
                        }
                        ak_swiglu_backward(g, u, dh, dg, du, n * F)
                        BLAS.sgemm(.none, .none, m: n, n: D, k: F, a: dg, lda: F, b: weights.w1[e], ldb: D, c: dxAll + row0 * D, ldc: D)
                        BLAS.sgemm(.none, .none, m: n, n: D, k: F, a: du, lda: F, b: weights.w3[e], ldb: D,
                                   beta: 1, c: dxAll + row0 * D, ldc: D)
                    }
                }
            }
        }
    }

    // The router: dp from the slot weights' gradients (through the renormalisation), the
    // load-balancing loss's dP_e/dp, then the softmax's backward and the z-loss's gradient.
    let slots = Double(T * k)
    let lbTerm = (0..<E).map { e in Double(loadBalancingWeight) * Double(E) * (Double(forward.selectedTokenCounts[e]) / slots) / Double(T) }
    let zScale = 2 * Double(zLossWeight) / Double(T)
    forward.routerProbabilities.withUnsafePointer { probs in
        for t in 0..<T {
            let p = probs + t * E, dp = dlogits + t * E
            var dpd = lbTerm
            let c = t * k
            if config.renormalize {
                var sum = 0.0, weighted = 0.0
                for j in 0..<k {
                    sum += Double(p[Int(forward.expertIndices[c + j])])
                    weighted += Double(dwSlot[c + j]) * Double(forward.routingWeights[c + j])
                }
                for j in 0..<k { dpd[Int(forward.expertIndices[c + j])] += (Double(dwSlot[c + j]) - weighted) / sum }
            } else {
                for j in 0..<k { dpd[Int(forward.expertIndices[c + j])] += Double(dwSlot[c + j]) }
            }
            var dot = 0.0
            for e in 0..<E { dot += Double(p[e]) * dpd[e] }
            let z = zScale * Double(forward.routerLogSumExp[t])
            for e in 0..<E { dp[e] = Float(Double(p[e]) * (dpd[e] - dot + z)) }
        }
    }

    // Phase 2: the weight gradients (blocks of each weight's rows), the router's gradient (blocks
    // of D) and the input gradient (blocks of tokens: the router's part, then each computed slot's
    // row in choice order).
    var items = [MoEWorkItem]()
    for e in 0..<E where counts[e] > 0 {
        for (a, b) in rowBlocks(sizes[e], weightRowBlock) {
            items.append(MoEWorkItem(kind: 1, expert: e, start: a, end: b, cost: (b - a) * D * counts[e]))
            items.append(MoEWorkItem(kind: 2, expert: e, start: a, end: b, cost: (b - a) * D * counts[e]))
        }
        for (a, b) in rowBlocks(D, weightRowBlock) {
            items.append(MoEWorkItem(kind: 3, expert: e, start: a, end: b, cost: (b - a) * sizes[e] * counts[e]))
        }
    }
    for (a, b) in rowBlocks(D, weightRowBlock) { items.append(MoEWorkItem(kind: 4, expert: 0, start: a, end: b, cost: (b - a) * E * T)) }
    for (a, b) in rowBlocks(T, routerTokenBlock) { items.append(MoEWorkItem(kind: 5, expert: 0, start: a, end: b, cost: (b - a) * D * (E + k))) }
    items = items.largestFirst()
    forward.slotRows.withUnsafeBufferPointer { srb in
        let slotRows = srb.baseAddress!
        Parallel.run(items: items.count, threads: threads) { _, queue in
            while let i = queue.next() {
                let item = items[i], e = item.expert, a = item.start, n = item.end - item.start
                switch item.kind {
                case 1, 2:   // dw1 (dw3) rows a..<b += dG (dU)[:, a..<b]ᵀ · X
                    let F = sizes[e]
                    let src = (item.kind == 1 ? dgAll : duAll) + hOffsets[e] + a
                    let dst = (item.kind == 1 ? gradients.w1[e] : gradients.w3[e]) + a * D
                    BLAS.sgemm(.transpose, .none, m: n, n: D, k: counts[e], a: src, lda: F, b: xAll + rowOffsets[e] * D, ldb: D,
                               beta: 1, c: dst, ldc: D)
                case 3:      // dw2 rows a..<b += dY[:, a..<b]ᵀ · H
                    let F = sizes[e]
                    BLAS.sgemm(.transpose, .none, m: n, n: F, k: counts[e], a: dyAll + rowOffsets[e] * D + a, lda: D,
                               b: hAll + hOffsets[e], ldb: F, beta: 1, c: gradients.w2[e] + a * F, ldc: F)
                case 4:      // dgate[:, a..<b] += dlogitsᵀ · x[:, a..<b]
                    BLAS.sgemm(.transpose, .none, m: E, n: n, k: T, a: dlogits, lda: E, b: x + a, ldb: D,
                               beta: 1, c: gradients.gate + a, ldc: D)
                default:     // dx rows a..<b += dlogits · gate + Σ_j (computed slot rows)
                    BLAS.sgemm(.none, .none, m: n, n: D, k: E, a: dlogits + a * E, lda: E, b: weights.gate, ldb: D,
                               beta: 1, c: inputGradient + a * D, ldc: D)
                    for t in a..<item.end {
                        for j in 0..<k {
                            let r = Int(slotRows[t * k + j])
                            if r >= 0 { cblas_saxpy(blasint(D), 1, dxAll + r * D, 1, inputGradient + t * D, 1) }
                        }
                    }
                }
            }
        }
    }

    var flops = 4 * T * D * E
    for e in 0..<E { flops += 12 * counts[e] * D * sizes[e] }
    return MoEBackwardReport(workspaceBytes: scratch.bytes, flops: flops)
}
