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
    let shape = try attentionShape(queries: queries, keys: keys, values: values)
    guard shape.N == shape.M else {
        throw AttentionError.shapeMismatch("BigBird is self-attention: N = \(shape.N) queries but M = \(shape.M) keys")
    }
    guard plan.sequenceLength == shape.N, plan.heads == shape.H else {
        throw AttentionError.shapeMismatch("plan is for N = \(plan.sequenceLength), H = \(plan.heads); inputs have N = \(shape.N), H = \(shape.H)")
    }
    if let threads, threads < 1 { throw AttentionError.invalidArgument("threads must be at least 1, got \(threads)") }
    try checkFinite([("queries", queries), ("keys", keys), ("values", values)])
    let threads = threads ?? Parallel.defaultThreads
    let scale = scale ?? 1 / Float(shape.d).squareRoot()
    guard scale.isFinite else { throw AttentionError.invalidArgument("scale must be finite, got \(scale)") }
    if let alibi, alibi.slopes.count != shape.H {
        throw AttentionError.shapeMismatch("ALiBi has \(alibi.slopes.count) slopes for H = \(shape.H) heads")
    }
    var out = try Tensor(uninitialized: [shape.B, shape.H, shape.N, shape.dv])
    if out.count == 0 { return out }

    // Global query rows: full attention rows through the exact kernel, on row views.
    let b = plan.blockSize, nb = plan.blockCount, g = plan.globalBlocks, N = shape.N
    var globalRanges = [Range<Int>]()
    if plan.causal {
        if g > 0 { globalRanges.append(0..<min(N, g * b)) }
    } else if 2 * g >= nb {
        globalRanges.append(0..<N)
    } else if g > 0 {
        globalRanges += [0..<(g * b), ((nb - g) * b)..<N]
    }
    for range in globalRanges {
        let keyRange = plan.causal ? 0..<range.upperBound : 0..<N
        let q = try queries.rows(range), k = try keys.rows(keyRange), v = try values.rows(keyRange)
        let exactPlan = ExactAttentionPlan(shape: try attentionShape(queries: q, keys: k, values: v),
                                           implementation: .tiled, threads: threads)
        let rows = try exactAttention(queries: q, keys: k, values: v, scale: scale,
                                      mask: AttentionMask(isCausal: plan.causal, alibi: alibi), plan: exactPlan,
                                      queryOffset: range.lowerBound)
        try out.copyRows(from: rows, at: range.lowerBound)
    }

    let middle = (0..<nb).filter { !plan.isGlobalRow($0) }
    if middle.isEmpty { return out }
    let q = queries.lastAxisContiguous(), k = keys.lastAxisContiguous(), v = values.lastAxisContiguous()
    out.withUnsafeMutableBufferPointer { o in
        q.withUnsafePointer { pq in
            k.withUnsafePointer { pk in
                v.withUnsafePointer { pv in
                  withOptionalArray(alibi?.slopes) { pa in
                    var layout = AttentionLayout(
                        B: shape.B, H: shape.H, Hkv: shape.Hkv, N: N, M: N, d: shape.d, dv: shape.dv,
                        q: pq, qStride: (q.strides[0], q.strides[1], q.strides[2]),
                        k: pk, kStride: (k.strides[0], k.strides[1], k.strides[2]),
                        v: pv, vStride: (v.strides[0], v.strides[1], v.strides[2]),
                        out: o.baseAddress!, scale: scale, causal: plan.causal, keyLengths: nil,
                        bias: nil, biasStride: (0, 0, 0))
                    layout.alibi = pa
                    runBigBird(layout, plan: plan, middle: middle, threads: threads)
                  }
                }
            }
        }
    }
    return out
}

