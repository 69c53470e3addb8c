import AttentionTensor

/// A mixture-of-experts layer holding its parameters as Tensors: a router `gate [E, D]` and
/// SwiGLU experts `w1 [F_e, D]`, `w2 [D, F_e]`, `w3 [F_e, D]` (SPEC.md § Mixture of experts).
///
/// The parameters live in one flat buffer laid out by ``layout`` (``MoEParameterLayout``); the
/// Tensors ``gate`` and ``w1(_:)`` … are views of it. Forward and backward run
/// ``moeForward(_:weights:x:tokens:output:keepForBackward:threads:)`` and
/// ``moeBackward(_:weights:x:tokens:forward:outputGradient:inputGradient:gradients:loadBalancingWeight:zLossWeight:threads:)``
/// on it; the routing (top-k, renormalisation, capacity) is the ``MoEConfig`` given per call.
public struct MixtureOfExperts: Sendable {
    /// Where each parameter sits in ``parameters``.
    public let layout: MoEParameterLayout
    /// All parameters, flat, `[layout.count]`.
    public private(set) var parameters: Tensor

    /// The model width D.
    public var hidden: Int { layout.hidden }
    /// Each expert's intermediate size F_e.
    public var expertSizes: [Int] { layout.expertSizes }
    /// Number of experts E.
    public var experts: Int { layout.expertSizes.count }

    /// The router `[E, D]`.
    public var gate: Tensor { view(parameters, layout.gate, [experts, hidden]) }
    /// Expert e's gate projection `[F_e, D]`.
    public func w1(_ e: Int) -> Tensor { view(parameters, layout.w1[e], [expertSizes[e], hidden]) }
    /// Expert e's down projection `[D, F_e]`.
    public func w2(_ e: Int) -> Tensor { view(parameters, layout.w2[e], [hidden, expertSizes[e]]) }
    /// Expert e's up projection `[F_e, D]`.
    public func w3(_ e: Int) -> Tensor { view(parameters, layout.w3[e], [expertSizes[e], hidden]) }

    /// A layer from its tensors (copied into one buffer). Throws ``MoEError`` for a shape that
    /// does not fit: gate `[E, D]` with E, D ≥ 1, one expert per gate row, each `w1`, `w3`
    /// `[F_e, D]` and `w2` `[D, F_e]` with F_e ≥ 1, or a non-finite value.
    public init(gate: Tensor, experts: [(w1: Tensor, w2: Tensor, w3: Tensor)]) throws {
        guard gate.rank == 2, gate.shape[0] >= 1, gate.shape[1] >= 1 else {
            throw MoEError.misshapenTensor(name: "gate.weight", shape: gate.shape, expected: "[E, D] with E, D ≥ 1")
        }
        guard experts.count == gate.shape[0] else {
            throw MoEError.expertCountMismatch(expected: gate.shape[0], got: experts.count)
        }
        var named: [(String, Tensor)] = [("gate.weight", gate)]
        for (e, x) in experts.enumerated() {
            named += [("experts.\(e).w1.weight", x.w1), ("experts.\(e).w2.weight", x.w2), ("experts.\(e).w3.weight", x.w3)]
        }
        try self.init(named: named, prefix: "")
    }

