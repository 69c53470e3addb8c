/// A Float32 tensor: a shape, row-major strides and copy-on-write storage.
///
/// `Tensor` is a value: copies share storage until one of them is mutated. Views
/// (``slice(axis:_:)``, ``transposed()``, the batch/head/row helpers) share storage too and carry
/// their own offset and strides, so taking one never copies. Kernels read views through
/// ``withUnsafePointer(_:)`` with ``strides``; a view whose last stride is 1 can be handed to BLAS
/// with its row stride as leading dimension.
public struct Tensor: Sendable {
    /// Size of each axis.
    public internal(set) var shape: [Int]
    /// Elements between consecutive indices of each axis.
    public internal(set) var strides: [Int]
    /// Offset of element `[0, 0, ...]` in the storage.
    var offset: Int
    var storage: TensorStorage

    init(storage: TensorStorage, shape: [Int], strides: [Int], offset: Int) {
        self.storage = storage
        self.shape = shape
        self.strides = strides
        self.offset = offset
    }

    /// An uninitialised contiguous tensor (every element must be written before it is read).
    /// Throws ``TensorError/invalidShape(_:)`` or ``TensorError/allocationFailed(bytes:)``.
    ///
    /// `hugePages` asks Linux for transparent huge pages (2 MiB alignment, `MADV_HUGEPAGE`) when the
    /// tensor holds at least 2 MiB: for large buffers streamed over and over, such as a KV cache.
    /// Copy-on-write copies of the storage ask again.
    public init(uninitialized shape: [Int], hugePages: Bool = false) throws {
        let n = try elementCount(of: shape)
        try MemoryBudget.check(n * MemoryLayout<Float>.stride)
        guard let storage = TensorStorage(uninitializedCount: n, hugePages: hugePages) else {
            throw TensorError.allocationFailed(bytes: n * MemoryLayout<Float>.stride)
        }
        self.init(storage: storage, shape: shape, strides: rowMajorStrides(shape), offset: 0)
    }

    /// A contiguous tensor of zeros.
    public init(zeros shape: [Int]) throws {
        try self.init(uninitialized: shape)
        storage.pointer.initialize(repeating: 0, count: storage.count)
    }

    /// A contiguous tensor with every element `value`.
    public init(filling value: Float, _ shape: [Int]) throws {
        try self.init(uninitialized: shape)
        storage.pointer.initialize(repeating: value, count: storage.count)
    }

    /// A contiguous tensor holding `scalars` in row-major order.
    public init(shape: [Int], scalars: [Float]) throws {
        let n = try elementCount(of: shape)
        guard n == scalars.count else {
            throw TensorError.shapeMismatch(operation: "Tensor(shape:scalars:)", shapes: [shape, [scalars.count]],
                                            expected: "\(n) scalars")
        }
        try self.init(uninitialized: shape)
        scalars.withUnsafeBufferPointer { storage.pointer.update(from: $0.baseAddress!, count: n) }
    }

    /// Number of axes.
    public var rank: Int { shape.count }
    /// Number of elements.
    public var count: Int { shape.reduce(1, *) }
    /// Whether the elements are laid out densely in row-major order.
    public var isContiguous: Bool {
        var expected = 1
        for i in stride(from: rank - 1, through: 0, by: -1) where shape[i] != 1 {
            if strides[i] != expected { return false }
            expected *= shape[i]
        }
        return true
    }

    /// Element access by full index (bounds-checked; for tests and small work, not hot loops).
    public subscript(_ index: Int...) -> Float {
        get { storage.pointer[linearOffset(index)] }
        set {
            makeUnique()
            storage.pointer[linearOffset(index)] = newValue
        }
    }

    private func linearOffset(_ index: [Int]) -> Int {
        precondition(index.count == rank, "index rank \(index.count) for a rank-\(rank) tensor")
        var o = offset
        for i in 0..<rank {
            precondition(index[i] >= 0 && index[i] < shape[i], "index \(index[i]) out of range 0..<\(shape[i]) on axis \(i)")
            o += index[i] * strides[i]
        }
        return o
    }

    /// The elements in row-major order.
    public var scalars: [Float] {
        let c = contiguous()
        return Array(UnsafeBufferPointer(start: c.storage.pointer + c.offset, count: c.count))
    }

    /// This tensor if contiguous, otherwise a contiguous copy.
    public func contiguous() -> Tensor {
        if isContiguous { return self }
        // A view's element count is at most its storage's, so this allocation cannot be absurd.
        guard let copy = try? Tensor(uninitialized: shape) else {
            preconditionFailure("allocation of a copy of an existing view failed")
        }
        copyElements(into: copy.storage.pointer)
        return copy
    }

    /// Writes the elements in row-major order to `dst`.
    func copyElements(into dst: UnsafeMutablePointer<Float>) {
        guard count > 0 else { return }
        if rank == 0 { dst[0] = storage.pointer[offset]; return }
        let src = storage.pointer
        let last = rank - 1
        let inner = shape[last], innerStride = strides[last]
        var index = [Int](repeating: 0, count: rank)
        var out = dst
        while true {
            var base = offset
            for i in 0..<last { base += index[i] * strides[i] }
            if innerStride == 1 {
                out.update(from: src + base, count: inner)
            } else {
                for j in 0..<inner { out[j] = src[base + j * innerStride] }
            }
            out += inner
            if !advance(&index, over: shape, axes: last) { break }
        }
    }

    /// Makes the storage unique and contiguous before a mutation (the copy-on-write step).
    mutating func makeUnique() {
        if isKnownUniquelyReferenced(&storage), isContiguous, offset == 0, count == storage.count { return }
        let copy = Tensor(copying: self)
        self = copy
    }

    private init(copying other: Tensor) {
        guard let storage = TensorStorage(uninitializedCount: other.count, hugePages: other.storage.hugePages) else {
            preconditionFailure("allocation of a copy of an existing tensor failed")
        }
        other.copyElements(into: storage.pointer)
        self.init(storage: storage, shape: other.shape, strides: rowMajorStrides(other.shape), offset: 0)
    }

    /// Read access to element `[0, 0, ...]`; other elements are reached through ``strides``.
    public func withUnsafePointer<R>(_ body: (UnsafePointer<Float>) throws -> R) rethrows -> R {
        try withExtendedLifetime(storage) { try body(UnsafePointer(storage.pointer + offset)) }
    }

    /// Write access to a contiguous, uniquely owned buffer of ``count`` elements (copied first if
    /// shared or strided).
    public mutating func withUnsafeMutableBufferPointer<R>(
        _ body: (UnsafeMutableBufferPointer<Float>) throws -> R
    ) rethrows -> R {
        makeUnique()
        return try withExtendedLifetime(storage) {
            try body(UnsafeMutableBufferPointer(start: storage.pointer + offset, count: count))
        }
    }

    /// The same elements with a new shape (a view when contiguous, else a copy first).
    public func reshaped(_ newShape: [Int]) throws -> Tensor {
        guard try elementCount(of: newShape) == count else {
            throw TensorError.shapeMismatch(operation: "reshape", shapes: [shape, newShape], expected: "the same element count")
        }
        let c = contiguous()
        return Tensor(storage: c.storage, shape: newShape, strides: rowMajorStrides(newShape), offset: c.offset)
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String { "Tensor(shape: \(shape))" }
}