/// Bytes of scratch ``bigBirdAttention(queries:keys:values:plan:scale:threads:)`` allocates per
/// worker for the sparse rows: `group·b` stacked rows × (d + attended columns + dv) floats.
public func bigBirdWorkspaceBytesPerThread(plan: BigBirdPlan, shape: AttentionShape) -> Int {
    let R = shape.group * plan.blockSize
    return R * (shape.d + bigBirdMaxColumns(plan: plan) + shape.dv) * 4 + R * 4
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

func runBigBird(_ L: AttentionLayout, plan: BigBirdPlan, middle: [Int], threads: Int) {
    let G = L.group, b = plan.blockSize, d = L.d, dv = L.dv, N = L.N
    let R = G * b, ldS = bigBirdMaxColumns(plan: plan)
    let perSequence = middle.count
    Parallel.run(items: L.B * L.Hkv * perSequence, threads: threads) { _, queue in
        var ws = Workspace(floats: R * (d + ldS + dv), ints: R)
        defer { ws.free() }
        let qp = ws.floats(R * d), s = ws.floats(R * ldS), o = ws.floats(R * dv), valid = ws.ints(R)
        while let item = queue.next() {
            let i = middle[item % perSequence], bh = item / perSequence
            let blk = QueryBlock(b: bh / L.Hkv, kvHead: bh % L.Hkv, i0: i * b, rows: min(b, N - i * b))
            let n = blk.rows, rows = G * n
            L.packQueries(blk, into: qp)
            // Structural blocks (global + window): shared by the group, one GEMM per contiguous run.
            let shared = blockRuns(plan.structuralBlocks(i), blockSize: b, N: N)
            var col = 0
            var diagonalColumn = -1
            for run in shared {
                BLAS.sgemm(.none, .transpose, m: rows, n: run.count, k: d, a: qp, lda: d,
                           b: L.kRow(blk.b, blk.kvHead, run.lowerBound), ldb: L.kStride.m, c: s + col, ldc: ldS)
                L.addBias(blk, j0: run.lowerBound, width: run.count, s: s + col, lds: ldS)
                if run.contains(blk.i0) { diagonalColumn = col + blk.i0 - run.lowerBound }
                col += run.count
            }
            let sharedColumns = col
            // Random blocks: per query head, into the columns after the shared ones.
            var randomRuns = [[Range<Int>]]()
            for gi in 0..<G {
                let runs = blockRuns(plan.random[blk.kvHead * G + gi][i], blockSize: b, N: N)
                var c = sharedColumns
                for run in runs {
                    BLAS.sgemm(.none, .transpose, m: n, n: run.count, k: d, a: qp + gi * n * d, lda: d,
                               b: L.kRow(blk.b, blk.kvHead, run.lowerBound), ldb: L.kStride.m,
                               c: s + gi * n * ldS + c, ldc: ldS)
                    L.addBias(blk, j0: run.lowerBound, width: run.count, s: s + c, lds: ldS, rows: (gi * n)..<((gi + 1) * n))
                    c += run.count
                }
                for t in 0..<n { valid[gi * n + t] = Int32(c) }
                randomRuns.append(runs)
            }
            // Causal: inside the diagonal block, query t sees keys up to t only.
            if L.causal, diagonalColumn >= 0 {
                for r in 0..<rows {
                    let t = r % n
                    if t + 1 < n { ak_fill(s + r * ldS + diagonalColumn + t + 1, n - t - 1, -.infinity) }
                }
            }
            ak_softmax_rows(s, rows, ldS, ldS, valid)
            // P·V, range by range, accumulated (β = 1 after the first).
            col = 0
            for (idx, run) in shared.enumerated() {
                BLAS.sgemm(.none, .none, m: rows, n: dv, k: run.count, a: s + col, lda: ldS,
                           b: L.vRow(blk.b, blk.kvHead, run.lowerBound), ldb: L.vStride.m,
                           beta: idx == 0 ? 0 : 1, c: o, ldc: dv)
                col += run.count
            }
            for gi in 0..<G {
                var c = sharedColumns
                for run in randomRuns[gi] {
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

extension Tensor {
    /// Copies `rows` (`[B, H, n, dv]`) into this `[B, H, N, dv]` tensor at row offset `at`.
    mutating func copyRows(from rows: Tensor, at offset: Int) throws {
        guard rank == 4, rows.rank == 4, rows.shape[0] == shape[0], rows.shape[1] == shape[1],
              rows.shape[3] == shape[3], offset + rows.shape[2] <= shape[2] else {
            throw TensorError.shapeMismatch("cannot place rows \(rows.shape) into \(shape) at \(offset)")
        }
        let src = rows.contiguous()
        let (B, H, n, dv, N) = (shape[0], shape[1], rows.shape[2], shape[3], shape[2])
        withUnsafeMutableBufferPointer { dst in
            src.withUnsafePointer { p in
                for bh in 0..<(B * H) {
                    (dst.baseAddress! + (bh * N + offset) * dv).update(from: p + bh * n * dv, count: n * dv)
                }
            }
        }
    }
}
