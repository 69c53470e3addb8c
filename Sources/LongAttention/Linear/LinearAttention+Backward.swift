import AttentionTensor
import CAttentionKernels
import Foundation

/// Linear attention's backward: the gradients of `L = Σ out ⊙ dOut` with respect to q, k, v,
/// in O(N) time and an O(F·dv) state, for every feature map (FAVOR+'s random features fixed).
///
/// With `num_i = φ(q_i)ᵀ S_i`, `den_i = φ(q_i)·z_i + ε`, `O_i = num_i / den_i`, the upstream
/// gradient gives `dnum_i = dO_i / den_i` and `dden_i = -(dO_i · O_i) / den_i`; then
///
///     dφ(q_i) = S_i dnum_i + z_i dden_i
///     dφ(k_j) = R_j v_j + r_j,   dv_j = R_jᵀ φ(k_j),   R_j = Σ_{i sees j} φ(q_i) dnum_iᵀ,  r_j = Σ φ(q_i) dden_i
///
/// (Katharopoulos et al. 2020, §3.3: the gradient is a pair of cumulative sums). Causal: a forward
/// pass over chunks carries `S, z` (intra-chunk terms as masked GEMMs, as in the forward) and
/// keeps `den` and `dden` per row (2 floats, so the reverse pass needs no state of the forward);
/// a reverse pass carries `R, r`. Non-causal: `R, r` are the same for every key. The feature
/// map's derivative closes the chain (elu + 1, relu; FAVOR+ through its projection, its key
/// stabiliser a constant that cancels; Efficient Attention through both softmaxes).
///
/// With `forward` from ``linearAttentionForward(queries:keys:values:featureMap:causal:epsilon:chunkSize:threads:)``
/// (the output and each row's normaliser, like FlashAttention's log-sum-exp), `dnum` and `dden`
/// come from it and the backward's scratch is independent of N. Without it (and for FAVOR+, whose
/// forward stabiliser changes from chunk to chunk), the backward's forward sweep recomputes the
/// normalisers and keeps `den, dden` per query row (2 floats) for the reverse sweep.
///
/// Shapes: `queries [B, H, N, d]`, `keys [B, Hkv, M, d]`, `values [B, Hkv, M, dv]`,
/// `outputGradient [B, H, N, dv]`; options as ``linearAttention(queries:keys:values:featureMap:causal:epsilon:chunkSize:threads:)``.
/// The query heads of a GQA group are stacked in every GEMM and their contributions to the shared
/// `R, r` sum there. Bitwise the same for any thread count.
public func linearAttentionBackward(
    queries: Tensor, keys: Tensor, values: Tensor, forward: LinearAttentionForward? = nil, outputGradient: Tensor,
    featureMap: LinearFeatureMap = .elu, causal: Bool = false, epsilon: Float = 1e-6, chunkSize: Int = 64, threads: Int? = nil
) throws -> AttentionGradients {
    let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: 1, threads: threads)
    guard epsilon.isFinite, epsilon >= 0 else { throw AttentionError.invalidArgument(name: "epsilon", value: "\(epsilon)", expected: "finite and >= 0") }
    if causal, featureMap == .softmax {
        throw AttentionError.invalidArgument(name: "causal", value: "true", expected: "false with the softmax feature map (Efficient Attention is non-causal only)")
    }
    let back = try BackwardInputs(inputs, outputGradient: outputGradient)
    try checkLinearRange(inputs, featureMap: featureMap)
    if let forward {
        guard forward.output.shape == inputs.shape.outputShape,
              forward.normalizers.shape == [inputs.shape.B, inputs.shape.H, inputs.shape.N] else {
            let output = forward.output.shape == inputs.shape.outputShape
            throw AttentionError.shapeMismatch(tensor: output ? "saved forward's normalizers" : "saved forward's output",
                                               shape: output ? forward.normalizers.shape : forward.output.shape,
                                               expected: output ? "\([inputs.shape.B, inputs.shape.H, inputs.shape.N])" : "\(inputs.shape.outputShape) for inputs \(inputs.shape)")
        }
    }
    // FAVOR+'s saved normalisers are in its forward's running stabiliser units: recomputed instead.
    let saved: LinearAttentionForward? = { if case .favor = featureMap { return nil } else { return forward } }()
    let savedOut = saved?.output.lastAxisContiguous(), savedDen = saved?.normalizers.contiguous()
    let s = inputs.shape
    let plan = try LinearAttentionPlan.checked(shape: s, featureMap: featureMap, causal: causal, chunkSize: chunkSize,
                                               threads: inputs.threads)
    var favor: FavorFeatures?
    if case .favor(let m, let seed) = featureMap { favor = try FavorFeatures(dimension: s.d, features: m, seed: seed) }
    var grads = AttentionGradients(queries: try Tensor(zeros: [s.B, s.H, s.N, s.d]), keys: try Tensor(zeros: [s.B, s.Hkv, s.M, s.d]),
                                   values: try Tensor(zeros: [s.B, s.Hkv, s.M, s.dv]), beta: nil)
    if s.B * s.H * s.N == 0 || s.M == 0 { return grads }
    let dO = back.dOut
    try grads.queries.withUnsafeMutableBufferPointer { dq in
        try grads.keys.withUnsafeMutableBufferPointer { dk in
            try grads.values.withUnsafeMutableBufferPointer { dv in
                try dO.withUnsafePointer { pdo in
                    try withOptionalPointer(savedOut) { po in
                        try withOptionalPointer(savedDen) { pden in
                            try inputs.withLayout(outputPointer: dq.baseAddress!) { L in
                                var G = LinearGradients(dOut: pdo, dOutStride: (dO.strides[0], dO.strides[1], dO.strides[2]),
                                                        dq: dq.baseAddress!, dk: dk.baseAddress!, dv: dv.baseAddress!)
                                if let po, let pden, let o = savedOut {
                                    G.saved = (po, (o.strides[0], o.strides[1], o.strides[2]), pden)
                                }
                                try runLinearBackward(L, G, plan: plan, favor: favor, epsilon: favor == nil ? epsilon : 0)
                            }
                        }
                    }
                }
            }
        }
    }
    return grads
}

