import AttentionTensor
import CAttentionKernels

/// A mixture-of-experts layer's shape and routing rule (SPEC.md § Mixture of experts).
///
/// Expert `e` is a SwiGLU MLP `w2 · (silu(w1 · x) ⊙ (w3 · x))` with an intermediate size `F_e`;
/// the router `softmax(x · gateᵀ)` picks the top `topK` experts of each token (ties to the lower
/// index) and weighs their outputs by their probabilities, divided by the sum over the top k when
/// `renormalize` (Mixtral) and raw otherwise (Switch, Qwen-MoE).
public struct MoEConfig: Sendable, Equatable {
    /// The model width D (rows of x are D wide).
    public var hidden: Int
    /// The intermediate size `F_e` of each expert; `E = expertSizes.count`. All equal for Mixtral.
    public var expertSizes: [Int]
    /// Experts per token (1 ≤ k ≤ E).
    public var topK: Int
    /// Divide the top-k probabilities by their sum (Mixtral) rather than use them raw (Switch).
    public var renormalize: Bool
    /// nil: dropless (every selected slot is computed; Mixtral). Otherwise Switch's capacity: each
    /// expert takes at most `ceil(capacityFactor · T · k / E)` token slots per call, first choices
    /// of every token before second choices (GShard's priority), tokens in order within a choice;
    /// a slot over capacity is dropped (contributes zero) and counted.
    public var capacityFactor: Double?

    /// Checks every field: `hidden ≥ 1`, at least one expert, every `F_e ≥ 1`, `1 ≤ topK ≤ E`,
    /// and a finite positive capacity factor when given. Throws ``MoEError``.
    public init(hidden: Int, expertSizes: [Int], topK: Int, renormalize: Bool, capacityFactor: Double? = nil) throws {
        self.hidden = hidden
        self.expertSizes = expertSizes
        self.topK = topK
        self.renormalize = renormalize
        self.capacityFactor = capacityFactor
        try validate()
    }

    /// Number of experts E.
    public var experts: Int { expertSizes.count }

    /// The checks of ``init(hidden:expertSizes:topK:renormalize:capacityFactor:)``, for a value
    /// whose fields were changed since (the entry points call it too).
    public func validate() throws {
        guard hidden >= 1 else { throw MoEError.invalidHidden(hidden) }
        guard !expertSizes.isEmpty else { throw MoEError.noExperts }
        if let e = expertSizes.firstIndex(where: { $0 < 1 }) { throw MoEError.invalidExpertSize(expert: e, size: expertSizes[e]) }
        guard topK >= 1, topK <= expertSizes.count else { throw MoEError.invalidTopK(topK, experts: expertSizes.count) }
        if let c = capacityFactor, !(c.isFinite && c > 0) { throw MoEError.invalidCapacityFactor(c) }
        // Every size the kernels form (rows × widths, parameter counts) must fit in Int with room.
        let limit = 1 << 40
        guard hidden <= limit, expertSizes.allSatisfy({ $0 <= limit / hidden }) else {
            throw MoEError.tooLarge(hidden: hidden, largestExpert: expertSizes.max()!, limit: limit)
        }
    }

    /// Slots each expert takes per call of `tokens` tokens: `ceil(capacityFactor · T · k / E)`,
    /// or nil when dropless.
    public func capacity(tokens: Int) -> Int? {
        guard let c = capacityFactor else { return nil }
        let slots = c * Double(tokens) * Double(topK) / Double(experts)
        return Int(min(slots.rounded(.up), Double(Int32.max)))
    }

    /// FLOPs of one token slot through expert `e`: three GEMMs of D × F_e (w1, w3, w2).
    public func expertFlopsPerToken(_ e: Int) -> Int { 6 * hidden * expertSizes[e] }
}

/// Where the layer's parameters sit in one flat Float32 buffer, in the order gate `[E, D]`, then
/// per expert `w1 [F_e, D]`, `w2 [D, F_e]`, `w3 [F_e, D]`. ``MixtureOfExperts`` keeps its
/// parameters (and gradients) this way; a model that keeps all its parameters in one buffer can
/// place a layer's at any base with ``weights(_:)`` and ``gradients(_:)``.
public struct MoEParameterLayout: Sendable, Equatable {
    public let hidden: Int
    public let expertSizes: [Int]
    /// Offset of `gate [E, D]` (0).
    public let gate: Int
    /// Offsets of each expert's `w1`, `w2`, `w3`.
    public let w1: [Int], w2: [Int], w3: [Int]
    /// Floats in all.
    public let count: Int

