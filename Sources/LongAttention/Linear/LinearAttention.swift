import AttentionTensor

/// The feature map φ of linear attention.
public enum LinearFeatureMap: Sendable, Equatable {
    /// φ(x) = elu(x) + 1 (Katharopoulos et al. 2020).
    case elu
    /// φ(x) = max(x, 0).
    case relu
    /// Efficient Attention (Shen et al. 2021): softmax over each query's `d` features and over the
    /// `M` positions for each key feature; `O = ρq(Q) (ρk(K)ᵀ V)`, no normaliser. Non-causal only.
    case softmax
    /// Performer FAVOR+ with `features` positive orthogonal random features drawn from `seed`,
    /// approximating exact softmax attention with scale `1/sqrt(d)`.
    case favor(features: Int, seed: UInt64)

    /// The name used by the command line and the benchmark.
    public var name: String {
        switch self {
        case .elu: "elu"
        case .relu: "relu"
        case .softmax: "softmax"
        case .favor: "favor"
        }
    }
}

/// Linear attention: `O_i = φ(q_i)ᵀ S / (φ(q_i)·z + ε)` with `S = Σ_j φ(k_j) v_jᵀ`,
/// `z = Σ_j φ(k_j)`, in O(N) time and memory — no N×M matrix exists.
///
/// Shapes: `queries [B, H, N, d]`, `keys [B, Hkv, M, d]`, `values [B, Hkv, M, dv]` →
/// `[B, H, N, dv]`; `H % Hkv == 0`, and the query heads of a group share their KV head's state
/// `S [F, dv]`, `z [F]` (`F = d`, or `m` for FAVOR+), applied to them in one stacked GEMM.
///
/// - Parameters:
///   - featureMap: `.elu` (default), `.relu`, `.softmax` (Efficient Attention) or `.favor`.
///   - causal: sums over keys `j <= i + M - N` only (bottom-right). Computed in chunks: a masked
///     GEMM inside each chunk and the carried state across chunks; equal to the token-by-token
///     recurrence. `.softmax` cannot be causal.
///   - epsilon: added to the normaliser (elu, relu); SPEC.md's 1e-6 by default. FAVOR+ divides
///     by its normaliser as is (a row with no keys gives zeros).
/// - Throws: ``AttentionError`` on shapes that disagree or a causal `.softmax`.
public func linearAttention(
    queries: Tensor, keys: Tensor, values: Tensor, featureMap: LinearFeatureMap = .elu,
    causal: Bool = false, epsilon: Float = 1e-6, chunkSize: Int = 64, threads: Int? = nil
) throws -> Tensor {
    let shape = try AttentionShape(queries: queries, keys: keys, values: values)
    let plan = try LinearAttentionPlan.checked(shape: shape, featureMap: featureMap, causal: causal, chunkSize: chunkSize,
                                               threads: threads)
    return try linearAttention(queries: queries, keys: keys, values: values, epsilon: epsilon, plan: plan)
}

/// Linear attention with an explicit ``LinearAttentionPlan``.
public func linearAttention(queries: Tensor, keys: Tensor, values: Tensor, epsilon: Float = 1e-6,
                            plan: LinearAttentionPlan) throws -> Tensor {
    let shape = try AttentionShape(queries: queries, keys: keys, values: values)
    var out = try Tensor(uninitialized: shape.outputShape)
    try linearAttention(queries: queries, keys: keys, values: values, epsilon: epsilon, plan: plan, into: &out)
    return out
}

/// Linear attention into an existing `[B, H, N, dv]` output (overwritten). For streams and loops
/// that reuse their output: at a million tokens, faulting in a fresh multi-GiB output each call
/// can cost as much as the attention itself.
public func linearAttention(queries: Tensor, keys: Tensor, values: Tensor, epsilon: Float = 1e-6,
                            plan: LinearAttentionPlan, into out: inout Tensor) throws {
    try linearAttention(queries: queries, keys: keys, values: values, epsilon: epsilon, plan: plan, into: &out, normalizers: nil)
}

/// The forward, optionally writing each row's normaliser into `normalizers` (`[B, H, N]`).
func linearAttention(queries: Tensor, keys: Tensor, values: Tensor, epsilon: Float, plan: LinearAttentionPlan,
                     into out: inout Tensor, normalizers: UnsafeMutablePointer<Float>?) throws {
    let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: 1, threads: plan.threads)
    let shape = inputs.shape
    guard out.shape == shape.outputShape else {
        throw AttentionError.shapeMismatch(tensor: "output", shape: out.shape, expected: "attention's output shape \(shape.outputShape)")
    }
    guard shape == plan.shape else {
        throw AttentionError.shapeMismatch(tensor: "queries", shape: [shape.B, shape.H, shape.N, shape.d], expected: "the plan's \(plan.shape) (inputs \(shape))")
    }
    guard epsilon.isFinite, epsilon >= 0 else { throw AttentionError.invalidArgument(name: "epsilon", value: "\(epsilon)", expected: "finite and >= 0") }
    if plan.causal, plan.featureMap == .softmax {
        throw AttentionError.invalidArgument(name: "causal", value: "true", expected: "false with the softmax feature map (Efficient Attention is non-causal only)")
    }
    try checkLinearRange(inputs, featureMap: plan.featureMap)
    var favor: FavorFeatures?
    if case .favor(let m, let seed) = plan.featureMap {
        favor = try FavorFeatures(dimension: shape.d, features: m, seed: seed)
    }
    if out.count == 0 { return }
    try inputs.withLayout(output: &out) { layout in
        var L = layout
        L.normalizers = normalizers
        try runLinear(L, plan: plan, favor: favor, epsilon: favor == nil ? epsilon : 0)
    }
}

/// Linear attention's float32 range: with φ(x) <= max|x| + 1 (elu, relu), the state sums at most
/// `M·φ(k)·max|v|` and a read at most `F` times that, scaled by φ(q); Efficient Attention's and
/// FAVOR+'s features are at most 1 after their max shifts, but FAVOR+'s projection and |k|² are
/// formed first. Any bound over 2^124 is an ``AttentionError/overflow(quantity:bound:limit:)``.
func checkLinearRange(_ inputs: AttentionInputs, featureMap: LinearFeatureMap) throws {
    let s = inputs.shape
    let (q, k, v) = (Double(inputs.maxQ), Double(inputs.maxK), Double(inputs.maxV))
    let F = Double(s.d)
    let bound: Double, what: String
    switch featureMap {
    case .elu, .relu:
        bound = F * Double(s.M) * (q + 1) * (k + 1) * max(v, 1)
        what = "d·M·(max|q| + 1)·(max|k| + 1)·max(max|v|, 1)"
    case .softmax:
        bound = max(Double(s.M) * max(v, 1), 2 * max(q, k))
        what = "M·max|v| or 2·max(|q|, |k|)"
    case .favor(let m, _):
        bound = max(Double(m) * Double(s.M) * max(v, 1), Double(s.d) * max(q, k) * max(q, k))
        what = "m·M·max|v| or d·max(|q|, |k|)²"
    }
    if bound > AttentionInputs.magnitudeLimit {
        throw AttentionError.overflow(quantity: "linear attention intermediates \(what)", bound: bound, limit: AttentionInputs.magnitudeLimit)
    }
}