/// Linear attention's forward for training: the output and each query row's normaliser
/// `φ(q)·z + ε` (`[B, H, N]`; 1 for Efficient Attention), which
/// ``linearAttentionBackward(queries:keys:values:forward:outputGradient:featureMap:causal:epsilon:chunkSize:threads:)``
/// reads instead of keeping per-row state of its own.
public struct LinearAttentionForward: Sendable {
    public let output: Tensor
    public let normalizers: Tensor
}

/// Linear attention keeping each row's normaliser; options as
/// ``linearAttention(queries:keys:values:featureMap:causal:epsilon:chunkSize:threads:)``.
public func linearAttentionForward(
    queries: Tensor, keys: Tensor, values: Tensor, featureMap: LinearFeatureMap = .elu, causal: Bool = false,
    epsilon: Float = 1e-6, chunkSize: Int = 64, threads: Int? = nil
) throws -> LinearAttentionForward {
    let shape = try AttentionShape(queries: queries, keys: keys, values: values)
    let plan = try LinearAttentionPlan.checked(shape: shape, featureMap: featureMap, causal: causal, chunkSize: chunkSize,
                                               threads: threads)
    var out = try Tensor(uninitialized: shape.outputShape)
    var normalizers = try Tensor(zeros: [shape.B, shape.H, shape.N])
    try normalizers.withUnsafeMutableBufferPointer { np in
        try linearAttention(queries: queries, keys: keys, values: values, epsilon: epsilon, plan: plan, into: &out,
                            normalizers: np.baseAddress)
    }
    return LinearAttentionForward(output: out, normalizers: normalizers)
}

/// The gradient side of a linear backward: dO rows and the contiguous gradient outputs.
struct LinearGradients {
    let dOut: UnsafePointer<Float>, dOutStride: (b: Int, h: Int, n: Int)
    let dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>
    /// The forward's output rows and normalisers `[B, H, N]`, when kept.
    var saved: (out: UnsafePointer<Float>, outStride: (b: Int, h: Int, n: Int), den: UnsafePointer<Float>)? = nil

    @inline(__always) func dOutRow(_ b: Int, _ h: Int, _ i: Int) -> UnsafePointer<Float> {
        dOut + b * dOutStride.b + h * dOutStride.h + i * dOutStride.n
    }
}

