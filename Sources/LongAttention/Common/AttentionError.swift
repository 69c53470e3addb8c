/// Why an attention call refused its inputs. Every library entry point throws one of these
/// (or a ``AttentionTensor/TensorError`` for an allocation that failed) instead of trapping.
public enum AttentionError: Error, Equatable, CustomStringConvertible, Sendable {
    /// An input does not have the rank the variant needs (`q`, `k`, `v` are rank 4).
    case wrongRank(name: String, expected: Int, shape: [Int])
    /// Shapes that must agree do not.
    case shapeMismatch(String)
    /// `H` is not a multiple of `Hkv` (or `Hkv` is 0).
    case headsNotGrouped(H: Int, Hkv: Int)
    /// An option out of its domain (a scale that is not finite, a block size of 0, ...).
    case invalidArgument(String)
    /// The call would need more memory than is allowed.
    case tooLarge(String)
    /// An input holds NaN or ±Inf (inputs are rejected, not propagated: see the README).
    case nonFinite(name: String, index: [Int])
    /// An additive bias holds NaN or +Inf (only -Inf, which masks an entry, may be non-finite).
    case invalidBias(index: [Int])
    /// Finite inputs so large that float32 intermediates could overflow (a bound on the scores or
    /// the accumulated outputs, computed from the largest magnitudes, exceeds 2^124): refused
    /// rather than returning NaN or Inf.
    case overflow(String)
    /// A KV cache cannot take the tokens appended to it.
    case cacheFull(capacity: Int, length: Int, appending: Int)
    /// A sliding window that is not a positive number of positions, or not on a causal mask, or
    /// wider than a KV cache layer's ring holds.
    case invalidWindow(String)
    /// More tokens appended at once to a sliding-window layer of a ``KVCache`` than its ring was
    /// sized for (`maxAppend`): the chunk's first queries would need keys the ring overwrote.
    case appendTooLong(maxAppend: Int, appending: Int)

    public var description: String {
        switch self {
        case .wrongRank(let n, let r, let s): return "\(n) must be rank \(r), got shape \(s)"
        case .shapeMismatch(let s): return "shape mismatch: \(s)"
        case .headsNotGrouped(let h, let hkv):
            return "H = \(h) query heads is not a multiple of Hkv = \(hkv) key/value heads"
        case .invalidArgument(let s): return "invalid argument: \(s)"
        case .tooLarge(let s): return "too large: \(s)"
        case .nonFinite(let n, let i): return "\(n) holds a non-finite value (NaN or Inf) at \(i)"
        case .invalidBias(let i):
            return "bias holds NaN or +Inf at \(i) (only -inf, which masks an entry, may be non-finite)"
        case .overflow(let s): return "inputs too large for float32: \(s)"
        case .cacheFull(let c, let l, let a):
            return "KV cache full: \(l) of \(c) positions used, cannot append \(a)"
        case .invalidWindow(let s): return "invalid sliding window: \(s)"
        case .appendTooLong(let m, let a):
            return "cannot append \(a) tokens at once to a sliding-window KV cache layer sized for \(m) (maxAppend)"
        }
    }
}
