import AttentionTensor
import Foundation

/// How much of a key block a query block sees under a causal mask, given where both sit in one
/// sequence (the building block of blockwise and ring attention).
public enum AttentionBlockVisibility: Sendable, Equatable {
    /// Every query sees every key (no mask needed).
    case full
    /// The diagonal crosses the block: query `i` sees key `j` iff `keyPosition + j <= queryPosition + i`.
    case partial
    /// No query sees any key: the block contributes nothing (and need not be computed).
    case none

    /// Visibility of keys at positions `keyPosition ..< keyPosition + keyRows` for queries at
    /// `queryPosition ..< queryPosition + queryRows`; without `causal` every non-empty block is `.full`.
    public init(queryRows: Int, keyRows: Int, queryPosition: Int, keyPosition: Int, causal: Bool) {
        if queryRows == 0 || keyRows == 0 { self = .none; return }
        if !causal { self = .full; return }
        if keyPosition + keyRows - 1 <= queryPosition { self = .full }
        else if keyPosition > queryPosition + queryRows - 1 { self = .none }
        else { self = .partial }
    }
}

/// The accepted inputs of a block call and the query offset its mask needs (nil when `.none`).
private func blockInputs(queries: Tensor, keys: Tensor, values: Tensor, scale: Float?, causal: Bool,
                         queryPosition: Int, keyPosition: Int, keyLengths: [Int]?, threads: Int?)
    throws -> (AttentionInputs, offset: Int?) {
    let shape = try AttentionShape(queries: queries, keys: keys, values: values)
    let visibility = AttentionBlockVisibility(queryRows: shape.N, keyRows: shape.M, queryPosition: queryPosition,
                                              keyPosition: keyPosition, causal: causal)
    var mask = AttentionMask(isCausal: visibility == .partial)
    if let keyLengths {
        guard keyLengths.count == shape.B else {
            throw AttentionError.shapeMismatch(tensor: "keyLengths", shape: [keyLengths.count], expected: "one length per sequence (B = \(shape.B))")
        }
        // Lengths are sequence positions: the block cannot know the sequence's M (its caller checks
        // the upper bound, as ring attention does against the whole M), but a negative one is wrong
        // at any M. Within the block, a length before it masks every key and one past it none.
        if let bad = keyLengths.first(where: { $0 < 0 }) {
            throw AttentionError.invalidArgument(name: "keyLengths", value: "\(bad)", expected: "a length >= 0")
        }
        mask.keyLengths = keyLengths.map { min(max($0 - keyPosition, 0), shape.M) }
    }
    let inputs = try AttentionInputs(queries: queries, keys: keys, values: values, scale: scale, mask: mask, threads: threads)
    return (inputs, visibility == .none ? nil : queryPosition - keyPosition)
}

/// Exact attention of one query block against one key block of the same sequence, returning the
/// block's normalised output and each row's log-sum-exp over the block's visible keys — the
/// partial result that ``mergeAttentionBlock(output:logSumExp:blockOutput:blockLogSumExp:)`` folds
/// into the results of the other key blocks (blockwise and ring attention).
///
/// Shapes: `queries [B, H, n, d]`, `keys [B, Hkv, m, d]`, `values [B, Hkv, m, dv]`; returns
/// `output [B, H, n, dv]` and `logSumExp [B, H, n]` (-inf, with a zero output row, where a row sees
/// no key of the block).
///
/// - Parameters:
///   - queryPosition: the sequence position (on the key axis) of query row 0: query `i` is at
///     `queryPosition + i`. For bottom-right self-attention over `N` queries and `M` keys, a query
///     block starting at row `i0` is at `i0 + M - N`.
///   - keyPosition: the sequence position of key row 0.
///   - causal: query at position `p` sees keys at positions `<= p` (``AttentionBlockVisibility``);
///     a fully masked block is not computed.
///   - keyLengths: per batch, keys at sequence positions `>= keyLengths[b]` are masked (padding).
///     Each must be in `0...M` of the whole sequence: negative lengths throw here; the caller,
///     who knows `M`, checks the upper bound (ring attention does).
/// Inputs are checked as ``scaledDotProductAttention(queries:keys:values:scale:mask:implementation:threads:)`` checks them.
public func attentionBlockForward(
    queries: Tensor, keys: Tensor, values: Tensor, scale: Float? = nil, causal: Bool = false,
    queryPosition: Int = 0, keyPosition: Int = 0, keyLengths: [Int]? = nil, threads: Int? = nil
) throws -> SoftmaxAttentionForward {
    let (inputs, offset) = try blockInputs(queries: queries, keys: keys, values: values, scale: scale, causal: causal,
                                           queryPosition: queryPosition, keyPosition: keyPosition,
                                           keyLengths: keyLengths, threads: threads)
    guard let offset else {
        let s = inputs.shape
        return SoftmaxAttentionForward(output: try Tensor(zeros: s.outputShape),
                                       logSumExp: try Tensor(filling: -.infinity, [s.B, s.H, s.N]))
    }
    return try exactAttentionKeepingLSE(inputs, queryOffset: offset)
}