func runLinearBackward(_ L: AttentionLayout, _ grad: LinearGradients, plan: LinearAttentionPlan, favor: FavorFeatures?,
                       epsilon: Float) throws {
    let F = plan.featureDimension, C = plan.rowsPerChunk, Gp = plan.headsPerPart, parts = plan.parts
    let (G, d, dv, M, N) = (L.group, L.d, L.dv, L.M, L.N)
    let gq = Gp * C
    let map = plan.featureMap
    let scaledW = favor.map { f in f.projection.map { $0 * Foundation.pow(Float(d), -0.25) } } ?? []
    let kv = try HeadPartGradients(dk: grad.dk, dv: grad.dv, sequences: L.B * L.Hkv, parts: parts, M: M, d: d, dvWidth: dv,
                                   purpose: "linear attention backward")
    defer { kv.deallocate() }
    // Causal: den and dden of every query row, kept by the forward sweep for the reverse sweep.
    let keepRows = plan.causal && grad.saved == nil
    let rowFloats = keepRows ? L.B * L.Hkv * parts * Gp * N * 2 : 0
    try checkBudget(bytes: rowFloats * 4, purpose: "linear backward row normalisers")
    let rowStore: UnsafeMutablePointer<Float>? = keepRows ? .allocate(capacity: max(1, rowFloats)) : nil
    defer { rowStore?.deallocate() }
    // The intra-chunk score blocks A, A2 exist only in the causal form (non-causal chunks are 2048 rows).
    let floats = 2 * C * F + 2 * gq * F + (plan.causal ? 2 * gq * C : 0) + 3 * gq * dv + 2 * gq + 2 * F * dv + 4 * F + 2 * max(C, gq) + gq * d
    try scaledW.withUnsafeBufferPointer { wbuf in
        try runWithScratch(items: L.B * L.Hkv * parts, threads: plan.threads, floats: floats, ints: gq, arrays: 24,
                           purpose: "linear attention backward chunks of \(C) rows") { ws, queue in
            let phiK = ws.floats(C * F), dPhiK = ws.floats(C * F), phiQ = ws.floats(gq * F), dPhiQ = ws.floats(gq * F)
            let A = plan.causal ? ws.floats(gq * C) : phiQ, A2 = plan.causal ? ws.floats(gq * C) : dPhiQ
            let num = ws.floats(gq * dv), dnum = ws.floats(gq * dv), dOp = ws.floats(gq * dv)
            let den = ws.floats(gq), dden = ws.floats(gq)
            let state = LinearState(S: ws.floats(F * dv), z: ws.floats(F), F: F, dv: dv)
            let adjoint = LinearState(S: ws.floats(F * dv), z: ws.floats(F), F: F, dv: dv)
            let colmax = ws.floats(F), colC = ws.floats(F)
            let r1 = ws.floats(max(C, gq)), r2 = ws.floats(max(C, gq)), xd = ws.floats(gq * d)
            let valid = ws.ints(gq)
            let features = BackwardFeatures(map: map, d: d, F: F, w: wbuf.baseAddress, rowScratch: r1, rowScratch2: r2)
            while let item = queue.next() {
                let part = item % parts, bh = item / parts
                let b = bh / L.Hkv, kvh = bh % L.Hkv
                let heads = (part * Gp)..<max(part * Gp, min(G, (part + 1) * Gp))
                let (dkBase, dvBase) = kv.rows(sequence: bh, part: part)
                if heads.isEmpty { continue }
                let hn = heads.count
                var feat = features
                feat.prepareKeys(L.kRow(b, kvh, 0), ld: L.kStride.m, count: M, scratch: phiK, chunk: C)

                /// Query features of positions i0 ..< i0 + n for the part's heads, stacked; dO likewise.
                func loadQueries(_ i0: Int, _ n: Int) {
                    for (gi, g) in heads.enumerated() {
                        let h = kvh * G + g
                        feat.queries(L.qRow(b, h, i0), ld: L.qStride.n, rows: n, into: phiQ + gi * n * F)
                        ak_copy_scaled(grad.dOutRow(b, h, i0), grad.dOutStride.n, dOp + gi * n * dv, dv, n, dv, 1)
                    }
                }
                /// dq rows = chain(dφ(Q)) for the stacked rows.
                func writeQueryGradients(_ i0: Int, _ n: Int) {
                    for (gi, g) in heads.enumerated() {
                        let h = kvh * G + g
                        feat.chain(L.qRow(b, h, i0), ld: L.qStride.n, rows: n, phi: phiQ + gi * n * F, dphi: dPhiQ + gi * n * F,
                                   into: grad.dq + ((b * L.H + h) * N + i0) * d, ldd: d, isKey: false, scratch: xd)
                    }
                }
                /// From the saved forward: dnum = dO / den, dden = -(dO · O) / den for the stacked rows.
                func savedAdjoints(_ i0: Int, _ n: Int) {
                    let kept = grad.saved!
                    for (gi, g) in heads.enumerated() {
                        let h = kvh * G + g
                        let o = kept.out + b * kept.outStride.b + h * kept.outStride.h + i0 * kept.outStride.n
                        ak_row_dots(dOp + gi * n * dv, dv, o, kept.outStride.n, n, dv, dden + gi * n)
                        for t in 0..<n {
                            let r = gi * n + t, den = kept.den[(b * L.H + h) * N + i0 + t]
                            let inv = den > 0 ? 1 / den : 0
                            dden[r] = -dden[r] * inv
                            ak_copy_scaled(dOp + r * dv, dv, dnum + r * dv, dv, 1, dv, inv)
                        }
                    }
                }
                /// dnum = dO / den and dden = -(dO · num) / den² (= -(dO · O) / den); Efficient
                /// Attention has no normaliser: dnum = dO.
                func outputAdjoints(_ rows: Int, normalised: Bool) {
                    if !normalised {
                        dnum.update(from: dOp, count: rows * dv)
                        return
                    }
                    ak_row_dots(dOp, dv, num, dv, rows, dv, dden)
                    for r in 0..<rows {
                        let inv = den[r] > 0 ? 1 / den[r] : 0
                        dden[r] = -dden[r] * inv * inv
                        ak_copy_scaled(dOp + r * dv, dv, dnum + r * dv, dv, 1, dv, inv)
                    }
                }

                if map == .softmax {
                    efficientBackward(L, grad, b: b, kvh: kvh, heads: heads, C: C, F: F, phiK: phiK, dPhiK: dPhiK,
                                      phiQ: phiQ, dPhiQ: dPhiQ, dOp: dOp, state: state, adjoint: adjoint, colmax: colmax,
                                      colC: colC, dkBase: dkBase, dvBase: dvBase, scratch: xd)
                    continue
                }

                if !plan.causal {
                    // S, z over every key; then per query chunk the adjoints, dq, and R += φQᵀ dnum, r += φQᵀ dden.
                    state.reset()
                    adjoint.reset()
                    var j0 = 0
                    while j0 < M {
                        let w = min(C, M - j0)
                        feat.keys(L.kRow(b, kvh, j0), ld: L.kStride.m, rows: w, into: phiK)
                        state.write(phiK, ldf: F, rows: w, values: L.vRow(b, kvh, j0), ldv: L.vStride.m)
                        j0 += w
                    }
                    var i0 = 0
                    while i0 < N {
                        let n = min(C, N - i0), rows = hn * n
                        loadQueries(i0, n)
                        if grad.saved != nil {
                            savedAdjoints(i0, n)
                        } else {
                            state.read(phiQ, ldf: F, rows: rows, num: num, ldn: dv, den: den)
                            for r in 0..<rows { den[r] += epsilon }
                            outputAdjoints(rows, normalised: true)
                        }
                        // dφQ = dnum Sᵀ + dden zᵀ
                        BLAS.sgemm(.none, .transpose, m: rows, n: F, k: dv, a: dnum, lda: dv, b: state.S, ldb: dv, c: dPhiQ, ldc: F)
                        addOuter(dPhiQ, ldc: F, rows: rows, cols: F, x: dden, y: state.z)
                        writeQueryGradients(i0, n)
                        BLAS.sgemm(.transpose, .none, m: F, n: dv, k: rows, a: phiQ, lda: F, b: dnum, ldb: dv, beta: 1, c: adjoint.S, ldc: dv)
                        BLAS.sgemv(.transpose, m: rows, n: F, a: phiQ, lda: F, x: dden, beta: 1, y: adjoint.z)
                        i0 += n
                    }
                    j0 = 0
                    while j0 < M {
                        let w = min(C, M - j0)
                        feat.keys(L.kRow(b, kvh, j0), ld: L.kStride.m, rows: w, into: phiK)
                        keyGradients(L, b: b, kvh: kvh, j0: j0, w: w, F: F, feat: feat, phiK: phiK, dPhiK: dPhiK,
                                     adjoint: adjoint, dkBase: dkBase, dvBase: dvBase, scratch: xd)
                        j0 += w
                    }
                    continue
                }

                // Causal, forward sweep: as the forward, plus dφQ and the rows' den, dden.
                let off = M - N
                let store = rowStore.map { $0 + item * Gp * N * 2 }
                state.reset()
                var j0 = 0
                while j0 < min(M, max(0, off)) {
                    let w = min(C, min(M, off) - j0)
                    feat.keys(L.kRow(b, kvh, j0), ld: L.kStride.m, rows: w, into: phiK)
                    state.write(phiK, ldf: F, rows: w, values: L.vRow(b, kvh, j0), ldv: L.vStride.m)
                    j0 += w
                }
                /// The chunk's keys and intra-chunk mask: keys kj0 ..< kj0 + w; query t of each head
                /// sees the first valid[t] of them.
                func chunkKeys(_ i0: Int, _ n: Int) -> (kj0: Int, w: Int) {
                    let kj0 = min(max(i0 + off, 0), M), kj1 = min(max(i0 + n + off, 0), M)
                    for gi in 0..<hn { for t in 0..<n { valid[gi * n + t] = Int32(min(max(i0 + t + off - kj0 + 1, 0), kj1 - kj0)) } }
                    return (kj0, kj1 - kj0)
                }
                var i0 = 0
                while i0 < N {
                    let n = min(C, N - i0), rows = hn * n
                    let (kj0, w) = chunkKeys(i0, n)
                    if w > 0 { feat.keys(L.kRow(b, kvh, kj0), ld: L.kStride.m, rows: w, into: phiK) }
                    loadQueries(i0, n)
                    if grad.saved != nil {
                        savedAdjoints(i0, n)
                    } else {
                        // Recompute the forward's num and den (as the forward does) for the adjoints.
                        state.read(phiQ, ldf: F, rows: rows, num: num, ldn: dv, den: den)
                        if w > 0 {
                            BLAS.sgemm(.none, .transpose, m: rows, n: w, k: F, a: phiQ, lda: F, b: phiK, ldb: F, c: A, ldc: C)
                            ak_zero_after(A, rows, w, C, valid)
                            ak_row_sums_add(A, rows, w, C, den)
                            BLAS.sgemm(.none, .none, m: rows, n: dv, k: w, a: A, lda: C, b: L.vRow(b, kvh, kj0), ldb: L.vStride.m,
                                       beta: 1, c: num, ldc: dv)
                        }
                        for r in 0..<rows { den[r] += epsilon }
                        outputAdjoints(rows, normalised: true)
                    }
                    // dφQ = dnum S_prevᵀ + dden z_prevᵀ + mask(dnum V_cᵀ + dden) φK_c
                    BLAS.sgemm(.none, .transpose, m: rows, n: F, k: dv, a: dnum, lda: dv, b: state.S, ldb: dv, c: dPhiQ, ldc: F)
                    addOuter(dPhiQ, ldc: F, rows: rows, cols: F, x: dden, y: state.z)
                    if w > 0 {
                        intraChunkAdjoint(A2, ldc: C, rows: rows, w: w, dnum: dnum, dv: dv, v: L.vRow(b, kvh, kj0),
                                          ldv: L.vStride.m, dden: dden, valid: valid)
                        BLAS.sgemm(.none, .none, m: rows, n: F, k: w, a: A2, lda: C, b: phiK, ldb: F, beta: 1, c: dPhiQ, ldc: F)
                    }
                    writeQueryGradients(i0, n)
                    if let store { for gi in 0..<hn {
                        for t in 0..<n {
                            store[(gi * N + i0 + t) * 2] = den[gi * n + t]
                            store[(gi * N + i0 + t) * 2 + 1] = dden[gi * n + t]
                        }
                    } }
                    if w > 0 { state.write(phiK, ldf: F, rows: w, values: L.vRow(b, kvh, kj0), ldv: L.vStride.m) }
                    i0 += n
                }
                // Reverse sweep: R, r hold the queries after the chunk; the chunk's own pairs are
                // masked GEMMs; then the chunk's queries join R, r.
                adjoint.reset()
                let chunks = (N + C - 1) / C
                for c in stride(from: chunks - 1, through: 0, by: -1) {
                    let i0 = c * C, n = min(C, N - i0), rows = hn * n
                    let (kj0, w) = chunkKeys(i0, n)
                    loadQueries(i0, n)
                    if let store {
                        for gi in 0..<hn {
                            for t in 0..<n {
                                den[gi * n + t] = store[(gi * N + i0 + t) * 2]
                                dden[gi * n + t] = store[(gi * N + i0 + t) * 2 + 1]
                            }
                        }
                        for r in 0..<rows {
                            let inv = den[r] > 0 ? 1 / den[r] : 0
                            ak_copy_scaled(dOp + r * dv, dv, dnum + r * dv, dv, 1, dv, inv)
                        }
                    } else {
                        savedAdjoints(i0, n)
                    }
                    if w > 0 {
                        feat.keys(L.kRow(b, kvh, kj0), ld: L.kStride.m, rows: w, into: phiK)
                        keyGradients(L, b: b, kvh: kvh, j0: kj0, w: w, F: F, feat: feat, phiK: phiK, dPhiK: dPhiK,
                                     adjoint: adjoint, dkBase: dkBase, dvBase: dvBase, scratch: xd,
                                     intra: (rows: rows, phiQ: UnsafePointer(phiQ), dnum: UnsafePointer(dnum), dden: UnsafePointer(dden), A: A, A2: A2, valid: UnsafePointer(valid), ldc: C))
                    }
                    BLAS.sgemm(.transpose, .none, m: F, n: dv, k: rows, a: phiQ, lda: F, b: dnum, ldb: dv, beta: 1, c: adjoint.S, ldc: dv)
                    BLAS.sgemv(.transpose, m: rows, n: F, a: phiQ, lda: F, x: dden, beta: 1, y: adjoint.z)
                }
                // Keys before the first query's diagonal are seen by every query.
                j0 = 0
                while j0 < min(M, max(0, off)) {
                    let w = min(C, min(M, off) - j0)
                    feat.keys(L.kRow(b, kvh, j0), ld: L.kStride.m, rows: w, into: phiK)
                    keyGradients(L, b: b, kvh: kvh, j0: j0, w: w, F: F, feat: feat, phiK: phiK, dPhiK: dPhiK,
                                 adjoint: adjoint, dkBase: dkBase, dvBase: dvBase, scratch: xd)
                    j0 += w
                }
            }
        }
    }
    kv.reduce(threads: plan.threads)
}

