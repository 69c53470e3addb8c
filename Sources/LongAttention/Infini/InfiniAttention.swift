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
        guard segmentLength >= 1 else { throw AttentionError.invalidArgument(name: "segmentLength", value: "\(segmentLength)", expected: "at least 1") }
        guard beta.allSatisfy(\.isFinite) else { throw AttentionError.invalidArgument(name: "beta", value: "\(beta.first(where: { !$0.isFinite }) ?? 0)", expected: "finite gate logits") }
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
        let k = keys.scanValues(), v = values.scanValues()
        if let i = k.invalidIndex { throw AttentionError.nonFinite(name: "keys", index: i) }
        if let i = v.invalidIndex { throw AttentionError.nonFinite(name: "values", index: i) }
        _ = try writer.process(queries: keys, keys: keys, values: values, memory: &memory, threads: threads, read: false,
                               scan: .none(maxQ: k.maxMagnitude, maxK: k.maxMagnitude, maxV: v.maxMagnitude))
    }

    /// One segment through the scaffold: `scan` says which inputs still need the NaN/Inf scan
    /// (the whole-sequence call scanned them once); `read: false` only writes the memory.
    func process(queries: Tensor, keys: Tensor, values: Tensor, memory: inout CompressiveMemory,
                 threads: Int?, read: Bool, scan: AttentionInputs.Scan = .all) throws -> Tensor {
        let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, mask: .causal, threads: threads,
                                         scan: scan)
        let shape = inputs.shape
        guard shape.N == shape.M else {
            throw AttentionError.shapeMismatch(tensor: "keys", shape: [shape.B, shape.Hkv, shape.M, shape.d], expected: "the segment's N = \(shape.N) positions, as the queries")
        }
        guard shape.N <= segmentLength else {
            throw AttentionError.shapeMismatch(tensor: "queries", shape: [shape.B, shape.H, shape.N, shape.d], expected: "a segment of at most S = \(segmentLength) positions")
        }
        guard beta.count == shape.H else {
            throw AttentionError.shapeMismatch(tensor: "beta", shape: [beta.count], expected: "one gate logit per query head (H = \(shape.H))")
        }
        guard memory.batch == shape.B, memory.kvHeads == shape.Hkv, memory.headDimension == shape.d,
              memory.valueDimension == shape.dv else {
            throw AttentionError.shapeMismatch(
                tensor: "memory [B, Hkv, d, dv]", shape: [memory.batch, memory.kvHeads, memory.headDimension, memory.valueDimension],
                expected: "\([shape.B, shape.Hkv, shape.d, shape.dv]) for inputs \(shape)")
        }
        try checkRange(inputs, memory: memory)
        // Local causal attention within the segment: the exact kernel.
        // Writing only: no output exists and nothing writes through the layout's output pointer.
        var out = read ? try exactAttention(inputs, plan: ExactAttentionPlan(shape: shape, threads: inputs.threads))
                       : try Tensor(zeros: [1])
        if out.count == 0 && read { return out }
        let gates = beta.map { 1 / (1 + Foundation.exp(-$0)) }
        let (G, S, d, dv, Hkv) = (shape.group, shape.N, shape.d, shape.dv, shape.Hkv)
        let rule = update
        try memory.memory.withUnsafeMutableBufferPointer { mem in
            try memory.normalizer.withUnsafeMutableBufferPointer { zs in
                try gates.withUnsafeBufferPointer { gate in
                    try out.withUnsafeMutableBufferPointer { o in try inputs.withLayout(outputPointer: o.baseAddress!) { L in
                        try runWithScratch(items: shape.B * Hkv, threads: inputs.threads,
                                           floats: G * S * (d + dv + 1) + S * (d + 2 * dv + 1),
                                           purpose: "Infini-Attention segments of \(S) tokens") { ws, queue in
                            let sq = ws.floats(G * S * d), num = ws.floats(G * S * dv), den = ws.floats(G * S)
                            let sk = ws.floats(S * d), retrieved = ws.floats(S * dv), corrected = ws.floats(S * dv)
                            let kden = ws.floats(S)
                            while let item = queue.next() {
                                let b = item / Hkv, h = item % Hkv
                                let state = LinearState(S: mem.baseAddress! + item * d * dv, z: zs.baseAddress! + item * d, F: d, dv: dv)
                                if read {
                                    // σ(Q) of the group's heads stacked; A_mem = σ(Q)M / σ(Q)z, blended with A_dot.
                                    for g in 0..<G {
                                        ak_feature_rows(AK_FEATURE_ELU1, L.qRow(b, h * G + g, 0), L.qStride.n, sq + g * S * d, d, S, d)
                                    }
                                    state.read(sq, ldf: d, rows: G * S, num: num, ldn: dv, den: den)
                                    for g in 0..<G {
                                        let head = h * G + g
                                        ak_blend_rows(L.outRow(b, head, 0), dv, num + g * S * dv, dv, den + g * S, S, dv, gate[head])
                                    }
                                }
                                // The memory takes the segment: σ(K), then M += σ(K)ᵀ V (or the delta rule), z += Σ σ(K).
                                ak_feature_rows(AK_FEATURE_ELU1, L.kRow(b, h, 0), L.kStride.m, sk, d, S, d)
                                state.write(sk, ldf: d, rows: S, values: L.vRow(b, h, 0), ldv: L.vStride.m,
                                            rule: rule == .delta ? .delta(retrieved: retrieved, normalizers: kden, corrected: corrected) : .linear)
                            }
                        }
                    } }
                }
            }
        }
        memory.tokens += shape.N
        return read ? out : try Tensor(zeros: [0])
    }

    /// Infini's float32 range for one segment: the local softmax attention's bound, and the memory's:
    /// σ(x) <= max|x| + 1, so after the segment `M` holds at most max|M| + S·σ(k)·2·max|v| per entry
    /// (the delta rule subtracts a retrieved value no larger than the stored ones), `z` at most
    /// max z + S·σ(k), and a read `σ(q)·M` at most d times σ(q)·max|M|.
    func checkRange(_ inputs: AttentionInputs, memory: CompressiveMemory) throws {
        try inputs.checkSoftmaxRange()
        let (maxM, maxZ) = (Double(memory.memory.scanValues().maxMagnitude), Double(memory.normalizer.scanValues().maxMagnitude))
        let s = inputs.shape
        let sk = Double(inputs.maxK) + 1, sq = Double(inputs.maxQ) + 1
        let newM = maxM + Double(s.N) * sk * 2 * Double(inputs.maxV), newZ = maxZ + Double(s.N) * sk
        let bound = max(Double(s.d) * sq * max(newM, newZ), Double(s.d) * sk * max(newM, newZ))
        if bound > AttentionInputs.magnitudeLimit {
            throw AttentionError.overflow(quantity: "Infini-Attention's memory reads d·σ(x)·max|M|", bound: bound, limit: AttentionInputs.magnitudeLimit)
        }
    }

    /// The whole sequence: cuts `queries [B, H, N, d]` (and keys, values) into segments of `S`
    /// (the last may be shorter), streams them through `memory` (fresh if nil) and returns
    /// `[B, H, N, dv]`. Equal to calling ``step(queries:keys:values:memory:threads:)`` segment by segment.
    public func callAsFunction(queries: Tensor, keys: Tensor, values: Tensor, memory: inout CompressiveMemory,
                               threads: Int? = nil) throws -> Tensor {
        let shape = try AttentionShape(queries: queries, keys: keys, values: values)
        guard shape.N == shape.M else {
            throw AttentionError.shapeMismatch(tensor: "keys", shape: [shape.B, shape.Hkv, shape.M, shape.d], expected: "N = \(shape.N) positions, as the queries (Infini-Attention is self-attention)")
        }
        // NaN/Inf are reported with indices of the whole sequence: scanned once here, not per segment.
        let scan = try AttentionInputs(queries: queries, keys: keys, values: values, mask: .causal, threads: threads)
        var out = try Tensor(uninitialized: shape.outputShape)
        var start = 0
        while start < shape.N {
            let range = start..<min(shape.N, start + segmentLength)
            let seg = try process(queries: try queries.rows(range), keys: try keys.rows(range), values: try values.rows(range),
                                  memory: &memory, threads: threads, read: true,
                                  scan: .none(maxQ: scan.maxQ, maxK: scan.maxK, maxV: scan.maxV))
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