/// The gradients one key block contributes, given the query rows' final output and log-sum-exp
/// over all key blocks (FlashAttention-2's backward restricted to the block: `P = exp(S - lse)` with
/// the rows' global lse, `D = rowsum(dO ∘ O)` with their global output). Summing the `queries`
/// gradients over all key blocks, and each key block's `keys`/`values` gradients over all query
/// blocks, gives exact attention's gradients.
///
/// Shapes: `queries [B, H, n, d]`, `keys [B, Hkv, m, d]`, `values [B, Hkv, m, dv]`,
/// `output [B, H, n, dv]` and `logSumExp [B, H, n]` (the rows' merged forward), `outputGradient
/// [B, H, n, dv]`; returns dq `[B, H, n, d]`, dk `[B, Hkv, m, d]`, dv `[B, Hkv, m, dv]` (zeros for
/// a fully masked block). Positions, mask and key lengths as in
/// ``attentionBlockForward(queries:keys:values:scale:causal:queryPosition:keyPosition:keyLengths:threads:)``.
public func attentionBlockBackward(
    queries: Tensor, keys: Tensor, values: Tensor, output: Tensor, logSumExp: Tensor, outputGradient: Tensor,
    scale: Float? = nil, causal: Bool = false, queryPosition: Int = 0, keyPosition: Int = 0,
    keyLengths: [Int]? = nil, threads: Int? = nil
) throws -> AttentionGradients {
    let (inputs, offset) = try blockInputs(queries: queries, keys: keys, values: values, scale: scale, causal: causal,
                                           queryPosition: queryPosition, keyPosition: keyPosition,
                                           keyLengths: keyLengths, threads: threads)
    let forward = SoftmaxAttentionForward(output: output, logSumExp: logSumExp)
    guard let offset else {
        _ = try BackwardInputs(inputs, outputGradient: outputGradient, forward: forward)
        let s = inputs.shape
        return AttentionGradients(queries: try Tensor(zeros: [s.B, s.H, s.N, s.d]), keys: try Tensor(zeros: [s.B, s.Hkv, s.M, s.d]),
                                  values: try Tensor(zeros: [s.B, s.Hkv, s.M, s.dv]), beta: nil)
    }
    return try exactBackward(inputs, forward: forward, outputGradient: outputGradient, queryOffset: offset)
}

/// Folds one key block's partial result into the accumulated result of the same query rows by the
/// log-sum-exp form of the (max, sum, output) rule:
///
///     m = max(lse_a, lse_b),  w_a = e^(lse_a - m),  w_b = e^(lse_b - m)
///     out = (w_a·out_a + w_b·out_b) / (w_a + w_b),   lse = m + log(w_a + w_b)
///
/// A side with lse = -inf (no visible key) contributes nothing. `output [B, H, n, dv]` and
/// `logSumExp [B, H, n]` are updated in place (made contiguous); the block's tensors must have the
/// same shapes. The rule is associative and commutative up to float32 rounding.
public func mergeAttentionBlock(output: inout Tensor, logSumExp: inout Tensor, blockOutput: Tensor,
                                blockLogSumExp: Tensor) throws {
    guard output.shape == blockOutput.shape, logSumExp.shape == blockLogSumExp.shape, output.rank == 4,
          logSumExp.shape == Array(output.shape.prefix(3)) else {
        let outputs = output.shape == blockOutput.shape && output.rank == 4
        throw AttentionError.shapeMismatch(
            tensor: outputs ? "blockLogSumExp" : "blockOutput", shape: outputs ? blockLogSumExp.shape : blockOutput.shape,
            expected: outputs ? "[B, H, n] = \(Array(output.shape.prefix(3))) (the output's, whose logSumExp is \(logSumExp.shape))"
                              : "the rank-4 output's shape \(output.shape)")
    }
    let dv = output.shape[3], rows = logSumExp.count
    let bo = blockOutput.contiguous(), bl = blockLogSumExp.contiguous()
    try output.withUnsafeMutableBufferPointer { o in
        try logSumExp.withUnsafeMutableBufferPointer { l in
            try bo.withUnsafePointer { b in
                try bl.withUnsafePointer { lb in
                    mergeRows(o.baseAddress!, l.baseAddress!, b, lb, rows: rows, dv: dv)
                }
            }
        }
    }
}

/// The merge on raw rows: `o [rows, dv]` and `l [rows]` updated with `b`, `lb`.
func mergeRows(_ o: UnsafeMutablePointer<Float>, _ l: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>,
               _ lb: UnsafePointer<Float>, rows: Int, dv: Int) {
    for r in 0..<rows {
        let la = l[r], lbr = lb[r]
        if lbr == -.infinity { continue }
        let orow = o + r * dv, brow = b + r * dv
        if la == -.infinity {
            orow.update(from: brow, count: dv)
            l[r] = lbr
            continue
        }
        let m = max(la, lbr)
        let wa = Foundation.exp(la - m), wb = Foundation.exp(lbr - m)
        let s = wa + wb
        let fa = wa / s, fb = wb / s
        for t in 0..<dv { orow[t] = fa * orow[t] + fb * brow[t] }
        l[r] = m + Foundation.log(s)
    }
}