/// c[r, :] += x[r] · y for a rows × cols block (the rank-one `dden zᵀ` term).
private func addOuter(_ c: UnsafeMutablePointer<Float>, ldc: Int, rows: Int, cols: Int, x: UnsafePointer<Float>,
                      y: UnsafePointer<Float>) {
    for r in 0..<rows where x[r] != 0 {
        let xr = x[r]
        let row = c + r * ldc
        for t in 0..<cols { row[t] += xr * y[t] }
    }
}

/// A2 = mask(dnum V_cᵀ + dden 1ᵀ): the adjoint of the intra-chunk scores φ(q_i)·φ(k_j).
private func intraChunkAdjoint(_ a2: UnsafeMutablePointer<Float>, ldc: Int, rows: Int, w: Int, dnum: UnsafePointer<Float>,
                               dv: Int, v: UnsafePointer<Float>, ldv: Int, dden: UnsafePointer<Float>,
                               valid: UnsafePointer<Int32>) {
    BLAS.sgemm(.none, .transpose, m: rows, n: w, k: dv, a: dnum, lda: dv, b: v, ldb: ldv, c: a2, ldc: ldc)
    for r in 0..<rows {
        let row = a2 + r * ldc, add = dden[r]
        for t in 0..<w { row[t] += add }
    }
    ak_zero_after(a2, rows, w, ldc, valid)
}

