import AttentionTensor
import CAttentionKernels
import COpenBLAS
import Foundation

/// One forward call's routing, statistics and (with `keepForBackward`) what its backward needs.
///
/// Token `t`'s choices are `expertIndices[t·k ..< t·k + k]`, most probable first (ties to the
/// lower expert index), weighed by `routingWeights` at the same places (renormalised or raw as
/// configured; a dropped slot keeps its weight here but contributes nothing to the output).
public struct MoEForward: Sendable {
    /// The configuration of the call.
    public let config: MoEConfig
    /// Tokens T.
    public let tokens: Int
    /// `[T·k]` chosen experts per token, most probable first.
    public let expertIndices: [Int32]
    /// `[T·k]` the combine weights of those choices.
    public let routingWeights: [Float]
    /// `[T, E]` the router's probabilities `softmax(x · gateᵀ)`.
    public let routerProbabilities: Tensor
    /// `[T]` each token's `logsumexp(x · gateᵀ)` (what the z-loss squares).
    public let routerLogSumExp: [Float]
    /// Token slots each expert computed (after the capacity).
    public let expertTokenCounts: [Int]
    /// Token slots the router sent to each expert (before the capacity); they sum to T·k.
    public let selectedTokenCounts: [Int]
    /// Slots over an expert's capacity, dropped (0 when dropless).
    public let droppedSlots: Int
    /// Slots each expert could take, or nil when dropless.
    public let capacity: Int?
    /// FLOPs of the expert GEMMs actually run: `Σ_e count_e · 6 · D · F_e`.
    public let expertFlops: Int
    /// FLOPs of the router GEMM: `2 · T · D · E`.
    public let routerFlops: Int
    /// Switch/Mixtral's load-balancing loss `E · Σ_e f_e · P_e`, with `f_e` the fraction of the
    /// T·k selected slots that went to e (before the capacity) and `P_e` the mean router
    /// probability of e. 1 when perfectly balanced. (transformers' `load_balancing_loss_func`
    /// sums its per-choice fractions over the k choices, so it reports k times this value.)
    public let loadBalancingLoss: Double
    /// The router z-loss `mean_t logsumexp(x_t · gateᵀ)²` (ST-MoE).
    public let zLoss: Double
    /// Bytes this call allocated beyond its inputs and output (routing arrays, scratch, and the
    /// activations kept for the backward).
    public let workspaceBytes: Int
    /// Whether the gate and up activations were kept: ``moeBackward(_:weights:x:tokens:forward:outputGradient:inputGradient:gradients:loadBalancingWeight:zLossWeight:threads:)`` needs them.
    public let keptForBackward: Bool

    // The grouping: slot s = t·k + j sits in row slotRows[s] of the grouped order (-1: dropped);
    // grouped row r holds slot groupedSlots[r]; expert e owns rows rowOffsets[e] ..< rowOffsets[e+1].
    let slotRows: [Int32]
    let groupedSlots: [Int32]
    let rowOffsets: [Int]
    // Kept activations: expert e's gate pre-activations G = X·w1ᵀ [n_e, F_e] at
    // activationOffsets[e], then its up projections U = X·w3ᵀ [n_e, F_e].
    let activationOffsets: [Int]
    let activations: MoEScratch?

    /// All FLOPs spent: router and experts.
    public var flops: Int { expertFlops + routerFlops }
    /// Token slots computed in all (`T·k − droppedSlots`).
    public var computedSlots: Int { expertTokenCounts.reduce(0, +) }

    /// Whether choice `choice` (0-based, most probable first) of token `token` was dropped by the capacity.
    public func isDropped(token: Int, choice: Int) -> Bool { slotRows[token * config.topK + choice] < 0 }
}

/// Tokens per router work item, and rows per expert work item (a fixed partition: the results
/// do not depend on the thread count).
let routerTokenBlock = 256
let expertRowBlock = 512

