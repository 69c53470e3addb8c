import AttentionTensor
import CAttentionKernels

/// BigBird block-sparse attention: `O = softmax(scale · QKᵀ + mask) V` where the mask is the
/// plan's (``BigBirdPlan``), computed only on the attended blocks, so time and memory grow
/// linearly with `N` for a fixed plan density.
///
/// Shapes: `queries [B, H, N, d]`, `keys [B, Hkv, N, d]`, `values [B, Hkv, N, dv]` →
/// `[B, H, N, dv]` (self-attention: queries and keys have the same length). `H % Hkv == 0`.
///
/// The work, per (batch, KV head, query block): the window is one contiguous K/V slice and the
/// global blocks one or two more, each a GEMM for all the group's query heads stacked (their
/// structural blocks are the same); each head's random blocks are GEMMs into further column
/// ranges of the same score buffer; one softmax per row; then `P·V` block range by block range
/// (β = 1). Global query rows are full attention rows computed by the exact (tiled) kernel on
/// row views. A partial last block is handled by its real length: no padded key is ever scored.
/// The result equals dense attention under the plan's element mask to float32 rounding.
///
/// `alibi` adds ALiBi penalties `-slope_h · |i - j|` on the attended scores (computed per block).
public func bigBirdAttention(queries: Tensor, keys: Tensor, values: Tensor, plan: BigBirdPlan,
                             scale: Float? = nil, alibi: ALiBi? = nil, threads: Int? = nil) throws -> Tensor {
    let inputs = try bigBirdInputs(queries: queries, keys: keys, values: values, plan: plan, scale: scale, alibi: alibi, threads: threads)
    return try bigBirdForward(inputs, plan: plan, keepLSE: false).output
}

/// Accepted BigBird inputs: self-attention of the plan's length and heads, the plan's causality and ALiBi as the mask.
func bigBirdInputs(queries: Tensor, keys: Tensor, values: Tensor, plan: BigBirdPlan, scale: Float?, alibi: ALiBi?,
                   threads: Int?) throws -> AttentionInputs {
    let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: scale,
                                     mask: AttentionMask(isCausal: plan.causal, alibi: alibi), threads: threads)
    let shape = inputs.shape
    guard shape.N == shape.M else {
        throw AttentionError.shapeMismatch(tensor: "keys", shape: keys.shape, expected: "N = \(shape.N) positions, as the queries (BigBird is self-attention)")
    }
    guard plan.sequenceLength == shape.N, plan.heads == shape.H else {
        throw AttentionError.shapeMismatch(tensor: "queries", shape: queries.shape,
                                           expected: "the plan's N = \(plan.sequenceLength) positions and H = \(plan.heads) heads")
    }
    try inputs.checkSoftmaxRange()
    // The sparse rows' scratch is checked before anything runs: a plan whose blocks need more than
    // the memory budget is refused up front (b = 4096, w = 31 asks for tens of GiB per worker).
    let workers = min(inputs.threads, max(1, shape.B * shape.Hkv * plan.blockCount))
    let perWorker = bigBirdWorkspaceBytesPerThread(plan: plan, shape: shape)
    let (scratch, overflow) = perWorker.multipliedReportingOverflow(by: workers)
    guard !overflow else { throw AttentionError.tooLarge(buffer: "BigBird scratch of \(perWorker) bytes × \(workers) workers", bytes: nil, limit: nil) }
    try checkBudget(bytes: scratch, purpose: "BigBird blocks (\(perWorker) bytes per worker × \(workers))")
    return inputs
}

/// The query rows of global blocks (full attention rows): one or two ranges.
func bigBirdGlobalRanges(_ plan: BigBirdPlan) -> [Range<Int>] {
    let b = plan.blockSize, nb = plan.blockCount, g = plan.globalBlocks, N = plan.sequenceLength
    if plan.causal { return g > 0 ? [0..<min(N, g * b)] : [] }
    if 2 * g >= nb { return [0..<N] }
    return g > 0 ? [0..<(g * b), ((nb - g) * b)..<N] : []
}

