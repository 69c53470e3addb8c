/// Why an attention call refused its inputs. Every library entry point throws one of these
/// (or a ``AttentionTensor/TensorError`` for an allocation that failed) instead of trapping.
public enum AttentionError: Error, Equatable, CustomStringConvertible, Sendable {
    /// An input does not have the rank the variant needs (`q`, `k`, `v` are rank 4).
    case wrongRank(name: String, expected: Int, shape: [Int])
    /// Shapes that must agree do not. `tensor` names the input (or the list of per-sequence
    /// values, such as `keyLengths`), `shape` is the shape it has (for a list, its count), and
    /// `expected` says what it needed to agree with.
    case shapeMismatch(tensor: String, shape: [Int], expected: String)
    /// `H` is not a multiple of `Hkv` (or `Hkv` is 0).
    case headsNotGrouped(H: Int, Hkv: Int)
    /// An option out of its domain (a scale that is not finite, a block size of 0, ...): `name` is
    /// the argument or option, `value` what was given, `expected` its domain.
    case invalidArgument(name: String, value: String, expected: String)
    /// The call would need more memory than is allowed. `buffer` names what would be allocated;
    /// `bytes` is its size (nil when the size itself overflows `Int`) and `limit` the memory
    /// budget it exceeds (nil when the size overflows).
    case tooLarge(buffer: String, bytes: Int?, limit: Int?)
    /// An input holds NaN or ±Inf (inputs are rejected, not propagated: see the README).
    case nonFinite(name: String, index: [Int])
    /// An additive bias holds NaN or +Inf (only -Inf, which masks an entry, may be non-finite).
    case invalidBias(index: [Int])
    /// Finite inputs so large that float32 intermediates could overflow (a bound on the scores or
    /// the accumulated outputs, computed from the largest magnitudes, exceeds 2^124): refused
    /// rather than returning NaN or Inf. `quantity` names the bounded value (and how the bound is
    /// computed), `bound` is the bound reached and `limit` the largest magnitude allowed (2^124
    /// for float32 intermediates, the cache type's largest value for a KV cache).
    case overflow(quantity: String, bound: Double, limit: Double)
    /// A KV cache cannot take the tokens appended to it.
    case cacheFull(capacity: Int, length: Int, appending: Int)
    /// A sliding window that is not a positive number of positions, or not on a causal mask, or
    /// wider than a KV cache layer's ring holds. `window` is the window asked for (nil for a
    /// layer's whole history), `layer` the KV cache layer when one is involved, and `reason` what
    /// the window needs.
    case invalidWindow(window: Int?, layer: Int?, reason: String)
    /// More tokens appended at once to a sliding-window layer of a ``KVCache`` than its ring was
    /// sized for (`maxAppend`): the chunk's first queries would need keys the ring overwrote.
    case appendTooLong(maxAppend: Int, appending: Int)

    /// A collective call (ring attention, a sharded KV cache's append) that another rank refused:
    /// `rank` of `ranks` threw its own error (which says why) and no rank went on with `operation`.
    case rankRefused(rank: Int, ranks: Int, operation: String)
    /// The ranks of a collective call disagree on `value` (which every rank must give alike): it
    /// ranges from `lowest` to `highest` across them.
    case ranksDisagree(value: String, lowest: String, highest: String)

    public var description: String {
        switch self {
        case .wrongRank(let n, let r, let s): return "\(n) must be rank \(r), got shape \(s)"
        case .shapeMismatch(let t, let s, let e): return "shape mismatch: \(t) is \(s), expected \(e)"
        case .headsNotGrouped(let h, let hkv):
            return "H = \(h) query heads is not a multiple of Hkv = \(hkv) key/value heads"
        case .invalidArgument(let n, let v, let e): return "invalid argument: \(n) is \(v), expected \(e)"
        case .tooLarge(let buffer, let bytes?, let limit?):
            return "too large: \(buffer) needs \(bytes) bytes; the memory budget allows \(limit)"
        case .tooLarge(let buffer, let bytes?, nil): return "too large: \(buffer) needs \(bytes) bytes"
        case .tooLarge(let buffer, nil, _): return "too large: the size of \(buffer) overflows Int"
        case .nonFinite(let n, let i): return "\(n) holds a non-finite value (NaN or Inf) at \(i)"
        case .invalidBias(let i):
            return "bias holds NaN or +Inf at \(i) (only -inf, which masks an entry, may be non-finite)"
        case .overflow(let q, let b, let l):
            return "inputs too large: \(q) may reach \(b), over \(l); rescale the inputs"
        case .cacheFull(let c, let l, let a):
            return "KV cache full: \(l) of \(c) positions used, cannot append \(a)"
        case .invalidWindow(let w, let layer, let reason):
            let what = w.map { "sliding window of \($0)" } ?? "sliding window"
            return "invalid \(what)\(layer.map { " on KV cache layer \($0)" } ?? ""): \(reason)"
        case .rankRefused(let r, let n, let op):
            return "rank \(r) of \(n) refused \(op) (its error says why); no rank went on"
        case .ranksDisagree(let v, let lo, let hi): return "the ranks disagree on \(v) (from \(lo) to \(hi))"
        case .appendTooLong(let m, let a):
            return "cannot append \(a) tokens at once to a sliding-window KV cache layer sized for \(m) (maxAppend)"
        }
    }
}
