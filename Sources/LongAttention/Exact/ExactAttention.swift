import AttentionTensor

/// Exact scaled dot-product attention, `O = softmax(scale · Q Kᵀ + mask) V`, per batch and head.
///
/// Shapes (row-major Float32; views are read through their strides, never copied):
/// - `queries`: `[B, H, N, d]` — `B` batch, `H` query heads, `N` query positions, `d` head dim;
/// - `keys`: `[B, Hkv, M, d]` — `Hkv` key/value heads (`H % Hkv == 0`), `M` key positions;
/// - `values`: `[B, Hkv, M, dv]` — `dv` value head dim;
/// - result: `[B, H, N, dv]`, or `[B, N, H, dv]` with `outputLayout: .tokenMajor`.
///
/// Only the last axis of each input must be contiguous: a model's token-major rows `[B·T, H·d]`
/// passed as `rows.reshaped([B, T, H, d]).permuted([0, 2, 1, 3])` are read in place (query row
/// stride `H·d`), and with `outputLayout: .tokenMajor` the result is written as `[B, T, H, dv]`,
/// i.e. `[B·T, H·dv]` rows after a reshape that is a view.
///
/// Query head `h` reads KV head `h / (H / Hkv)` (multi-head when `Hkv == H`, multi-query when
/// `Hkv == 1`); the query heads of a group are stacked into one GEMM against their shared K/V.
/// A query whose keys are all masked gets a zero row.
///
/// - Parameters:
///   - scale: multiplies `Q Kᵀ`; default `1 / sqrt(d)`.
///   - mask: causal (bottom-right: query `i` sees key `j` iff `j <= i + M - N`), a sliding window
///     (also `j > i + M - N - W`; key tiles outside the band are skipped), per-batch key lengths,
///     an additive bias, ALiBi, or a combination (``AttentionMask/combined(with:)``).
///   - outputLayout: `.headMajor` `[B, H, N, dv]` (default) or `.tokenMajor` `[B, N, H, dv]`.
///   - implementation: `.materialized`, `.tiled` or `.automatic` (chosen from the shapes).
///   - threads: worker threads (default: all cores); OpenBLAS runs single-threaded inside them.
///     The result does not depend on the thread count.
/// - Throws: ``AttentionError`` for inputs that disagree, NaN/Inf inputs (`-inf` in a bias is a
///   mask), inputs so large that float32 scores could overflow, or scratch over the
///   ``AttentionTensor/MemoryBudget``; ``AttentionTensor/TensorError`` when the output cannot be allocated.
public func scaledDotProductAttention(
    queries: Tensor, keys: Tensor, values: Tensor, scale: Float? = nil, mask: AttentionMask = .none,
    implementation: ExactAttentionImplementation = .automatic, outputLayout: AttentionOutputLayout = .headMajor,
    threads: Int? = nil
) throws -> Tensor {
    let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: scale, mask: mask, threads: threads)
    let plan = ExactAttentionPlan(shape: inputs.shape, implementation: implementation, threads: inputs.threads)
    return try exactAttention(inputs, plan: plan, outputLayout: outputLayout)
}

/// Exact attention with an explicit ``ExactAttentionPlan`` (block sizes, threads); see
/// ``scaledDotProductAttention(queries:keys:values:scale:mask:implementation:outputLayout:threads:)``.
public func exactAttention(
    queries: Tensor, keys: Tensor, values: Tensor, scale: Float? = nil, mask: AttentionMask = .none,
    plan: ExactAttentionPlan, outputLayout: AttentionOutputLayout = .headMajor
) throws -> Tensor {
    let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: scale, mask: mask,
                                     threads: plan.threads)
    return try exactAttention(inputs, plan: plan, outputLayout: outputLayout)
}

/// Exact attention on accepted inputs, query row 0 at key position `queryOffset` (nil: `M - N`).
func exactAttention(_ inputs: AttentionInputs, plan: ExactAttentionPlan, queryOffset: Int? = nil,
                    outputLayout: AttentionOutputLayout = .headMajor) throws -> Tensor {
    guard inputs.shape == plan.shape else {
        throw AttentionError.shapeMismatch(tensor: "queries", shape: [inputs.shape.B, inputs.shape.H, inputs.shape.N, inputs.shape.d], expected: "the plan's \(plan.shape) (inputs \(inputs.shape))")
    }
    try inputs.checkSoftmaxRange()
    var out = try inputs.makeOutput(outputLayout)
    if out.count == 0 { return out }
    try inputs.withLayout(output: &out, queryOffset: queryOffset, outputLayout: outputLayout) { layout in
        if inputs.shape.M == 0 {
            layout.out.initialize(repeating: 0, count: inputs.shape.B * inputs.shape.H * inputs.shape.N * inputs.shape.dv)
        } else if plan.implementation == .tiled {
            try runTiled(layout, plan: plan)
        } else {
            try runMaterialized(layout, plan: plan)
        }
    }
    return out
}