/// BigBird's forward on accepted inputs; with `keepLSE` also each row's log-sum-exp `[B, H, N]`.
func bigBirdForward(_ inputs: AttentionInputs, plan: BigBirdPlan, keepLSE: Bool) throws -> (output: Tensor, lse: Tensor?) {
    let shape = inputs.shape, N = shape.N
    var out = try inputs.makeOutput()
    var lse: Tensor? = keepLSE ? try Tensor(uninitialized: [shape.B, shape.H, N]) : nil
    if out.count == 0 {   // dv = 0 (or nothing at all): no statistics, -inf
        if keepLSE { lse = try Tensor(filling: -.infinity, [shape.B, shape.H, N]) }
        return (out, lse)
    }
    // Global query rows: full attention rows through the exact kernel, on row views.
    for range in bigBirdGlobalRanges(plan) {
        let rows = try inputs.restricted(rows: range, keyRows: plan.causal ? 0..<range.upperBound : 0..<N,
                                         mask: AttentionMask(isCausal: plan.causal, alibi: inputs.mask.alibi))
        if keepLSE {
            let kept = try exactAttentionKeepingLSE(rows, queryOffset: range.lowerBound)
            try out.copyRows(from: kept.output, at: range.lowerBound)
            try lse!.copyColumns(from: kept.logSumExp, at: range.lowerBound)
        } else {
            let exactPlan = ExactAttentionPlan(shape: rows.shape, implementation: .tiled, threads: inputs.threads)
            try out.copyRows(from: try exactAttention(rows, plan: exactPlan, queryOffset: range.lowerBound), at: range.lowerBound)
        }
    }
    let middle = (0..<plan.blockCount).filter { !plan.isGlobalRow($0) }
    if middle.isEmpty { return (out, lse) }
    try withOptionalMutablePointer(&lse) { lp in
        try inputs.withLayout(output: &out) { layout in
            var L = layout
            L.lse = lp
            try runBigBird(L, plan: plan, middle: middle, threads: inputs.threads)
        }
    }
    return (out, lse)
}

/// Bytes of scratch ``bigBirdAttention(queries:keys:values:plan:scale:threads:)`` allocates per
/// worker for the sparse rows: `group·b` stacked rows × (d + attended columns + dv) floats.
public func bigBirdWorkspaceBytesPerThread(plan: BigBirdPlan, shape: AttentionShape) -> Int {
    let R = shape.group * plan.blockSize
    let (scores, o1) = R.multipliedReportingOverflow(by: bigBirdMaxColumns(plan: plan))
    let (bytes, o2) = (scores + R * (shape.d + shape.dv + 1)).multipliedReportingOverflow(by: 4)
    return o1 || o2 ? Int.max : bytes
}

/// The most score columns one sparse query block needs (structural plus random keys).
func bigBirdMaxColumns(plan: BigBirdPlan) -> Int {
    var most = 0
    for i in 0..<plan.blockCount where !plan.isGlobalRow(i) {
        let r = (0..<plan.heads).map { plan.random[$0][i].count }.max() ?? 0
        most = max(most, (plan.structuralBlocks(i).count + r) * plan.blockSize)
    }
    return most
}

/// The key ranges of every middle query block, built once per call (not per work item): the
/// shared runs (global and window blocks) per query block and each head's random runs.
struct BigBirdRunTable: Sendable {
    /// `shared[i]`, `random[h][i]`: contiguous key ranges, consecutive blocks merged.
    let shared: [[Range<Int>]], random: [[[Range<Int>]]]

    init(_ plan: BigBirdPlan) {
        let (b, N, nb) = (plan.blockSize, plan.sequenceLength, plan.blockCount)
        shared = (0..<nb).map { plan.isGlobalRow($0) ? [] : blockRuns(plan.structuralBlocks($0), blockSize: b, N: N) }
        random = plan.random.map { rows in rows.map { blockRuns($0, blockSize: b, N: N) } }
    }
}

/// Contiguous key ranges covering sorted block indices (consecutive blocks merged).
func blockRuns(_ blocks: [Int], blockSize b: Int, N: Int) -> [Range<Int>] {
    var runs = [Range<Int>]()
    for j in blocks {
        let r = (j * b)..<min(N, (j + 1) * b)
        if let last = runs.last, last.upperBound == r.lowerBound {
            runs[runs.count - 1] = last.lowerBound..<r.upperBound
        } else {
            runs.append(r)
        }
    }
    return runs
}