/// The mixture-of-experts layer's forward: `output[t] = Σ_j w_tj · E_{e_tj}(x_t)` over the top-k
/// experts of each token (SPEC.md § Mixture of experts).
///
/// Router GEMM, softmax and top-k per block of tokens; slots grouped by expert with a counting sort
/// (capacity applied there); each expert's rows gathered and run through one GEMM chain (w1, w3,
/// SwiGLU, w2) per block of rows; then each token sums its slots' rows, weighted, in choice order.
/// Work items run on `threads` workers with single-threaded OpenBLAS; every item is a fixed piece of
/// the routing, so the output is bitwise the same for any thread count.
///
/// - Parameters:
///   - x: `[T, D]` token rows (finite: a NaN or infinity throws ``MoEError/nonFinite(name:index:)``).
///   - output: `[T, D]`, overwritten (must not overlap x).
///   - keepForBackward: keep the gate and up activations (`2 · Σ_e n_e · F_e` floats) for the backward.
public func moeForward(_ config: MoEConfig, weights: MoEWeights, x: UnsafePointer<Float>, tokens T: Int,
                       output: UnsafeMutablePointer<Float>, keepForBackward: Bool,
                       threads: Int = Parallel.defaultThreads) throws -> MoEForward {
    try config.validate()
    let E = config.experts, k = config.topK, D = config.hidden, sizes = config.expertSizes
    guard weights.w1.count == E, weights.w2.count == E, weights.w3.count == E else {
        throw MoEError.expertCountMismatch(expected: E, got: weights.w1.count != E ? weights.w1.count
                                           : weights.w2.count != E ? weights.w2.count : weights.w3.count)
    }
    guard threads >= 1 else { throw MoEError.invalidThreadCount(threads) }
    guard T >= 0, T <= Int(Int32.max) / k, T <= (1 << 40) / D else { throw MoEError.invalidTokenCount(T) }
    if T > 0 {
        var largest: Float = 0
        let bad = ak_scan_values(x, T * D, 0, &largest)
        if bad >= 0 { throw MoEError.nonFinite(name: "x", index: bad) }
    }
    let slots = T * k

    // Routing: probabilities, log-sum-exps, choices and weights per token.
    var probabilities: Tensor
    do { probabilities = try Tensor(uninitialized: [T, E]) } catch { throw MoEError.allocationFailed(bytes: T * E * 4) }
    var lse = [Float](repeating: 0, count: T)
    var choices = [Int32](repeating: 0, count: slots)
    var weightsOut = [Float](repeating: 0, count: slots)
    probabilities.withUnsafeMutableBufferPointer { pb in
        lse.withUnsafeMutableBufferPointer { lb in
            choices.withUnsafeMutableBufferPointer { cb in
                weightsOut.withUnsafeMutableBufferPointer { wb in
                    route(config, gate: weights.gate, x: x, tokens: T, probabilities: pb.baseAddress, lse: lb.baseAddress,
                          choices: cb.baseAddress, weights: wb.baseAddress, threads: threads)
                }
            }
        }
    }
    if let t = lse.firstIndex(where: { !$0.isFinite }) {
        throw MoEError.nonFinite(name: "router logits x · gateᵀ (overflow, or a non-finite gate weight)", index: t)
    }

    // Grouping by expert (a counting sort over the slots in priority order: choice, then token).
    let grouping = group(choices: choices, experts: E, tokens: T, topK: k, capacity: config.capacity(tokens: T))
    let counts = grouping.counts
    let rows = grouping.rowOffsets[E]
    var activationOffsets = [Int](repeating: 0, count: E + 1)
    for e in 0..<E { activationOffsets[e + 1] = activationOffsets[e] + 2 * counts[e] * sizes[e] }

    // Losses (float64 sums in a fixed order).
    var loadBalancing = 0.0, zLoss = 0.0
    if T > 0 {
        var meanP = [Double](repeating: 0, count: E)
        probabilities.withUnsafePointer { p in
            for t in 0..<T { for e in 0..<E { meanP[e] += Double(p[t * E + e]) } }
        }
        for e in 0..<E { loadBalancing += Double(grouping.selected[e]) / Double(slots) * meanP[e] / Double(T) }
        loadBalancing *= Double(E)
        for t in 0..<T { zLoss += Double(lse[t]) * Double(lse[t]) }
        zLoss /= Double(T)
    }

    // Scratch: the expert outputs of every grouped row, and per worker the gathered rows and the
    // SwiGLU activations (also the gate and up projections when they are not kept).
    var items = [MoEWorkItem]()
    for e in 0..<E {
        for (a, b) in rowBlocks(counts[e], expertRowBlock) { items.append(MoEWorkItem(kind: 0, expert: e, start: a, end: b, cost: (b - a) * sizes[e])) }
    }
    items = items.largestFirst()
    let workers = max(1, min(threads, items.count))
    let maxF = sizes.max()!
    let block = max(1, items.map { $0.end - $0.start }.max() ?? 1)   // the largest row block
    var plan = MoEScratch.Plan()
    let yAt = plan.reserve(rows * D)
    var perWorker = [(x: Int, h: Int, g: Int, u: Int)]()
    for _ in 0..<workers {
        perWorker.append((plan.reserve(block * D), plan.reserve(block * maxF),
                          keepForBackward ? 0 : plan.reserve(block * maxF), keepForBackward ? 0 : plan.reserve(block * maxF)))
    }
    let scratch = try MoEScratch(plan)

    let y = scratch.floats(yAt)
    func runExperts(_ keptBase: UnsafeMutablePointer<Float>?) {
        grouping.groupedSlots.withUnsafeBufferPointer { gs in
            let groupedSlots = gs.baseAddress
            Parallel.run(items: items.count, threads: threads) { w, queue in
                let xs = scratch.floats(perWorker[w].x), hs = scratch.floats(perWorker[w].h)
                while let i = queue.next() {
                    let item = items[i], e = item.expert, F = sizes[e], n = item.end - item.start
                    let row0 = grouping.rowOffsets[e] + item.start
                    for r in 0..<n {
                        let t = Int(groupedSlots![row0 + r]) / k
                        (xs + r * D).update(from: x + t * D, count: D)
                    }
                    let g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>
                    if let keptBase {
                        g = keptBase + activationOffsets[e] + item.start * F
                        u = keptBase + activationOffsets[e] + counts[e] * F + item.start * F
                    } else {
                        g = scratch.floats(perWorker[w].g)
                        u = scratch.floats(perWorker[w].u)
                    }
                    BLAS.sgemm(.none, .transpose, m: n, n: F, k: D, a: xs, lda: D, b: weights.w1[e], ldb: D, c: g, ldc: F)
                    BLAS.sgemm(.none, .transpose, m: n, n: F, k: D, a: xs, lda: D, b: weights.w3[e], ldb: D, c: u, ldc: F)
                    ak_swiglu(g, u, hs, n * F)
                    BLAS.sgemm(.none, .transpose, m: n, n: D, k: F, a: hs, lda: F, b: weights.w2[e], ldb: F,
                               c: y + row0 * D, ldc: D)
                }
            }
        }
    }
    var kept: MoEScratch? = nil
    if keepForBackward {
        var keptPlan = MoEScratch.Plan()
        _ = keptPlan.reserve(activationOffsets[E])
        let activations = try MoEScratch(keptPlan)
        runExperts(activations.floats(0))
        kept = activations
    } else {
        runExperts(nil)
    }

    // Combine: each token sums its computed slots' rows, weighted, in choice order.
    grouping.slotRows.withUnsafeBufferPointer { sr in
        weightsOut.withUnsafeBufferPointer { wb in
            let slotRows = sr.baseAddress, wts = wb.baseAddress
            Parallel.run(items: (T + routerTokenBlock - 1) / routerTokenBlock, threads: threads) { _, queue in
                while let i = queue.next() {
                    for t in (i * routerTokenBlock)..<min(T, (i + 1) * routerTokenBlock) {
                        let o = output + t * D
                        o.update(repeating: 0, count: D)
                        for j in 0..<k {
                            let r = Int(slotRows![t * k + j])
                            if r >= 0 { cblas_saxpy(blasint(D), wts![t * k + j], y + r * D, 1, o, 1) }
                        }
                    }
                }
            }
        }
    }

    var expertFlops = 0
    for e in 0..<E { expertFlops += counts[e] * config.expertFlopsPerToken(e) }
    let routingBytes = T * E * 4 + T * 4 + slots * 4 * 3 + rows * 4
    return MoEForward(
        config: config, tokens: T, expertIndices: choices, routingWeights: weightsOut, routerProbabilities: probabilities,
        routerLogSumExp: lse, expertTokenCounts: counts, selectedTokenCounts: grouping.selected,
        droppedSlots: slots - rows, capacity: config.capacity(tokens: T), expertFlops: expertFlops,
        routerFlops: 2 * T * D * E, loadBalancingLoss: loadBalancing, zLoss: zLoss,
        workspaceBytes: scratch.bytes + routingBytes + (kept?.bytes ?? 0), keptForBackward: keepForBackward,
        slotRows: grouping.slotRows, groupedSlots: grouping.groupedSlots, rowOffsets: grouping.rowOffsets,
        activationOffsets: activationOffsets, activations: kept)
}