    /// A layer read from a safetensors archive with Mixtral's names (after `prefix`):
    /// `gate.weight`, `experts.{e}.w1.weight`, `experts.{e}.w2.weight`, `experts.{e}.w3.weight`.
    /// E comes from the gate's rows, D from its columns, F_e from `w1`'s rows. A missing,
    /// misshapen or non-finite tensor, or a tensor under `prefix` that is not one of these, is a
    /// ``MoEError`` naming it; a tensor that cannot be read is the archive's ``SafeTensorsError``.
    public init(archive: SafeTensorsArchive, prefix: String = "") throws {
        guard let gateEntry = archive.entry(prefix + "gate.weight") else { throw MoEError.missingTensor(name: prefix + "gate.weight") }
        guard gateEntry.shape.count == 2, gateEntry.shape[0] >= 1, gateEntry.shape[1] >= 1 else {
            throw MoEError.misshapenTensor(name: prefix + "gate.weight", shape: gateEntry.shape, expected: "[E, D] with E, D ≥ 1")
        }
        let E = gateEntry.shape[0]
        var expected = Set([prefix + "gate.weight"])
        for e in 0..<E { for w in 1...3 { expected.insert("\(prefix)experts.\(e).w\(w).weight") } }
        if let extra = archive.names.filter({ $0.hasPrefix(prefix) && !expected.contains($0) }).sorted().first {
            throw MoEError.unexpectedTensor(name: extra)
        }
        var named: [(String, Tensor)] = []
        for name in [prefix + "gate.weight"] + (0..<E).flatMap({ e in (1...3).map { "\(prefix)experts.\(e).w\($0).weight" } }) {
            guard archive.entry(name) != nil else { throw MoEError.missingTensor(name: name) }
        }
        // Shapes before any conversion, so a misshapen file fails without reading its data.
        try Self.checkShapes(E: E, D: gateEntry.shape[1], prefix: prefix) { archive.entry($0)!.shape }
        named.append((prefix + "gate.weight", try archive.tensor(prefix + "gate.weight")))
        for e in 0..<E {
            for w in 1...3 {
                let name = "\(prefix)experts.\(e).w\(w).weight"
                named.append((name, try archive.tensor(name)))
            }
        }
        try self.init(named: named, prefix: prefix)
    }

    /// ``init(archive:prefix:)`` from a `.safetensors` file.
    public init(contentsOf path: String, prefix: String = "") throws {
        try self.init(archive: try SafeTensors.read(path), prefix: prefix)
    }

    /// A layer with normal random parameters (standard deviation `std`, default `1/sqrt(D)` for
    /// the router, w1 and w3 and `1/sqrt(F_e)` for w2), fixed by `seed`.
    public static func random(hidden: Int, expertSizes: [Int], seed: UInt64, std: Float? = nil) throws -> MixtureOfExperts {
        _ = try MoEConfig(hidden: hidden, expertSizes: expertSizes, topK: 1, renormalize: false)
        var named: [(String, Tensor)] = []
        let sIn = std ?? 1 / Float(hidden).squareRoot()
        named.append(("gate.weight", try Tensor.randomNormal([expertSizes.count, hidden], seed: seed, std: sIn)))
        for (e, f) in expertSizes.enumerated() {
            let s = seed &+ UInt64(3 * e + 1) &* 0x9E37_79B9
            named.append(("experts.\(e).w1.weight", try Tensor.randomNormal([f, hidden], seed: s, std: sIn)))
            named.append(("experts.\(e).w2.weight", try Tensor.randomNormal([hidden, f], seed: s &+ 1, std: std ?? 1 / Float(f).squareRoot())))
            named.append(("experts.\(e).w3.weight", try Tensor.randomNormal([f, hidden], seed: s &+ 2, std: sIn)))
        }
        return try MixtureOfExperts(named: named, prefix: "")
    }

    /// `named`: gate, then each expert's w1, w2, w3, names with `prefix` (for errors).
    private init(named: [(String, Tensor)], prefix: String) throws {
        let gate = named[0].1
        let E = gate.shape[0], D = gate.shape[1]
        try Self.checkShapes(E: E, D: D, prefix: prefix) { name in named.first { $0.0 == name }!.1.shape }
        let sizes = (0..<E).map { named[1 + 3 * $0].1.shape[0] }
        _ = try MoEConfig(hidden: D, expertSizes: sizes, topK: 1, renormalize: false)
        let layout = MoEParameterLayout(hidden: D, expertSizes: sizes)
        var flat: Tensor
        do { flat = try Tensor(uninitialized: [layout.count]) } catch { throw MoEError.allocationFailed(bytes: layout.count * 4) }
        let offsets = [layout.gate] + (0..<E).flatMap { [layout.w1[$0], layout.w2[$0], layout.w3[$0]] }
        for ((name, t), _) in zip(named, offsets) {
            if let i = t.firstNonFiniteIndex() {
                var flatIndex = 0
                for (a, n) in zip(i, t.shape) { flatIndex = flatIndex * n + a }
                throw MoEError.nonFinite(name: name, index: flatIndex)
            }
        }
        flat.withUnsafeMutableBufferPointer { out in
            for ((_, t), o) in zip(named, offsets) {
                let c = t.contiguous()
                c.withUnsafePointer { (out.baseAddress! + o).update(from: $0, count: c.count) }
            }
        }
        self.layout = layout
        parameters = flat
    }

