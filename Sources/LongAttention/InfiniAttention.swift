import AttentionTensor
import CAttentionKernels
import Foundation

/// Infini-Attention (Munkhdalai et al. 2024, eqs. 6–10): a stream cut into segments of `S`
/// tokens; each segment attends causally within itself and reads a compressive memory of every
/// earlier segment, then writes itself into the memory. State stays `Hkv·(d·dv + d)` floats per
/// sequence however long the stream.
///
/// For a segment with queries `Q [B, H, S, d]`, keys `K [B, Hkv, S, d]`, values `V [B, Hkv, S, dv]`
/// and σ(x) = elu(x) + 1:
/// - `A_dot` = causal softmax attention within the segment (scale `1/sqrt(d)`, the exact kernel);
/// - `A_mem = σ(Q) M / (σ(Q) z)` with the memory as it was before the segment; 0 while `z = 0`;
/// - `A = sigmoid(β_h) A_mem + (1 - sigmoid(β_h)) A_dot`, one gate `β_h` per query head;
/// - then `M += σ(K)ᵀ V` (``Update/linear``) or `M += σ(K)ᵀ (V - σ(K) M / (σ(K) z))`
///   (``Update/delta``), and `z += Σ_t σ(K_t)`.
/// Query heads of a GQA group share their KV head's memory and read it in one stacked GEMM.
public struct InfiniAttention: Sendable {
    public enum Update: String, Sendable, CaseIterable {
        case linear, delta
    }

    /// Segment length `S` (the last segment of a sequence may be shorter).
    public let segmentLength: Int
    public let update: Update
    /// Gate logits `β_h`, one per query head.
    public let beta: [Float]

    public init(segmentLength: Int, update: Update = .linear, beta: [Float]) throws {
        guard segmentLength >= 1 else { throw AttentionError.invalidArgument("segment length must be at least 1, got \(segmentLength)") }
        guard beta.allSatisfy(\.isFinite) else { throw AttentionError.invalidArgument("gate logits β must be finite") }
        self.segmentLength = segmentLength
        self.update = update
        self.beta = beta
    }

    /// Processes one segment (`S' <= S` tokens, all heads) and updates `memory`; returns the
    /// segment's output `[B, H, S', dv]`.
    public func step(queries: Tensor, keys: Tensor, values: Tensor, memory: inout CompressiveMemory,
                     threads: Int? = nil) throws -> Tensor {
        try process(queries: queries, keys: keys, values: values, memory: &memory, threads: threads, read: true)
    }

    /// Writes a segment's keys and values into `memory` without computing outputs: how a stream's
    /// prefix is absorbed when only later queries matter. `keys [B, Hkv, S', d]`, `values [B, Hkv, S', dv]`.
    public func write(keys: Tensor, values: Tensor, memory: inout CompressiveMemory, threads: Int? = nil) throws {
        guard keys.rank == 4 else { throw AttentionError.wrongRank(name: "keys", expected: 4, shape: keys.shape) }
        // Queries are not read: the keys stand in for their shape (one query head per KV head).
        let writer = try InfiniAttention(segmentLength: segmentLength, update: update,
                                         beta: Array(repeating: 0, count: keys.shape[1]))
        _ = try writer.process(queries: keys, keys: keys, values: values, memory: &memory, threads: threads, read: false)
    }