/// Router logits `x · gateᵀ`, softmax (with log-sum-exp) and the top-k choices of every token,
/// per block of tokens.
func route(_ config: MoEConfig, gate: UnsafePointer<Float>, x: UnsafePointer<Float>, tokens T: Int,
           probabilities: UnsafeMutablePointer<Float>?, lse: UnsafeMutablePointer<Float>?,
           choices: UnsafeMutablePointer<Int32>?, weights: UnsafeMutablePointer<Float>?, threads: Int) {
    guard T > 0, let probabilities, let lse, let choices, let weights else { return }
    let E = config.experts, k = config.topK, D = config.hidden
    Parallel.run(items: (T + routerTokenBlock - 1) / routerTokenBlock, threads: threads) { _, queue in
        while let i = queue.next() {
            let t0 = i * routerTokenBlock, n = min(routerTokenBlock, T - t0)
            let p = probabilities + t0 * E
            BLAS.sgemm(.none, .transpose, m: n, n: E, k: D, a: x + t0 * D, lda: D, b: gate, ldb: D, c: p, ldc: E)
            ak_softmax_rows_lse(p, n, E, E, nil, lse + t0)
            for t in t0..<(t0 + n) {
                topK(probabilities + t * E, experts: E, k: k, choices: choices + t * k, weights: weights + t * k)
                if config.renormalize {
                    var sum: Float = 0
                    for j in 0..<k { sum += weights[t * k + j] }
                    for j in 0..<k { weights[t * k + j] /= sum }
                }
            }
        }
    }
}