    /// Throws the first shape that does not fit gate `[E, D]`: w1, w3 `[F_e, D]`, w2 `[D, F_e]`, F_e ≥ 1.
    private static func checkShapes(E: Int, D: Int, prefix: String, shape: (String) -> [Int]) throws {
        for e in 0..<E {
            let n1 = "\(prefix)experts.\(e).w1.weight", n2 = "\(prefix)experts.\(e).w2.weight", n3 = "\(prefix)experts.\(e).w3.weight"
            let s1 = shape(n1)
            guard s1.count == 2, s1[0] >= 1, s1[1] == D else {
                throw MoEError.misshapenTensor(name: n1, shape: s1, expected: "[F_e, \(D)] with F_e ≥ 1 (D = \(D) from the gate)")
            }
            let f = s1[0]
            let s3 = shape(n3)
            guard s3 == [f, D] else { throw MoEError.misshapenTensor(name: n3, shape: s3, expected: "[\(f), \(D)] (as w1)") }
            let s2 = shape(n2)
            guard s2 == [D, f] else { throw MoEError.misshapenTensor(name: n2, shape: s2, expected: "[\(D), \(f)] (w1 transposed)") }
        }
    }

    /// The parameters with their safetensors names (views, no copy), in layout order.
    public func namedTensors(prefix: String = "") -> [(name: String, tensor: Tensor)] {
        layout.entries(prefix: prefix).map { ($0.name, view(parameters, $0.offset, $0.shape)) }
    }

    /// Writes the parameters as a `.safetensors` file (names sorted, as the Python library writes them).
    public func save(to path: String, prefix: String = "") throws {
        try SafeTensors.write(namedTensors(prefix: prefix).sorted { $0.name < $1.name }, to: path)
    }

    /// A routing configuration for this layer's shape.
    public func config(topK: Int, renormalize: Bool, capacityFactor: Double? = nil) throws -> MoEConfig {
        try MoEConfig(hidden: hidden, expertSizes: expertSizes, topK: topK, renormalize: renormalize, capacityFactor: capacityFactor)
    }

    /// The parameters as raw pointers, valid inside `body`.
    public func withWeights<R>(_ body: (MoEWeights) throws -> R) rethrows -> R {
        try parameters.withUnsafePointer { try body(layout.weights($0)) }
    }

    /// Replaces the parameters in place (same layout), e.g. for an optimiser step.
    public mutating func updateParameters<R>(_ body: (UnsafeMutableBufferPointer<Float>) throws -> R) rethrows -> R {
        try parameters.withUnsafeMutableBufferPointer(body)
    }

    /// `output [T, D]` for `x [T, D]`, and the routing (kept for a backward when asked).
    public func forward(_ x: Tensor, config: MoEConfig, keepForBackward: Bool = false,
                        threads: Int = Parallel.defaultThreads) throws -> (output: Tensor, routing: MoEForward) {
        try check(config)
        let x = try checkRows(x, name: "x")
        var out: Tensor
        do { out = try Tensor(uninitialized: [x.shape[0], hidden]) } catch { throw MoEError.allocationFailed(bytes: x.count * 4) }
        let routing = try withWeights { w in
            try x.withUnsafePointer { px in
                try out.withUnsafeMutableBufferPointer { po in
                    try moeForward(config, weights: w, x: px, tokens: x.shape[0], output: po.baseAddress!,
                                   keepForBackward: keepForBackward, threads: threads)
                }
            }
        }
        return (out, routing)
    }