    func process(queries: Tensor, keys: Tensor, values: Tensor, memory: inout CompressiveMemory,
                 threads: Int?, read: Bool, checkInputs: Bool = true) throws -> Tensor {
        let shape = try attentionShape(queries: queries, keys: keys, values: values)
        guard shape.N == shape.M else {
            throw AttentionError.shapeMismatch("a segment's queries and keys must have the same length (\(shape.N) vs \(shape.M))")
        }
        guard shape.N <= segmentLength else {
            throw AttentionError.shapeMismatch("segment of \(shape.N) tokens is longer than S = \(segmentLength)")
        }
        guard beta.count == shape.H else {
            throw AttentionError.shapeMismatch("\(beta.count) gate logits β for H = \(shape.H) query heads")
        }
        guard memory.batch == shape.B, memory.kvHeads == shape.Hkv, memory.headDimension == shape.d,
              memory.valueDimension == shape.dv else {
            throw AttentionError.shapeMismatch(
                "memory [B, Hkv, d, dv] = [\(memory.batch), \(memory.kvHeads), \(memory.headDimension), \(memory.valueDimension)] for inputs \(shape)")
        }
        if let threads, threads < 1 { throw AttentionError.invalidArgument("threads must be at least 1, got \(threads)") }
        let threads = threads ?? Parallel.defaultThreads
        if checkInputs {
            try checkFinite(read ? [("queries", queries), ("keys", keys), ("values", values)] : [("keys", keys), ("values", values)])
        }
        // Local causal attention within the segment: the exact kernel.
        var out = read ? try exactAttention(queries: queries, keys: keys, values: values, scale: nil, mask: .causal,
                                            plan: ExactAttentionPlan(shape: shape, threads: threads), queryOffset: nil)
            : try Tensor(zeros: [0])
        if read && out.count == 0 { return out }
        let gates = beta.map { 1 / (1 + Foundation.exp(-$0)) }
        let q = queries.lastAxisContiguous(), k = keys.lastAxisContiguous(), v = values.lastAxisContiguous()
        let (G, S, d, dv, Hkv) = (shape.group, shape.N, shape.d, shape.dv, shape.Hkv)
        let update = self.update
        out.withUnsafeMutableBufferPointer { o in
            memory.memory.withUnsafeMutableBufferPointer { mem in
                memory.normalizer.withUnsafeMutableBufferPointer { zs in
                    q.withUnsafePointer { pq in
                        k.withUnsafePointer { pk in
                            v.withUnsafePointer { pv in
                                gates.withUnsafeBufferPointer { gate in
                                    Parallel.run(items: shape.B * Hkv, threads: threads) { _, queue in
                                        var ws = Workspace(floats: G * S * (d + dv + 1) + S * (d + 2 * dv + 1))
                                        defer { ws.free() }
                                        let sq = ws.floats(G * S * d), num = ws.floats(G * S * dv), den = ws.floats(G * S)
                                        let sk = ws.floats(S * d), retrieved = ws.floats(S * dv), vd = ws.floats(S * dv)
                                        let kden = ws.floats(S)
                                        while let item = queue.next() {
                                            let b = item / Hkv, h = item % Hkv
                                            let M = mem.baseAddress! + item * d * dv, z = zs.baseAddress! + item * d
                                            // Read: σ(Q) of the group's heads stacked, A_mem = σ(Q)M / σ(Q)z, blended.
                                            for g in 0..<G where read {
                                                let qh = pq + b * q.strides[0] + (h * G + g) * q.strides[1]
                                                ak_feature_rows(AK_FEATURE_ELU1, qh, q.strides[2], sq + g * S * d, d, S, d)
                                            }
                                            if read {
                                                BLAS.sgemm(.none, .none, m: G * S, n: dv, k: d, a: sq, lda: d, b: M, ldb: dv, c: num, ldc: dv)
                                                BLAS.sgemv(.none, m: G * S, n: d, a: sq, lda: d, x: z, y: den)
                                            }
                                            for g in 0..<G where read {
                                                let head = h * G + g
                                                ak_blend_rows(o.baseAddress! + ((b * shape.H + head) * S) * dv, dv,
                                                              num + g * S * dv, dv, den + g * S, S, dv, gate[head])
                                            }
                                            // Write: σ(K), then the delta correction, then M += σ(K)ᵀ V', z += Σ σ(K).
                                            let kh = pk + b * k.strides[0] + h * k.strides[1]
                                            let vh = pv + b * v.strides[0] + h * v.strides[1]
                                            ak_feature_rows(AK_FEATURE_ELU1, kh, k.strides[2], sk, d, S, d)
                                            var vUse = vh, ldv = v.strides[2]
                                            if update == .delta {
                                                BLAS.sgemm(.none, .none, m: S, n: dv, k: d, a: sk, lda: d, b: M, ldb: dv, c: retrieved, ldc: dv)
                                                BLAS.sgemv(.none, m: S, n: d, a: sk, lda: d, x: z, y: kden)
                                                ak_copy_scaled(vh, v.strides[2], vd, dv, S, dv, 1)
                                                ak_subtract_ratio_rows(vd, dv, retrieved, dv, kden, S, dv)
                                                vUse = UnsafePointer(vd)
                                                ldv = dv
                                            }
                                            BLAS.sgemm(.transpose, .none, m: d, n: dv, k: S, a: sk, lda: d, b: vUse, ldb: ldv, beta: 1, c: M, ldc: dv)
                                            ak_col_sums_add(sk, S, d, d, z)
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        memory.tokens += shape.N
        return out
    }

    /// The whole sequence: cuts `queries [B, H, N, d]` (and keys, values) into segments of `S`
    /// (the last may be shorter), streams them through `memory` (fresh if nil) and returns
    /// `[B, H, N, dv]`. Equal to calling ``step(queries:keys:values:memory:threads:)`` segment by segment.
    public func callAsFunction(queries: Tensor, keys: Tensor, values: Tensor, memory: inout CompressiveMemory,
                               threads: Int? = nil) throws -> Tensor {
        let shape = try attentionShape(queries: queries, keys: keys, values: values)
        guard shape.N == shape.M else {
            throw AttentionError.shapeMismatch("Infini-Attention is self-attention: N = \(shape.N), M = \(shape.M)")
        }
        try checkFinite([("queries", queries), ("keys", keys), ("values", values)])   // indices of the whole sequence
        var out = try Tensor(uninitialized: [shape.B, shape.H, shape.N, shape.dv])
        var start = 0
        while start < shape.N {
            let range = start..<min(shape.N, start + segmentLength)
            // The whole sequence was checked for NaN/Inf above; segments are not scanned again.
            let seg = try process(queries: try queries.rows(range), keys: try keys.rows(range), values: try values.rows(range),
                                  memory: &memory, threads: threads, read: true, checkInputs: false)
            try out.copyRows(from: seg, at: start)
            start = range.upperBound
        }
        return out
    }

    /// The whole sequence from an empty memory.
    public func callAsFunction(queries: Tensor, keys: Tensor, values: Tensor, threads: Int? = nil) throws -> Tensor {
        let shape = try attentionShape(queries: queries, keys: keys, values: values)
        var memory = try CompressiveMemory(batch: shape.B, kvHeads: shape.Hkv, headDimension: shape.d, valueDimension: shape.dv)
        return try self(queries: queries, keys: keys, values: values, memory: &memory, threads: threads)
    }
}
