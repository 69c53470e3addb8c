import AttentionTensor
import CAttentionKernels
import Foundation

extension InfiniAttention {
    /// Gradients of `L = Σ out ⊙ dOut` for the whole sequence from an empty memory: dq, dk, dv and
    /// `dβ_h` for the gates (``AttentionGradients/beta``).
    ///
    /// Shapes: `queries [B, H, N, d]`, `keys [B, Hkv, N, d]`, `values [B, Hkv, N, dv]`,
    /// `outputGradient [B, H, N, dv]`.
    ///
    /// The memory states are checkpointed, not inverted: a first sweep writes the segments into
    /// the memory (no reads, no local attention) and keeps `M, z` before each segment —
    /// `⌈N/S⌉ · B·Hkv·(d·dv + d)` floats (68 MiB at N = 1M, S = 2048, Hkv = 8, d = 64), since the
    /// delta rule cannot be undone exactly and subtracting the linear update would cancel. Then,
    /// segment by segment from the last, with adjoints `dM, dz` of the memory after the segment:
    /// - the segment's local causal attention is recomputed with its log-sum-exp (the exact
    ///   kernel), giving `A_dot` for the gate and the FlashAttention-2 backward of
    ///   `dA_dot = (1 - sigmoid(β)) dO`;
    /// - through the update: `dσ(K) = V' dMᵀ + 1 dzᵀ`, `dV' = σ(K) dM`, and for the delta rule the
    ///   retrieval `V' = V - σ(K)M / σ(K)z` adds to `dσ(K)`, `dM`, `dz`;
    /// - through the read `A_mem = σ(Q)M / σ(Q)z` with `dA_mem = sigmoid(β) dO`: `dσ(Q)`, and
    ///   `dM += σ(Q)ᵀ dnum`, `dz += σ(Q)ᵀ dden`;
    /// - `dβ_h += Σ dO ⊙ (A_mem - A_dot) · g(1 - g)`, and σ' = elu' closes the chain.
    /// Cost: the local attention forward and backward per segment plus a few `S × d × dv` GEMMs.
    /// Bitwise the same for any thread count.
    public func backward(queries: Tensor, keys: Tensor, values: Tensor, outputGradient: Tensor,
                         threads: Int? = nil) throws -> AttentionGradients {
        let all = try AttentionInputs(queries: queries, keys: keys, values: values, mask: .causal, threads: threads)
        let shape = all.shape
        guard shape.N == shape.M else {
            throw AttentionError.shapeMismatch(tensor: "keys", shape: [shape.B, shape.Hkv, shape.M, shape.d], expected: "N = \(shape.N) positions, as the queries (Infini-Attention is self-attention)")
        }
        guard beta.count == shape.H else {
            throw AttentionError.shapeMismatch(tensor: "beta", shape: [beta.count], expected: "one gate logit per query head (H = \(shape.H))")
        }
        let back = try BackwardInputs(all, outputGradient: outputGradient)
        let (B, H, Hkv, N, d, dv) = (shape.B, shape.H, shape.Hkv, shape.N, shape.d, shape.dv)
        var grads = AttentionGradients(queries: try Tensor(zeros: [B, H, N, d]), keys: try Tensor(zeros: [B, Hkv, N, d]),
                                       values: try Tensor(zeros: [B, Hkv, N, dv]), beta: Array(repeating: 0, count: H))
        if B * H * N == 0 { return grads }
        let segments = (N + segmentLength - 1) / segmentLength
        let stateFloats = d * dv + d
        let (checkpointFloats, overflow) = (segments * B * Hkv).multipliedReportingOverflow(by: stateFloats)
        guard !overflow else { throw AttentionError.tooLarge(buffer: "Infini checkpoints", bytes: nil, limit: nil) }
        try checkBudget(bytes: checkpointFloats * 4, purpose: "Infini-Attention memory checkpoints (\(segments) segments)")
        let checkpoints = UnsafeMutablePointer<Float>.allocate(capacity: checkpointFloats)
        defer { checkpoints.deallocate() }
        // Sweep 1: the memory before each segment.
        var memory = try CompressiveMemory(batch: B, kvHeads: Hkv, headDimension: d, valueDimension: dv)
        let writer = try InfiniAttention(segmentLength: segmentLength, update: update, beta: Array(repeating: 0, count: Hkv))
        let scanned = AttentionInputs.Scan.none(maxQ: all.maxQ, maxK: all.maxK, maxV: all.maxV)
        for seg in 0..<segments {
            let range = (seg * segmentLength)..<min(N, (seg + 1) * segmentLength)
            let base = checkpoints + seg * B * Hkv * stateFloats
            memory.memory.withUnsafeMutableBufferPointer { m in
                memory.normalizer.withUnsafeMutableBufferPointer { z in
                    for item in 0..<(B * Hkv) {
                        (base + item * stateFloats).update(from: m.baseAddress! + item * d * dv, count: d * dv)
                        (base + item * stateFloats + d * dv).update(from: z.baseAddress! + item * d, count: d)
                    }
                }
            }
            let k = try keys.rows(range), v = try values.rows(range)
            _ = try writer.process(queries: k, keys: k, values: v, memory: &memory, threads: threads, read: false,
                            scan: .none(maxQ: all.maxK, maxK: all.maxK, maxV: all.maxV))
        }
        // Sweep 2, last segment first: adjoints dM, dz per (batch, KV head).
        let adjoint = UnsafeMutablePointer<Float>.allocate(capacity: B * Hkv * stateFloats)
        adjoint.initialize(repeating: 0, count: B * Hkv * stateFloats)
        defer { adjoint.deallocate() }
        let gates = beta.map { 1 / (1 + Foundation.exp(-$0)) }
        var dBeta = [Double](repeating: 0, count: H)
        for seg in stride(from: segments - 1, through: 0, by: -1) {
            let range = (seg * segmentLength)..<min(N, (seg + 1) * segmentLength)
            let segment = try AttentionInputs(queries: try queries.rows(range), keys: try keys.rows(range),
                                              values: try values.rows(range), mask: .causal, threads: threads, scan: scanned)
            let local = try exactAttentionKeepingLSE(segment)
            let dOut = try back.dOut.rows(range)
            // dA_dot = (1 - g_h) dO.
            var dLocal = try Tensor(uninitialized: segment.shape.outputShape)
            let S = range.count
            dLocal.withUnsafeMutableBufferPointer { dl in
                dOut.withUnsafePointer { p in
                    for b in 0..<B { for h in 0..<H {
                        ak_copy_scaled(p + b * dOut.strides[0] + h * dOut.strides[1], dOut.strides[2],
                                       dl.baseAddress! + (b * H + h) * S * dv, dv, S, dv, 1 - gates[h])
                    } }
                }
            }
            var partialBeta = [Float](repeating: 0, count: B * H)
            try memoryBackward(segment, dOut: dOut, local: local.output, checkpoint: checkpoints + seg * B * Hkv * stateFloats,
                               adjoint: adjoint, gates: gates, grads: &grads, at: range.lowerBound, dBeta: &partialBeta)
            for b in 0..<B { for h in 0..<H { dBeta[h] += Double(partialBeta[b * H + h]) } }
            let g = try exactBackward(segment, forward: local, outputGradient: dLocal)
            try grads.queries.addRows(g.queries, at: range.lowerBound)
            try grads.keys.addRows(g.keys, at: range.lowerBound)
            try grads.values.addRows(g.values, at: range.lowerBound)
        }
        grads.beta = dBeta.map { Float($0) }
        return grads
    }