    /// The gradients of `L = Σ output ⊙ outputGradient + λ_lb · loadBalancingLoss + λ_z · zLoss`
    /// (selection fixed) for a forward run with `keepForBackward` on the same x.
    public func backward(_ x: Tensor, config: MoEConfig, forward: MoEForward, outputGradient: Tensor,
                         loadBalancingWeight: Float = 0, zLossWeight: Float = 0,
                         threads: Int = Parallel.defaultThreads) throws -> Gradients {
        try check(config)
        let x = try checkRows(x, name: "x")
        let dout = try checkRows(outputGradient, name: "output gradient")
        guard dout.shape == x.shape else {
            throw MoEError.shapeMismatch(name: "output gradient", shape: dout.shape, expected: "\(x.shape) (the input's shape)")
        }
        var dx: Tensor, dp: Tensor
        do {
            dx = try Tensor(zeros: x.shape)
            dp = try Tensor(zeros: [layout.count])
        } catch { throw MoEError.allocationFailed(bytes: (x.count + layout.count) * 4) }
        try withWeights { w in
            try x.withUnsafePointer { px in
                try dout.withUnsafePointer { pd in
                    try dx.withUnsafeMutableBufferPointer { pdx in
                        try dp.withUnsafeMutableBufferPointer { pg in
                            _ = try moeBackward(config, weights: w, x: px, tokens: x.shape[0], forward: forward, outputGradient: pd,
                                                inputGradient: pdx.baseAddress!, gradients: layout.gradients(pg.baseAddress!),
                                                loadBalancingWeight: loadBalancingWeight, zLossWeight: zLossWeight, threads: threads)
                        }
                    }
                }
            }
        }
        return Gradients(input: dx, parameters: dp, layout: layout)
    }

    /// The gradients of a backward: the input's, and the parameters' in the layer's layout.
    public struct Gradients: Sendable {
        /// dL/dx `[T, D]`.
        public var input: Tensor
        /// dL/d(parameters), flat, laid out as ``layout``.
        public var parameters: Tensor
        public let layout: MoEParameterLayout

        public var gate: Tensor { view(parameters, layout.gate, [layout.expertSizes.count, layout.hidden]) }
        public func w1(_ e: Int) -> Tensor { view(parameters, layout.w1[e], [layout.expertSizes[e], layout.hidden]) }
        public func w2(_ e: Int) -> Tensor { view(parameters, layout.w2[e], [layout.hidden, layout.expertSizes[e]]) }
        public func w3(_ e: Int) -> Tensor { view(parameters, layout.w3[e], [layout.expertSizes[e], layout.hidden]) }

        /// The parameters' gradients with the weights' safetensors names, in layout order.
        public func namedTensors(prefix: String = "") -> [(name: String, tensor: Tensor)] {
            layout.entries(prefix: prefix).map { ($0.name, view(parameters, $0.offset, $0.shape)) }
        }
    }

    private func check(_ config: MoEConfig) throws {
        try config.validate()
        guard config.hidden == hidden, config.expertSizes == expertSizes else {
            throw MoEError.shapeMismatch(name: "configuration", shape: [config.hidden] + config.expertSizes,
                                         expected: "hidden \(hidden) and expert sizes \(expertSizes) (the layer's)")
        }
    }

    private func checkRows(_ t: Tensor, name: String) throws -> Tensor {
        guard t.rank == 2, t.shape[1] == hidden else {
            throw MoEError.shapeMismatch(name: name, shape: t.shape, expected: "[T, \(hidden)]")
        }
        return t.contiguous()
    }
}

/// A `shape` view of `flat` at `offset`.
private func view(_ flat: Tensor, _ offset: Int, _ shape: [Int]) -> Tensor {
    let n = shape.reduce(1, *)
    // The layout's ranges lie inside the buffer by construction.
    return try! flat.slice(axis: 0, offset..<(offset + n)).reshaped(shape)
}
