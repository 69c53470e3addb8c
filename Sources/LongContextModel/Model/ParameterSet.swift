import AttentionTensor
import Foundation

/// Named float32 tensors in one flat buffer, in a fixed order: a model's weights, their gradients,
/// an optimizer's moments (llm.c's layout: the optimizer, the gradient norm and zeroing are single
/// loops over `scalars`). Names are Hugging Face's (`model.layers.3.self_attn.q_proj.weight`), so
/// a set saves as a safetensors file transformers and PEFT read, and sets of the same layout line
/// up scalar by scalar.
///
/// A reference type: the model, the trainer and the optimizer update one buffer in place. Not for
/// concurrent mutation.
/// Not `Sendable`: one mutable buffer that the trainer, the optimiser and the model's backward
/// write in place without synchronisation. A model holding one (``CausalLM``) is shared read-only
/// across threads; the set itself is not handed to another thread to mutate.
public final class ParameterSet {
    public struct Entry: Sendable, Equatable {
        public let name: String
        public let shape: [Int]
        /// Offset of the first scalar in ``ParameterSet/scalars``.
        public let offset: Int
        public var count: Int { shape.reduce(1, *) }
    }

    public let entries: [Entry]
    private let index: [String: Int]
    /// Every scalar, entry after entry.
    public let scalars: UnsafeMutablePointer<Float>
    public let count: Int

    /// Uninitialised storage for `layout` (names and shapes), through the memory budget.
    public init(layout: [(name: String, shape: [Int])]) throws {
        var entries = [Entry](), index = [String: Int](), total = 0
        for (name, shape) in layout {
            guard index[name] == nil else { throw ModelError.invalidCheckpoint(file: "", reason: "duplicate parameter \(name)") }
            let n = try elementCount(of: shape)
            index[name] = entries.count
            entries.append(Entry(name: name, shape: shape, offset: total))
            let (t, o) = total.addingReportingOverflow(n)
            guard !o else { throw ModelError.tooLarge(quantity: "the parameter count", value: nil, limit: Int.max) }
            total = t
        }
        let (bytes, overflow) = total.multipliedReportingOverflow(by: MemoryLayout<Float>.size)
        guard !overflow else { throw ModelError.tooLarge(quantity: "the bytes of \(total) parameters", value: nil, limit: Int.max) }
        try MemoryBudget.check(bytes)
        self.entries = entries
        self.index = index
        count = total
        scalars = .allocate(capacity: max(1, total))
        scalars.initialize(repeating: 0, count: max(1, total))
    }

    /// Zeros in the layout of `other`.
    public convenience init(zerosLike other: ParameterSet) throws {
        try self.init(layout: other.entries.map { ($0.name, $0.shape) })
    }

    /// A copy of `other`.
    public convenience init(copying other: ParameterSet) throws {
        try self.init(zerosLike: other)
        scalars.update(from: other.scalars, count: count)
    }

    deinit { scalars.deallocate() }

    public var names: [String] { entries.map(\.name) }

    public func entry(_ name: String) -> Entry? { index[name].map { entries[$0] } }

    /// Pointer to the first scalar of `name` (a programming error if absent).
    public func pointer(_ name: String) -> UnsafeMutablePointer<Float> {
        guard let e = entry(name) else { preconditionFailure("no parameter \(name)") }
        return scalars + e.offset
    }

    /// The tensor `name`, copied out.
    public func tensor(_ name: String) throws -> Tensor {
        guard let e = entry(name) else { throw ModelError.unexpectedTensor(name: name, file: nil) }
        return try Tensor(shape: e.shape, scalars: Array(UnsafeBufferPointer(start: scalars + e.offset, count: e.count)))
    }

    /// Copies `tensor` (same shape) into `name`.
    public func set(_ name: String, _ tensor: Tensor) throws {
        guard let e = entry(name) else { throw ModelError.unexpectedTensor(name: name, file: nil) }
        guard tensor.shape == e.shape else {
            throw ModelError.misshapenTensor(name: name, shape: tensor.shape, expected: e.shape, file: nil)
        }
        let c = tensor.contiguous()
        c.withUnsafePointer { (scalars + e.offset).update(from: $0, count: e.count) }
    }

    /// Throws ``ModelError/layoutMismatch(what:found:expected:)`` unless this set has exactly `layout` (the same
    /// names, shapes and offsets, in order), naming `what` and the first entry that differs. The
    /// raw-memory APIs (gradients, optimizer moments, LoRA merges) call it before writing through
    /// another set's offsets.
    public func checkLayout(_ layout: [Entry], _ what: String) throws {
        guard entries != layout else { return }
        if let i = (0..<min(entries.count, layout.count)).first(where: { entries[$0] != layout[$0] }) {
            let (a, b) = (entries[i], layout[i])
            throw ModelError.layoutMismatch(what: "\(what) (entry \(i))", found: "\(a.name) \(a.shape) at offset \(a.offset)",
                                            expected: "\(b.name) \(b.shape) at offset \(b.offset)")
        }
        throw ModelError.layoutMismatch(what: what, found: "\(entries.count) entries", expected: "\(layout.count)")
    }

    public func zero() { scalars.update(repeating: 0, count: count) }

    /// Σ of squares of every scalar, in float64 (the global norm for gradient clipping).
    public func squaredNorm() -> Double {
        var s = 0.0
        for i in 0..<count { s += Double(scalars[i]) * Double(scalars[i]) }
        return s
    }

    /// Whether every scalar is finite.
    public var isFinite: Bool { (0..<count).allSatisfy { scalars[$0].isFinite } }

    /// Every entry as a tensor, in order (for saving).
    public func namedTensors() throws -> [(name: String, tensor: Tensor)] {
        try entries.map { ($0.name, try tensor($0.name)) }
    }
}