    /// One segment's memory path backward, per (batch, KV head): writes the segment's rows of dq,
    /// dk, dv (the local attention's are added afterwards), updates the adjoints in place from
    /// `dM_{s+1}, dz_{s+1}` to `dM_s, dz_s`, and leaves per (batch, head) the gate's gradient.
    func memoryBackward(_ seg: AttentionInputs, dOut: Tensor, local: Tensor, checkpoint: UnsafePointer<Float>,
                        adjoint: UnsafeMutablePointer<Float>, gates: [Float], grads: inout AttentionGradients, at offset: Int,
                        dBeta: inout [Float]) throws {
        let s = seg.shape
        let (B, H, Hkv, S, d, dv, G, N) = (s.B, s.H, s.Hkv, s.N, s.d, s.dv, s.group, grads.queries.shape[2])
        let stateFloats = d * dv + d
        let delta = update == .delta
        let dO = dOut.lastAxisContiguous(), aDot = local.contiguous()
        let floats = G * S * (2 * d + 3 * dv + 2) + S * (2 * d + 3 * dv + 2) + 2 * d * dv + 2 * d
        try grads.queries.withUnsafeMutableBufferPointer { dq in
            try grads.keys.withUnsafeMutableBufferPointer { dk in
                try grads.values.withUnsafeMutableBufferPointer { dvOut in
                    try dO.withUnsafePointer { pdo in
                        try aDot.withUnsafePointer { pa in
                            try dBeta.withUnsafeMutableBufferPointer { db in
                                try seg.withLayout(outputPointer: dq.baseAddress!) { L in
                                    try runWithScratch(items: B * Hkv, threads: seg.threads, floats: floats, arrays: 24,
                                                       purpose: "Infini-Attention backward, segments of \(S)") { ws, queue in
                                        let sq = ws.floats(G * S * d), dsq = ws.floats(G * S * d)
                                        let num = ws.floats(G * S * dv), dA = ws.floats(G * S * dv), mem = ws.floats(G * S * dv)
                                        let den = ws.floats(G * S), dden = ws.floats(G * S)
                                        let sk = ws.floats(S * d), dsk = ws.floats(S * d)
                                        let ret = ws.floats(S * dv), U = ws.floats(S * dv), dU = ws.floats(S * dv)
                                        let kden = ws.floats(S), dkden = ws.floats(S)
                                        let extraM = ws.floats(d * dv), extraZ = ws.floats(d)
                                        let dM0 = ws.floats(d * dv), dz0 = ws.floats(d)
                                        while let item = queue.next() {
                                            let b = item / Hkv, h = item % Hkv
                                            let M = checkpoint + item * stateFloats, z = M + d * dv
                                            let dM = adjoint + item * stateFloats, dz = dM + d * dv
                                            // dM_{s+1}, dz_{s+1}: the update's gradients read them before they change.
                                            dM0.update(from: dM, count: d * dv)
                                            dz0.update(from: dz, count: d)
                                            // Through the update.
                                            ak_feature_rows(AK_FEATURE_ELU1, L.kRow(b, h, 0), L.kStride.m, sk, d, S, d)
                                            ak_copy_scaled(L.vRow(b, h, 0), L.vStride.m, U, dv, S, dv, 1)
                                            if delta {
                                                BLAS.sgemm(.none, .none, m: S, n: dv, k: d, a: sk, lda: d, b: M, ldb: dv, c: ret, ldc: dv)
                                                BLAS.sgemv(.none, m: S, n: d, a: sk, lda: d, x: z, y: kden)
                                                ak_subtract_ratio_rows(U, dv, ret, dv, kden, S, dv)
                                            }
                                            BLAS.sgemm(.none, .transpose, m: S, n: d, k: dv, a: U, lda: dv, b: dM0, ldb: dv, c: dsk, ldc: d)
                                            BLAS.sgemm(.none, .none, m: S, n: dv, k: d, a: sk, lda: d, b: dM0, ldb: dv, c: dU, ldc: dv)
                                            for t in 0..<S { ak_add(dsk + t * d, dz0, d) }
                                            ak_copy_scaled(dU, dv, dvOut.baseAddress! + (item * N + offset) * dv, dv, S, dv, 1)
                                            extraM.update(repeating: 0, count: d * dv)
                                            extraZ.update(repeating: 0, count: d)
                                            if delta {
                                                // V' = V - ret / kden on rows whose kden is usable: dret = -dU / kden,
                                                // dkden = (dU · ret) / kden²; ret = σ(K)M, kden = σ(K)·z.
                                                ak_row_dots(dU, dv, ret, dv, S, dv, dkden)
                                                for t in 0..<S {
                                                    let inv = 1 / kden[t]
                                                    if kden[t] > 0 && inv.isFinite {
                                                        ak_copy_scaled(dU + t * dv, dv, ret + t * dv, dv, 1, dv, -inv)   // ret ← dret
                                                        dkden[t] *= inv * inv
                                                    } else {
                                                        (ret + t * dv).update(repeating: 0, count: dv)
                                                        dkden[t] = 0
                                                    }
                                                }
                                                BLAS.sgemm(.none, .transpose, m: S, n: d, k: dv, a: ret, lda: dv, b: M, ldb: dv, beta: 1, c: dsk, ldc: d)
                                                for t in 0..<S where dkden[t] != 0 {
                                                    let c = dkden[t], row = dsk + t * d
                                                    for a in 0..<d { row[a] += c * z[a] }
                                                }
                                                BLAS.sgemm(.transpose, .none, m: d, n: dv, k: S, a: sk, lda: d, b: ret, ldb: dv, beta: 1, c: extraM, ldc: dv)
                                                BLAS.sgemv(.transpose, m: S, n: d, a: sk, lda: d, x: dkden, beta: 1, y: extraZ)
                                            }
                                            ak_feature_grad_rows(AK_FEATURE_ELU1, L.kRow(b, h, 0), L.kStride.m, dsk, d,
                                                                 dk.baseAddress! + (item * N + offset) * d, d, S, d)
                                            // Through the read: A_mem = σ(Q)M / σ(Q)z with dA_mem = g dO.
                                            for gi in 0..<G {
                                                let head = h * G + gi
                                                ak_feature_rows(AK_FEATURE_ELU1, L.qRow(b, head, 0), L.qStride.n, sq + gi * S * d, d, S, d)
                                            }
                                            BLAS.sgemm(.none, .none, m: G * S, n: dv, k: d, a: sq, lda: d, b: M, ldb: dv, c: num, ldc: dv)
                                            BLAS.sgemv(.none, m: G * S, n: d, a: sq, lda: d, x: z, y: den)
                                            for gi in 0..<G {
                                                let head = h * G + gi, gate = gates[head]
                                                var betaSum: Float = 0
                                                for t in 0..<S {
                                                    let r = gi * S + t
                                                    let dorow = pdo + b * dO.strides[0] + head * dO.strides[1] + t * dO.strides[2]
                                                    let arow = pa + ((b * H + head) * S + t) * dv
                                                    let inv = 1 / den[r]
                                                    let usable = den[r] > 0 && (gate * inv).isFinite
                                                    // A_mem (0 while the memory is empty), then dβ's term dO·(A_mem - A_dot).
                                                    ak_copy_scaled(num + r * dv, dv, mem + r * dv, dv, 1, dv, usable ? inv : 0)
                                                    var dot: Float = 0
                                                    for c in 0..<dv { dot += dorow[c] * (mem[r * dv + c] - arow[c]) }
                                                    betaSum += dot
                                                    // dnum = g dO / den; dden = -(g dO · A_mem) / den.
                                                    var dm: Float = 0
                                                    for c in 0..<dv { dm += dorow[c] * mem[r * dv + c] }
                                                    ak_copy_scaled(dorow, dv, dA + r * dv, dv, 1, dv, usable ? gate * inv : 0)
                                                    dden[r] = usable ? -gate * dm * inv : 0
                                                }
                                                db[b * H + head] = betaSum * gate * (1 - gate)
                                            }
                                            BLAS.sgemm(.none, .transpose, m: G * S, n: d, k: dv, a: dA, lda: dv, b: M, ldb: dv, c: dsq, ldc: d)
                                            for r in 0..<(G * S) where dden[r] != 0 {
                                                let c = dden[r], row = dsq + r * d
                                                for a in 0..<d { row[a] += c * z[a] }
                                            }
                                            for gi in 0..<G {
                                                let head = h * G + gi
                                                ak_feature_grad_rows(AK_FEATURE_ELU1, L.qRow(b, head, 0), L.qStride.n, dsq + gi * S * d, d,
                                                                     dq.baseAddress! + ((b * H + head) * N + offset) * d, d, S, d)
                                            }
                                            // dM_s = dM_{s+1} + σ(Q)ᵀ dnum (+ the delta's), dz_s likewise.
                                            BLAS.sgemm(.transpose, .none, m: d, n: dv, k: G * S, a: sq, lda: d, b: dA, ldb: dv, beta: 1, c: dM, ldc: dv)
                                            BLAS.sgemv(.transpose, m: G * S, n: d, a: sq, lda: d, x: dden, beta: 1, y: dz)
                                            ak_add(dM, extraM, d * dv)
                                            ak_add(dz, extraZ, d)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
