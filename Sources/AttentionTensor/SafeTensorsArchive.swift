import Foundation

/// A validated `.safetensors` file in memory: its entries, its metadata and its data buffer.
///
/// Every entry was checked against the buffer when the archive was read, so the conversions
/// here only fail for reasons of the request (a missing name, a dtype that does not convert, an
/// F64 value Float32 cannot hold, the memory budget), never by reading out of bounds.
public struct SafeTensorsArchive: Sendable {
    /// One tensor's header entry.
    public struct Entry: Equatable, Sendable {
        public let dtype: SafeTensors.DType
        public let shape: [Int]
        /// The tensor's bytes in the data buffer, counted from the buffer's start as the header writes them.
        public let dataOffsets: Range<Int>

        public init(dtype: SafeTensors.DType, shape: [Int], dataOffsets: Range<Int>) {
            self.dtype = dtype
            self.shape = shape
            self.dataOffsets = dataOffsets
        }

        /// Number of elements.
        public var count: Int { shape.reduce(1, *) }
    }

    /// The file's path (or the name given to ``SafeTensors/read(bytes:name:)``), used in errors.
    public let path: String
    /// Tensor names in the order of their data in the buffer (header order among empty tensors
    /// at the same offset).
    public let names: [String]
    /// The header's `__metadata__` (empty when absent).
    public let metadata: [String: String]
    let entries: [String: Entry]
    /// The bytes holding the data buffer, which starts at `bufferStart`.
    let storage: [UInt8]
    let bufferStart: Int

    init(path: String, layout: SafeTensors.Layout, storage: [UInt8], bufferStart: Int) {
        self.path = path
        names = layout.names
        metadata = layout.metadata
        entries = layout.entries
        self.storage = storage
        self.bufferStart = bufferStart
    }

    /// The entry of tensor `name`, or nil when the file has no such tensor.
    public func entry(_ name: String) -> Entry? { entries[name] }

    /// Tensor `name` as a contiguous Float32 tensor, converted from F32, F16, BF16 or F64.
    ///
    /// F16 and BF16 convert exactly (subnormals included; ±infinity and NaN stay ±infinity and
    /// NaN). F64 rounds to nearest; a finite value that would round to infinity is refused with
    /// ``SafeTensorsProblem/outOfFloatRange(tensor:index:value:)`` rather than read as infinity,
    /// while ±infinity and NaN pass through and values below Float32's subnormals round to ±0.
    public func tensor(_ name: String) throws -> Tensor {
        let entry = try lookUp(name)
        guard entry.dtype.isFloat else { throw fail(.unsupportedDType(tensor: name, dtype: entry.dtype)) }
        var t: Tensor
        do { t = try Tensor(uninitialized: entry.shape) } catch {
            throw fail(.overMemoryBudget(tensor: name, bytes: entry.count * MemoryLayout<Float>.stride))
        }
        try t.withUnsafeMutableBufferPointer { out in
            try withBytes(of: entry) { src in try convert(src, dtype: entry.dtype, into: out, name: name) }
        }
        return t
    }

    /// Every tensor, in ``names`` order, each as ``tensor(_:)`` converts it. The dtypes and the
    /// total Float32 size are checked against ``MemoryBudget`` before the first conversion, so a
    /// file too large to load fails up front rather than after filling most of memory.
    public func tensors() throws -> [(name: String, tensor: Tensor)] {
        var total = 0
        for name in names {
            let entry = try lookUp(name)
            guard entry.dtype.isFloat else { throw fail(.unsupportedDType(tensor: name, dtype: entry.dtype)) }
            // Each count is at most the buffer's size in bytes, so the sum cannot overflow.
            total += entry.count * MemoryLayout<Float>.stride
        }
        do { try MemoryBudget.check(total) } catch { throw fail(.overMemoryBudget(tensor: nil, bytes: total)) }
        return try names.map { ($0, try tensor($0)) }
    }

    /// Tensor `name`'s elements in row-major order as `Int`, from I8, I16, I32, I64, U8, U16,
    /// U32, U64 (values above `Int.max` are refused) or BOOL (0 for a zero byte, else 1).
    public func integers(_ name: String) throws -> [Int] {
        let entry = try lookUp(name)
        guard entry.dtype.isInteger else { throw fail(.notIntegers(tensor: name, dtype: entry.dtype)) }
        let n = entry.count
        do { try MemoryBudget.check(n * MemoryLayout<Int>.stride) } catch {
            throw fail(.overMemoryBudget(tensor: name, bytes: n * MemoryLayout<Int>.stride))
        }
        return try withBytes(of: entry) { src in
            func load<T: FixedWidthInteger>(_: T.Type) -> [Int] {
                (0..<n).map { Int(T(littleEndian: src.loadUnaligned(fromByteOffset: $0 * MemoryLayout<T>.size, as: T.self))) }
            }
            switch entry.dtype {
            case .bool: return (0..<n).map { src[$0] == 0 ? 0 : 1 }
            case .u8: return load(UInt8.self)
            case .i8: return load(Int8.self)
            case .i16: return load(Int16.self)
            case .u16: return load(UInt16.self)
            case .i32: return load(Int32.self)
            case .u32: return load(UInt32.self)
            case .i64: return load(Int64.self)
            case .u64:
                return try (0..<n).map { i in
                    let v = UInt64(littleEndian: src.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))
                    guard let x = Int(exactly: v) else { throw fail(.outOfIntRange(tensor: name, index: i, value: v)) }
                    return x
                }
            default: throw fail(.notIntegers(tensor: name, dtype: entry.dtype))
            }
        }
    }

    // MARK: - Helpers

    private func fail(_ p: SafeTensorsProblem) -> SafeTensorsError { SafeTensorsError(path: path, problem: p) }

    private func lookUp(_ name: String) throws -> Entry {
        guard let entry = entries[name] else { throw fail(.tensorNotFound(name)) }
        return entry
    }

    /// The entry's bytes. Its range was checked against the buffer when the archive was read;
    /// the slice below checks it again, so a bug here traps instead of reading out of bounds.
    private func withBytes<R>(of entry: Entry, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let range = (bufferStart + entry.dataOffsets.lowerBound)..<(bufferStart + entry.dataOffsets.upperBound)
        return try storage[range].withUnsafeBytes(body)
    }

    private func convert(_ src: UnsafeRawBufferPointer, dtype: SafeTensors.DType, into out: UnsafeMutableBufferPointer<Float>,
                         name: String) throws {
        let n = out.count
        precondition(src.count * 8 == n * dtype.bits, "entry checked against its dtype and shape when read")
        switch dtype {
        case .f32:
            // Little-endian bytes are the host's Float32 layout on every platform this package builds for.
            if let dst = out.baseAddress, let s = src.baseAddress { memcpy(dst, s, n * 4) }
        case .f16:
            for i in 0..<n {
                out[i] = Float(Float16(bitPattern: UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))))
            }
        case .bf16:
            // BF16 is the top half of a Float32: widening is a shift, exact for every value.
            for i in 0..<n {
                out[i] = Float(bitPattern: UInt32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16)
            }
        case .f64:
            for i in 0..<n {
                let x = Double(bitPattern: UInt64(littleEndian: src.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)))
                let f = Float(x)
                if f.isInfinite && x.isFinite { throw fail(.outOfFloatRange(tensor: name, index: i, value: x)) }
                out[i] = f
            }
        default:
            throw fail(.unsupportedDType(tensor: name, dtype: dtype))
        }
    }
}
