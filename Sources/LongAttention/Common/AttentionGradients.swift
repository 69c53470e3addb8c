import AttentionTensor

/// Gradients of `L = Σ out ⊙ dOut` (the vector-Jacobian product with an upstream gradient
/// `dOut [B, H, N, dv]`) with respect to an attention call's inputs.
///
/// With GQA/MQA a KV head's `keys` and `values` gradients sum over the query heads that read it.
/// Masked pairs contribute nothing; a fully masked query row has zero gradients.
public struct AttentionGradients: Sendable {
    /// dL/dq, `[B, H, N, d]`.
    public var queries: Tensor
    /// dL/dk, `[B, Hkv, M, d]`.
    public var keys: Tensor
    /// dL/dv, `[B, Hkv, M, dv]`.
    public var values: Tensor
    /// Infini-Attention: dL/dβ, one per query head; nil for the other variants.
    public var beta: [Float]?
}

/// A softmax-attention forward kept for its backward (exact and BigBird): the output and each
/// query row's log-sum-exp, from which the backward recomputes the probabilities tile by tile
/// (FlashAttention-2) instead of keeping an N×M matrix.
public struct SoftmaxAttentionForward: Sendable {
    /// `[B, H, N, dv]`, or `[B, N, H, dv]` when ``outputLayout`` is `.tokenMajor`.
    public let output: Tensor
    /// `log Σ_j exp(s_ij)` over the visible scores of each row, `[B, H, N]` (-inf for a fully masked row).
    public let logSumExp: Tensor
    /// How ``output`` is laid out.
    public let outputLayout: AttentionOutputLayout

    public init(output: Tensor, logSumExp: Tensor, outputLayout: AttentionOutputLayout = .headMajor) {
        self.output = output
        self.logSumExp = logSumExp
        self.outputLayout = outputLayout
    }

    /// The output as a `[B, H, N, dv]` tensor (a strided view of a token-major output, no copy).
    public var headMajorOutput: Tensor {
        outputLayout == .headMajor ? output : (try? output.permuted([0, 2, 1, 3])) ?? output
    }
}

/// The checks every backward entry point shares: `dOut` has the output's shape and is finite
/// (its magnitude bounds the gradients' range), and a saved forward matches the inputs.
struct BackwardInputs {
    let dOut: Tensor
    let maxDOut: Float

    init(_ inputs: AttentionInputs, outputGradient dOut: Tensor, forward: SoftmaxAttentionForward? = nil) throws {
        let s = inputs.shape
        guard dOut.shape == s.outputShape else {
            throw AttentionError.shapeMismatch(tensor: "outputGradient", shape: dOut.shape, expected: "the output's shape \(s.outputShape)")
        }
        let scan = dOut.scanValues()
        if let i = scan.invalidIndex { throw AttentionError.nonFinite(name: "outputGradient", index: i) }
        if let forward {
            guard forward.headMajorOutput.shape == s.outputShape, forward.logSumExp.shape == [s.B, s.H, s.N] else {
                let output = forward.headMajorOutput.shape == s.outputShape
                throw AttentionError.shapeMismatch(
                    tensor: output ? "saved forward's logSumExp" : "saved forward's output (head-major)",
                    shape: output ? forward.logSumExp.shape : forward.headMajorOutput.shape,
                    expected: output ? "\([s.B, s.H, s.N]) for these inputs" : "\(s.outputShape) for these inputs")
            }
        }
        self.dOut = dOut.lastAxisContiguous()
        maxDOut = scan.maxMagnitude
    }

    /// Softmax attention's backward range: dP ≤ dv·max|dO|·max|v|, |dS| ≤ 2·dP (p ≤ 1, |D| ≤ dP),
    /// dQ ≤ |scale|·M·dS·d·max|k|, dK ≤ group·N·dS·|scale|·d·max|q|, dV ≤ group·N·max|dO|.
    func checkSoftmaxRange(_ inputs: AttentionInputs) throws {
        let s = inputs.shape
        let dP = Double(s.dv) * Double(maxDOut) * Double(inputs.maxV)
        let dS = 2 * dP
        let scale = Double(abs(inputs.scale))
        let bound = max(scale * Double(s.M) * dS * Double(s.d) * Double(inputs.maxK),
                        Double(s.group) * Double(s.N) * dS * scale * Double(s.d) * Double(inputs.maxQ),
                        Double(s.group) * Double(s.N) * Double(maxDOut))
        if bound > AttentionInputs.magnitudeLimit {
            throw AttentionError.overflow(quantity: "the gradients (from the inputs and the output gradient)", bound: bound,
                                         limit: AttentionInputs.magnitudeLimit)
        }
    }
}
