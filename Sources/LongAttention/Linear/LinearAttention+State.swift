import AttentionTensor
import CAttentionKernels

/// The linear-attention state of a run of keys, `[B, Hkv, F, dv + 1]`: per KV head, `S = Σ φ(k) vᵀ`
/// (`[F, dv]`, columns `0 ..< dv`) beside `z = Σ φ(k)` (column `dv`). States of consecutive runs
/// add: the state of a sequence split across processes is the sum of its pieces' states, and a
/// piece's prefix state is the exclusive prefix sum of the pieces before it (`MPI_Exscan`).
///
/// Shapes: `keys [B, Hkv, M, d]`, `values [B, Hkv, M, dv]`. Feature maps: `.elu` and `.relu` (whose
/// features do not depend on other keys; Efficient Attention's and FAVOR+'s do, and are refused).
public func linearAttentionState(keys: Tensor, values: Tensor, featureMap: LinearFeatureMap = .elu,
                                 threads: Int? = nil) throws -> Tensor {
    guard featureMap == .elu || featureMap == .relu else {
        throw AttentionError.invalidArgument(name: "featureMap", value: featureMap.name, expected: "elu or relu for a linear-attention state from a piece of the keys")
    }
    guard keys.rank == 4, values.rank == 4 else {
        throw AttentionError.wrongRank(name: keys.rank != 4 ? "keys" : "values", expected: 4, shape: keys.rank != 4 ? keys.shape : values.shape)
    }
    // Checked as a call with one query per KV head would be.
    let probe = try Tensor(zeros: [keys.shape[0], keys.shape[1], 0, keys.shape[3]])
    let inputs = try AttentionInputs(queries: probe, keys: keys, values: values, scale: 1, threads: threads)
    try checkLinearRange(inputs, featureMap: featureMap)
    let s = inputs.shape, F = s.d, dv = s.dv, C = 2048
    var state = try Tensor(zeros: [s.B, s.Hkv, F, dv + 1])
    if s.M == 0 { return state }
    let k = inputs.keys, v = inputs.values
    try state.withUnsafeMutableBufferPointer { out in
        let base = out.baseAddress!
        try k.withUnsafePointer { pk in
            try v.withUnsafePointer { pv in
                try runWithScratch(items: s.B * s.Hkv, threads: inputs.threads, floats: C * F + F * dv + F + 2 * C + F,
                                   purpose: "linear attention state") { ws, queue in
                    let phiK = ws.floats(C * F), S = ws.floats(F * dv), z = ws.floats(F)
                    let r1 = ws.floats(C), r2 = ws.floats(C), colmax = ws.floats(F)
                    let st = LinearState(S: S, z: z, F: F, dv: dv)
                    while let bh = queue.next() {
                        let b = bh / s.Hkv, h = bh % s.Hkv
                        var phi = FeatureMapper(map: featureMap, d: s.d, F: F, w: nil, rowScratch: r1, rowScratch2: r2, colmax: colmax)
                        st.reset()
                        var j0 = 0
                        while j0 < s.M {
                            let w = min(C, s.M - j0)
                            let kr = pk + b * k.strides[0] + h * k.strides[1] + j0 * k.strides[2]
                            let vr = pv + b * v.strides[0] + h * v.strides[1] + j0 * v.strides[2]
                            phi.keys(kr, ld: k.strides[2], rows: w, into: phiK, S: S, z: z, dv: dv)
                            st.write(phiK, ldf: F, rows: w, values: vr, ldv: v.strides[2])
                            j0 += w
                        }
                        let dst = base + bh * F * (dv + 1)
                        for f in 0..<F {
                            (dst + f * (dv + 1)).update(from: S + f * dv, count: dv)
                            dst[f * (dv + 1) + dv] = z[f]
                        }
                    }
                }
            }
        }
    }
    return state
}

/// Linear attention continuing from `initialState` (`[B, Hkv, F, dv + 1]`, as
/// ``linearAttentionState(keys:values:featureMap:threads:)`` gives): the keys before this call's
/// first key are already in the state. Causal: query `i` reads the initial state plus keys
/// `j <= i + M - N` of this call — with the prefix state of the pieces before it, a piece of a
/// sequence split across processes gets exactly its rows of the whole sequence's causal result.
/// Non-causal: the state of every key, initial plus this call's (with `M = 0`, the queries read the
/// initial state alone). Shapes as ``linearAttention(queries:keys:values:featureMap:causal:epsilon:chunkSize:threads:)``;
/// feature maps `.elu` and `.relu`.
public func linearAttention(queries: Tensor, keys: Tensor, values: Tensor, initialState: Tensor,
                            featureMap: LinearFeatureMap = .elu, causal: Bool = false, epsilon: Float = 1e-6,
                            chunkSize: Int = 64, threads: Int? = nil) throws -> Tensor {
    guard featureMap == .elu || featureMap == .relu else {
        throw AttentionError.invalidArgument(name: "featureMap", value: featureMap.name, expected: "elu or relu for linear attention from an initial state")
    }
    let shape = try AttentionShape(queries: queries, keys: keys, values: values)
    guard initialState.shape == [shape.B, shape.Hkv, shape.d, shape.dv + 1] else {
        throw AttentionError.shapeMismatch(tensor: "initialState", shape: initialState.shape, expected: "\([shape.B, shape.Hkv, shape.d, shape.dv + 1]) for these inputs")
    }
    let scan = initialState.scanValues()
    if let i = scan.invalidIndex { throw AttentionError.nonFinite(name: "initialState", index: i) }
    let plan = try LinearAttentionPlan.checked(shape: shape, featureMap: featureMap, causal: causal, chunkSize: chunkSize,
                                               threads: threads)
    let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: 1, threads: plan.threads)
    try checkLinearRange(inputs, featureMap: featureMap)
    var out = try Tensor(uninitialized: shape.outputShape)
    if out.count == 0 { return out }
    let state = initialState.contiguous()
    try state.withUnsafePointer { s0 in
        try inputs.withLayout(output: &out) { layout in
            var L = layout
            L.linearInitialState = s0
            try runLinear(L, plan: plan, favor: nil, epsilon: epsilon)
        }
    }
    return out
}