func runBigBird(_ L: AttentionLayout, plan: BigBirdPlan, middle: [Int], threads: Int) throws {
    let G = L.group, b = plan.blockSize, d = L.d, dv = L.dv, N = L.N
    let R = G * b, ldS = bigBirdMaxColumns(plan: plan)
    let perSequence = middle.count
    let runs = BigBirdRunTable(plan)
    let (scores, overflow) = R.multipliedReportingOverflow(by: ldS)
    guard !overflow else { throw AttentionError.tooLarge(buffer: "BigBird score block of \(R) × \(ldS)", bytes: nil, limit: nil) }
    try runWithScratch(items: L.B * L.Hkv * perSequence, threads: threads, floats: R * (d + dv + 1) + scores, ints: R,
                       purpose: "BigBird blocks of \(R) stacked rows × \(ldS) columns") { ws, queue in
        let qp = ws.floats(R * d), s = ws.floats(R * ldS), o = ws.floats(R * dv), rowLSE = ws.floats(R), valid = ws.ints(R)
        while let item = queue.next() {
            let i = middle[item % perSequence], bh = item / perSequence
            let blk = QueryBlock(b: bh / L.Hkv, kvHead: bh % L.Hkv, i0: i * b, rows: min(b, N - i * b), heads: 0..<G)
            let n = blk.rows, rows = G * n
            L.packQueries(blk, into: qp)
            let sharedColumns = bigBirdScores(L, runs: runs, block: blk, queryBlock: i, packed: qp, scores: s, ldS: ldS, valid: valid)
            let shared = runs.shared[i]
            ak_softmax_rows_lse(s, rows, ldS, ldS, valid, rowLSE)
            if let lse = L.lse {
                for gi in 0..<G { (lse + (blk.b * L.H + blk.kvHead * G + gi) * N + blk.i0).update(from: rowLSE + gi * n, count: n) }
            }
            // P·V, range by range, accumulated (β = 1 after the first).
            var col = 0
            for (idx, run) in shared.enumerated() {
                BLAS.sgemm(.none, .none, m: rows, n: dv, k: run.count, a: s + col, lda: ldS,
                           b: L.vRow(blk.b, blk.kvHead, run.lowerBound), ldb: L.vStride.m,
                           beta: idx == 0 ? 0 : 1, c: o, ldc: dv)
                col += run.count
            }
            for gi in 0..<G {
                var c = sharedColumns
                for run in runs.random[blk.kvHead * G + gi][i] {
                    BLAS.sgemm(.none, .none, m: n, n: dv, k: run.count, a: s + gi * n * ldS + c, lda: ldS,
                               b: L.vRow(blk.b, blk.kvHead, run.lowerBound), ldb: L.vStride.m,
                               beta: 1, c: o + gi * n * dv, ldc: dv)
                    c += run.count
                }
                ak_copy_scaled(o + gi * n * dv, dv, L.outRow(blk.b, blk.kvHead * G + gi, blk.i0), dv, n, dv, 1)
            }
        }
    }
}

/// Scores `s = (scale·Q) Kᵀ` of the block's stacked rows (`blk.heads`, packed with the scale in
/// `packed`) over its attended columns, with ALiBi and, when causal, the diagonal block's mask
/// (-inf); `valid[r]` = the columns row r uses. One GEMM per shared run for the stacked heads,
/// per head for its random runs. The shared runs fill columns `0 ..< sharedColumns` (returned),
/// each head's random runs the columns after them.
func bigBirdScores(_ L: AttentionLayout, runs: BigBirdRunTable, block blk: QueryBlock, queryBlock i: Int,
                   packed qp: UnsafePointer<Float>, scores s: UnsafeMutablePointer<Float>, ldS: Int,
                   valid: UnsafeMutablePointer<Int32>) -> Int {
    let (d, G) = (L.d, L.group)
    let n = blk.rows, rows = blk.stacked
    var col = 0, diagonalColumn = -1
    for run in runs.shared[i] {
        BLAS.sgemm(.none, .transpose, m: rows, n: run.count, k: d, a: qp, lda: d,
                   b: L.kRow(blk.b, blk.kvHead, run.lowerBound), ldb: L.kStride.m, c: s + col, ldc: ldS)
        L.addBias(blk, j0: run.lowerBound, width: run.count, s: s + col, lds: ldS)
        if run.contains(blk.i0) { diagonalColumn = col + blk.i0 - run.lowerBound }
        col += run.count
    }
    for (gi, g) in blk.heads.enumerated() {
        var c = col
        for run in runs.random[blk.kvHead * G + g][i] {
            BLAS.sgemm(.none, .transpose, m: n, n: run.count, k: d, a: qp + gi * n * d, lda: d,
                       b: L.kRow(blk.b, blk.kvHead, run.lowerBound), ldb: L.kStride.m, c: s + gi * n * ldS + c, ldc: ldS)
            L.addBias(blk, j0: run.lowerBound, width: run.count, s: s + c, lds: ldS, rows: (gi * n)..<((gi + 1) * n))
            c += run.count
        }
        for t in 0..<n { valid[gi * n + t] = Int32(c) }
    }
    // Causal: inside the diagonal block, query t sees keys up to t only.
    if L.causal, diagonalColumn >= 0 {
        for r in 0..<rows {
            let t = r % n
            if t + 1 < n { ak_fill(s + r * ldS + diagonalColumn + t + 1, n - t - 1, -.infinity) }
        }
    }
    return col
}