/// dφK = V R_adjᵀ + 1 r_adjᵀ (+ the chunk's own masked pairs), dv = φK R_adj (+ intra), then dk
/// through the feature map, for keys j0 ..< j0 + w. Overwrites the item's dK/dV rows.
private func keyGradients(
    _ L: AttentionLayout, b: Int, kvh: Int, j0: Int, w: Int, F: Int, feat: BackwardFeatures, phiK: UnsafeMutablePointer<Float>,
    dPhiK: UnsafeMutablePointer<Float>, adjoint: LinearState, dkBase: UnsafeMutablePointer<Float>,
    dvBase: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>,
    intra: (rows: Int, phiQ: UnsafePointer<Float>, dnum: UnsafePointer<Float>, dden: UnsafePointer<Float>,
            A: UnsafeMutablePointer<Float>, A2: UnsafeMutablePointer<Float>, valid: UnsafePointer<Int32>, ldc: Int)? = nil
) {
    let dv = L.dv, d = L.d
    let v = L.vRow(b, kvh, j0)
    BLAS.sgemm(.none, .transpose, m: w, n: F, k: dv, a: v, lda: L.vStride.m, b: adjoint.S, ldb: dv, c: dPhiK, ldc: F)
    for j in 0..<w { ak_add(dPhiK + j * F, adjoint.z, F) }
    BLAS.sgemm(.none, .none, m: w, n: dv, k: F, a: phiK, lda: F, b: adjoint.S, ldb: dv, c: dvBase + j0 * dv, ldc: dv)
    if let intra {
        // Pairs inside the chunk: A = mask(φQ φKᵀ) (for dv), A2 = mask(dnum Vᵀ + dden) (for dφK).
        BLAS.sgemm(.none, .transpose, m: intra.rows, n: w, k: F, a: intra.phiQ, lda: F, b: phiK, ldb: F, c: intra.A, ldc: intra.ldc)
        ak_zero_after(intra.A, intra.rows, w, intra.ldc, intra.valid)
        BLAS.sgemm(.transpose, .none, m: w, n: dv, k: intra.rows, a: intra.A, lda: intra.ldc, b: intra.dnum, ldb: dv,
                   beta: 1, c: dvBase + j0 * dv, ldc: dv)
        intraChunkAdjoint(intra.A2, ldc: intra.ldc, rows: intra.rows, w: w, dnum: intra.dnum, dv: dv, v: v, ldv: L.vStride.m,
                          dden: intra.dden, valid: intra.valid)
        BLAS.sgemm(.transpose, .none, m: w, n: F, k: intra.rows, a: intra.A2, lda: intra.ldc, b: intra.phiQ, ldb: F,
                   beta: 1, c: dPhiK, ldc: F)
    }
    feat.chain(L.kRow(b, kvh, j0), ld: L.kStride.m, rows: w, phi: phiK, dphi: dPhiK, into: dkBase + j0 * d, ldd: d,
               isKey: true, scratch: scratch)
}