    public init(hidden: Int, expertSizes: [Int]) {
        self.hidden = hidden
        self.expertSizes = expertSizes
        gate = 0
        var o = expertSizes.count * hidden
        var a = [Int](), b = [Int](), c = [Int]()
        for f in expertSizes {
            a.append(o); o += f * hidden
            b.append(o); o += hidden * f
            c.append(o); o += f * hidden
        }
        w1 = a; w2 = b; w3 = c
        count = o
    }

    public init(_ config: MoEConfig) { self.init(hidden: config.hidden, expertSizes: config.expertSizes) }

    /// Pointers into a buffer of ``count`` floats laid out this way.
    public func weights(_ base: UnsafePointer<Float>) -> MoEWeights {
        MoEWeights(gate: base + gate, w1: w1.map { base + $0 }, w2: w2.map { base + $0 }, w3: w3.map { base + $0 })
    }

    /// Gradient pointers into a buffer of ``count`` floats laid out this way.
    public func gradients(_ base: UnsafeMutablePointer<Float>) -> MoEGradients {
        MoEGradients(gate: base + gate, w1: w1.map { base + $0 }, w2: w2.map { base + $0 }, w3: w3.map { base + $0 })
    }

    /// The safetensors names and shapes, in layout order: `gate.weight`, `experts.{e}.w1.weight`,
    /// `experts.{e}.w2.weight`, `experts.{e}.w3.weight` (Mixtral's names without the layer
    /// prefix; `prefix` is put in front of each).
    public func entries(prefix: String = "") -> [(name: String, offset: Int, shape: [Int])] {
        var out: [(name: String, offset: Int, shape: [Int])] = [("\(prefix)gate.weight", gate, [expertSizes.count, hidden])]
        for (e, f) in expertSizes.enumerated() {
            out.append(("\(prefix)experts.\(e).w1.weight", w1[e], [f, hidden]))
            out.append(("\(prefix)experts.\(e).w2.weight", w2[e], [hidden, f]))
            out.append(("\(prefix)experts.\(e).w3.weight", w3[e], [f, hidden]))
        }
        return out
    }
}

/// The parameters of a layer, read through raw pointers (zero-copy from wherever they live):
/// `gate [E, D]`, and per expert `w1 [F_e, D]`, `w2 [D, F_e]`, `w3 [F_e, D]`, row-major, contiguous.
public struct MoEWeights {
    public var gate: UnsafePointer<Float>
    public var w1: [UnsafePointer<Float>]
    public var w2: [UnsafePointer<Float>]
    public var w3: [UnsafePointer<Float>]

    public init(gate: UnsafePointer<Float>, w1: [UnsafePointer<Float>], w2: [UnsafePointer<Float>], w3: [UnsafePointer<Float>]) {
        self.gate = gate
        self.w1 = w1
        self.w2 = w2
        self.w3 = w3
    }
}

extension MoEWeights {
    /// Throws ``MoEError/nonFinite(name:index:)`` for the first NaN or infinity in the router or
    /// an expert's `w1`, `w2`, `w3` (sizes from `config`), naming the tensor as a safetensors
    /// archive does after `prefix` (`gate.weight`, `experts.{e}.w{1,2,3}.weight`) with the
    /// row-major index; ``MoEError/expertCountMismatch(expected:got:)`` when pointers are given for
    /// another number of experts.
    ///
    /// ``moeForward(_:weights:x:tokens:output:keepForBackward:threads:)`` checks its input rows on
    /// every call but reads the weights unchecked (a scan per call would double a decode step's
    /// memory traffic): weights are checked once, where they are loaded. ``MixtureOfExperts``'s
    /// initialisers do; a caller with weights of its own calls this.
    public func checkFinite(_ config: MoEConfig, prefix: String = "") throws {
        let E = config.experts, D = config.hidden
        for count in [w1.count, w2.count, w3.count] where count != E {
            throw MoEError.expertCountMismatch(expected: E, got: count)
        }
        var largest: Float = 0
        func scan(_ name: String, _ p: UnsafePointer<Float>, _ n: Int) throws {
            let bad = ak_scan_values(p, n, 0, &largest)
            if bad >= 0 { throw MoEError.nonFinite(name: prefix + name, index: bad) }
        }
        try scan("gate.weight", gate, E * D)
        for e in 0..<E {
            let n = config.expertSizes[e] * D
            try scan("experts.\(e).w1.weight", w1[e], n)
            try scan("experts.\(e).w2.weight", w2[e], n)
            try scan("experts.\(e).w3.weight", w3[e], n)
        }
    }
}

/// Where the backward accumulates (`+=`) the parameters' gradients; shapes as ``MoEWeights``.
public struct MoEGradients {
    public var gate: UnsafeMutablePointer<Float>
    public var w1: [UnsafeMutablePointer<Float>]
    public var w2: [UnsafeMutablePointer<Float>]
    public var w3: [UnsafeMutablePointer<Float>]