/// The k largest of `p[0..<E]`, largest first, ties to the lower index (an insertion into a
/// sorted window of k: an expert enters only when strictly larger than the window's last).
@inline(__always)
func topK(_ p: UnsafePointer<Float>, experts E: Int, k: Int, choices: UnsafeMutablePointer<Int32>,
          weights: UnsafeMutablePointer<Float>) {
    var filled = 0
    for e in 0..<E {
        let v = p[e]
        if filled == k {
            if !(v > weights[k - 1]) { continue }
            filled -= 1
        }
        var j = filled
        while j > 0 && v > weights[j - 1] {
            weights[j] = weights[j - 1]
            choices[j] = choices[j - 1]
            j -= 1
        }
        weights[j] = v
        choices[j] = Int32(e)
        filled += 1
    }
}

/// Slots grouped by expert: a counting sort over the slots in priority order (all first choices
/// in token order, then all second choices, ...), each expert keeping its first `capacity`.
struct MoEGrouping {
    /// Slots the router sent to each expert.
    var selected: [Int]
    /// Slots each expert computes (≤ capacity).
    var counts: [Int]
    /// `[E + 1]` first grouped row of each expert.
    var rowOffsets: [Int]
    /// `[T·k]` grouped row of each slot, -1 when dropped.
    var slotRows: [Int32]
    /// `[rows]` slot of each grouped row.
    var groupedSlots: [Int32]
}

func group(choices: [Int32], experts E: Int, tokens T: Int, topK k: Int, capacity: Int?) -> MoEGrouping {
    let cap = capacity ?? Int.max
    var selected = [Int](repeating: 0, count: E)
    for c in choices { selected[Int(c)] += 1 }
    let counts = selected.map { min($0, cap) }
    var rowOffsets = [Int](repeating: 0, count: E + 1)
    for e in 0..<E { rowOffsets[e + 1] = rowOffsets[e] + counts[e] }
    var slotRows = [Int32](repeating: -1, count: T * k)
    var groupedSlots = [Int32](repeating: 0, count: rowOffsets[E])
    var fill = [Int](repeating: 0, count: E)
    choices.withUnsafeBufferPointer { cb in
        slotRows.withUnsafeMutableBufferPointer { sr in
            groupedSlots.withUnsafeMutableBufferPointer { gs in
                for j in 0..<k {
                    for t in 0..<T {
                        let s = t * k + j, e = Int(cb[s])
                        guard fill[e] < counts[e] else { continue }
                        let r = rowOffsets[e] + fill[e]
                        fill[e] += 1
                        sr[s] = Int32(r)
                        gs[r] = Int32(s)
                    }
                }
            }
        }
    }
    return MoEGrouping(selected: selected, counts: counts, rowOffsets: rowOffsets, slotRows: slotRows, groupedSlots: groupedSlots)
}