/// Efficient Attention's backward (non-causal): `O = ρq(Q) S'`, `S' = ρk(K)ᵀ V` with ρk the
/// softmax over positions. `dρq = dO S'ᵀ`, `dS' = Σ ρq dO`, `dρk = V dS'ᵀ`, `dV = ρk dS'`, and the two
/// softmax backwards: rows for q, columns for k, whose column term `Σ_j ρk dρk` is `rowdot(dS', S')`.
private func efficientBackward(
    _ L: AttentionLayout, _ grad: LinearGradients, b: Int, kvh: Int, heads: Range<Int>, C: Int, F: Int,
    phiK: UnsafeMutablePointer<Float>, dPhiK: UnsafeMutablePointer<Float>, phiQ: UnsafeMutablePointer<Float>,
    dPhiQ: UnsafeMutablePointer<Float>, dOp: UnsafeMutablePointer<Float>, state: LinearState, adjoint: LinearState,
    colmax: UnsafeMutablePointer<Float>, colC: UnsafeMutablePointer<Float>, dkBase: UnsafeMutablePointer<Float>,
    dvBase: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
) {
    let (G, d, dv, M, N) = (L.group, L.d, L.dv, L.M, L.N)
    state.reset()
    adjoint.reset()
    colmax.update(repeating: -.infinity, count: d)
    ak_col_max(L.kRow(b, kvh, 0), M, d, L.kStride.m, colmax)
    var j0 = 0
    while j0 < M {
        let w = min(C, M - j0)
        ak_exp_sub_cols(L.kRow(b, kvh, j0), w, d, L.kStride.m, colmax, phiK, F, state.z)
        state.write(phiK, ldf: F, rows: w, values: L.vRow(b, kvh, j0), ldv: L.vStride.m, updateNormalizer: false)
        j0 += w
    }
    for f in 0..<F { ak_scale(state.S + f * dv, dv, 1 / state.z[f]) }   // S' = ρkᵀ V
    var i0 = 0
    while i0 < N {
        let n = min(C, N - i0), rows = heads.count * n
        for (gi, g) in heads.enumerated() {
            let h = kvh * G + g
            ak_copy_scaled(L.qRow(b, h, i0), L.qStride.n, phiQ + gi * n * F, F, n, d, 1)
            ak_softmax_rows(phiQ + gi * n * F, n, d, F, nil)
            ak_copy_scaled(grad.dOutRow(b, h, i0), grad.dOutStride.n, dOp + gi * n * dv, dv, n, dv, 1)
        }
        // dρq = dO S'ᵀ; dq = ρq ∘ (dρq - rowdot(ρq, dρq)); dS' += ρqᵀ dO.
        BLAS.sgemm(.none, .transpose, m: rows, n: F, k: dv, a: dOp, lda: dv, b: state.S, ldb: dv, c: dPhiQ, ldc: F)
        ak_row_dots(phiQ, F, dPhiQ, F, rows, F, scratch)
        BLAS.sgemm(.transpose, .none, m: F, n: dv, k: rows, a: phiQ, lda: F, b: dOp, ldb: dv, beta: 1, c: adjoint.S, ldc: dv)
        ak_softmax_grad(phiQ, F, dPhiQ, F, rows, F, scratch)
        for (gi, g) in heads.enumerated() {
            let h = kvh * G + g
            ak_copy_scaled(phiQ + gi * n * F, F, grad.dq + ((b * L.H + h) * N + i0) * d, d, n, d, 1)
        }
        i0 += n
    }
    // c_f = Σ_j ρk[j, f] dρk[j, f] = rowdot(dS', S') per feature.
    ak_row_dots(adjoint.S, dv, state.S, dv, F, dv, colC)
    j0 = 0
    while j0 < M {
        let w = min(C, M - j0)
        // ρk for the chunk: exp(k - colmax) / z (z complete; not accumulated again).
        ak_exp_sub_cols(L.kRow(b, kvh, j0), w, d, L.kStride.m, colmax, phiK, F, scratch)
        for j in 0..<w { for f in 0..<F { phiK[j * F + f] /= state.z[f] } }
        BLAS.sgemm(.none, .none, m: w, n: dv, k: F, a: phiK, lda: F, b: adjoint.S, ldb: dv, c: dvBase + j0 * dv, ldc: dv)
        BLAS.sgemm(.none, .transpose, m: w, n: F, k: dv, a: L.vRow(b, kvh, j0), lda: L.vStride.m, b: adjoint.S, ldb: dv,
                   c: dPhiK, ldc: F)
        for j in 0..<w {
            for f in 0..<F { dkBase[(j0 + j) * d + f] = phiK[j * F + f] * (dPhiK[j * F + f] - colC[f]) }
        }
        j0 += w
    }
}