    public init(gate: UnsafeMutablePointer<Float>, w1: [UnsafeMutablePointer<Float>], w2: [UnsafeMutablePointer<Float>],
                w3: [UnsafeMutablePointer<Float>]) {
        self.gate = gate
        self.w1 = w1
        self.w2 = w2
        self.w3 = w3
    }
}

/// What is wrong with a mixture-of-experts call, its configuration or its weights.
public enum MoEError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The hidden size is below 1.
    case invalidHidden(Int)
    /// The configuration lists no expert.
    case noExperts
    /// Expert `expert`'s intermediate size `size` is below 1.
    case invalidExpertSize(expert: Int, size: Int)
    /// Top-k outside `1...experts`.
    case invalidTopK(Int, experts: Int)
    /// A capacity factor that is not finite and positive.
    case invalidCapacityFactor(Double)
    /// A token count that is negative or does not fit 32-bit slot indices.
    case invalidTokenCount(Int)
    /// Fewer than one thread.
    case invalidThreadCount(Int)
    /// `hidden` or the largest expert size `largestExpert` exceeds what the kernels' products fit: each
    /// must be at most `limit` and their product at most `limit` too.
    case tooLarge(hidden: Int, largestExpert: Int, limit: Int)
    /// The scratch a call needs (a sum of per-expert buffers) overflows `Int`.
    case scratchOverflow
    /// The weight (or gradient) pointers are given for `got` experts; the configuration has `expected`.
    case expertCountMismatch(expected: Int, got: Int)
    /// A NaN or infinity in an input (`x`, the output gradient) or a weight, at row-major `index`.
    case nonFinite(name: String, index: Int)
    /// An input tensor of the wrong shape (`x`, the output gradient).
    case shapeMismatch(name: String, shape: [Int], expected: String)
    /// A weight archive without tensor `name`, which the layer needs.
    case missingTensor(name: String)
    /// A weight of the wrong shape.
    case misshapenTensor(name: String, shape: [Int], expected: String)
    /// A tensor in a weight archive that belongs to no part of the layer.
    case unexpectedTensor(name: String)
    /// The saved forward was run with another configuration than the backward call's.
    case forwardConfigurationMismatch
    /// The saved forward was run on `saved` tokens; the backward call has `given`.
    case forwardTokenMismatch(saved: Int, given: Int)
    /// The saved forward was run without `keepForBackward`.
    case forwardNotKept
    /// The scratch (bytes) exceeds the memory budget (``MemoryBudget``) or could not be allocated.
    case allocationFailed(bytes: Int)

    public var description: String {
        switch self {
        case .invalidHidden(let d): return "hidden size must be at least 1, got \(d)"
        case .noExperts: return "a mixture of experts needs at least one expert"
        case .invalidExpertSize(let e, let s): return "expert \(e): intermediate size must be at least 1, got \(s)"
        case .invalidTopK(let k, let e): return "top-k must be in 1...\(e) (the number of experts), got \(k)"
        case .invalidCapacityFactor(let c): return "capacity factor must be finite and positive, got \(c)"
        case .invalidTokenCount(let t): return "token count must be non-negative and fit 32-bit slot indices, got \(t)"
        case .invalidThreadCount(let t): return "threads must be at least 1, got \(t)"
        case .tooLarge(let h, let e, let limit): return "too large: hidden \(h) × expert sizes up to \(e) is too large (each and their product at most \(limit))"
        case .scratchOverflow: return "too large: the scratch size overflows"
        case .expertCountMismatch(let e, let g): return "weights given for \(g) experts, the configuration has \(e)"
        case .nonFinite(let n, let i): return "\(n) holds a non-finite value (NaN or infinity) at element \(i)"
        case .shapeMismatch(let n, let s, let e): return "\(n) has shape \(s), expected \(e)"
        case .missingTensor(let n): return "missing tensor '\(n)'"
        case .misshapenTensor(let n, let s, let e): return "tensor '\(n)' has shape \(s), expected \(e)"
        case .unexpectedTensor(let n): return "unexpected tensor '\(n)' (not part of the mixture of experts)"
        case .forwardConfigurationMismatch: return "saved forward does not match the backward call: it was run with another configuration"
        case .forwardTokenMismatch(let saved, let given):
            return "saved forward does not match the backward call: it was run on \(saved) tokens, not \(given)"
        case .forwardNotKept: return "saved forward does not match the backward call: it was run without keepForBackward"
        case .allocationFailed(let b): return "cannot allocate \(b) bytes of scratch: over the memory budget or refused by the system"
        }
    }
}