/// Features and their derivatives for the backward: elu + 1 and relu elementwise; FAVOR+ as
/// `exp(W'x - shift)` for queries (a row constant that cancels) and `exp(W'k - |k|²/(2√d) - shift)`
/// for keys with one shift over all keys (a constant that cancels between numerator and
/// normaliser; the forward's running stabiliser is equivalent).
struct BackwardFeatures {
    let map: LinearFeatureMap
    let d: Int, F: Int
    let w: UnsafePointer<Float>?
    let rowScratch: UnsafeMutablePointer<Float>, rowScratch2: UnsafeMutablePointer<Float>
    var keyShift: Float = 0

    /// FAVOR+: the largest key logit over all `count` keys (the shift every key feature uses).
    mutating func prepareKeys(_ k: UnsafePointer<Float>, ld: Int, count: Int, scratch tmp: UnsafeMutablePointer<Float>, chunk: Int) {
        guard case .favor = map else { return }
        var shift: Float = -.infinity
        var j0 = 0
        while j0 < count {
            let n = min(chunk, count - j0)
            BLAS.sgemm(.none, .transpose, m: n, n: F, k: d, a: k + j0 * ld, lda: ld, b: w!, ldb: d, c: tmp, ldc: F)
            for r in 0..<n {
                var mx: Float = -.infinity, sq: Float = 0
                for f in 0..<F { mx = max(mx, tmp[r * F + f]) }
                for t in 0..<d { sq += k[(j0 + r) * ld + t] * k[(j0 + r) * ld + t] }
                shift = max(shift, mx - sq * 0.5 / Float(d).squareRoot())
            }
            j0 += n
        }
        keyShift = shift
    }

    func queries(_ src: UnsafePointer<Float>, ld: Int, rows: Int, into dst: UnsafeMutablePointer<Float>) {
        queryFeatures(map, src, ld: ld, rows: rows, d: d, F: F, w: w, rowScratch: rowScratch, into: dst)
    }

    func keys(_ src: UnsafePointer<Float>, ld: Int, rows: Int, into dst: UnsafeMutablePointer<Float>) {
        switch map {
        case .elu: ak_feature_rows(AK_FEATURE_ELU1, src, ld, dst, F, rows, d)
        case .relu: ak_feature_rows(AK_FEATURE_RELU, src, ld, dst, F, rows, d)
        case .softmax: preconditionFailure("Efficient Attention's keys are handled by efficientBackward")
        case .favor:
            BLAS.sgemm(.none, .transpose, m: rows, n: F, k: d, a: src, lda: ld, b: w!, ldb: d, c: dst, ldc: F)
            ak_row_sumsq(src, rows, d, ld, 0.5 / Float(d).squareRoot(), rowScratch)
            for r in 0..<rows { rowScratch[r] += keyShift }
            ak_exp_sub_rows(dst, rows, F, F, rowScratch)
        }
    }

    /// dst (`[rows, d]`, leading dimension ldd) = the gradient with respect to the inputs `x` of
    /// the features `phi` given their gradient `dphi` (overwritten as scratch for FAVOR+).
    func chain(_ x: UnsafePointer<Float>, ld: Int, rows: Int, phi: UnsafePointer<Float>, dphi: UnsafeMutablePointer<Float>,
               into dst: UnsafeMutablePointer<Float>, ldd: Int, isKey: Bool, scratch: UnsafeMutablePointer<Float>) {
        switch map {
        case .elu: ak_feature_grad_rows(AK_FEATURE_ELU1, x, ld, dphi, F, dst, ldd, rows, d)
        case .relu: ak_feature_grad_rows(AK_FEATURE_RELU, x, ld, dphi, F, dst, ldd, rows, d)
        case .softmax: preconditionFailure("Efficient Attention chains in efficientBackward")
        case .favor:
            // dφ ∘ φ, then through W' (and, for keys, the -|k|²/(2√d) term: -rowsum(dφ ∘ φ) · k / √d).
            ak_mul(dphi, phi, rows * F)
            BLAS.sgemm(.none, .none, m: rows, n: d, k: F, a: dphi, lda: F, b: w!, ldb: d, c: dst, ldc: ldd)
            if isKey {
                rowSums(dphi, rows, F, scratch)
                let inv = 1 / Float(d).squareRoot()
                for r in 0..<rows {
                    let c = -scratch[r] * inv
                    let xr = x + r * ld, out = dst + r * ldd
                    for t in 0..<d { out[t] += c * xr[t] }
                }
            }
        }
    }
}

/// out[r] = Σ_c x[r, c].
private func rowSums(_ x: UnsafePointer<Float>, _ rows: Int, _ cols: Int, _ out: UnsafeMutablePointer<Float>) {
    out.update(repeating: 0, count: rows)
    ak_row_sums_add(x, rows, cols, cols, out)
}
