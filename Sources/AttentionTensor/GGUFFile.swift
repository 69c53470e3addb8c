import Foundation
#if canImport(Glibc)
import Glibc
#endif

#if _endian(big)
#error("the GGUF reader reads little-endian values in place; add byte swapping for big-endian hosts")
#endif

/// One tensor of a GGUF file, as its tensor-info entry describes it (checked against the file).
public struct GGUFTensorInfo: Sendable, Equatable {
    public var name: String
    /// Dimensions in GGUF order, innermost (contiguous) first: a [out, in] matrix is [in, out].
    public var shape: [Int]
    public var type: GGMLType
    /// Absolute byte offset of the data in the file.
    public var offset: Int
    public var byteCount: Int

    public init(name: String, shape: [Int], type: GGMLType, offset: Int, byteCount: Int) {
        self.name = name
        self.shape = shape
        self.type = type
        self.offset = offset
        self.byteCount = byteCount
    }

    /// The shape outermost first, as NumPy and PyTorch list it.
    public var rowMajorShape: [Int] { shape.reversed() }
    public var elementCount: Int { shape.reduce(1, *) }
    /// Elements per row: the innermost dimension (1 for a tensor of no dimensions).
    public var rowLength: Int { shape.first ?? 1 }
    /// Rows: the product of the outer dimensions.
    public var rowCount: Int { shape.dropFirst().reduce(1, *) }
    /// Bytes per row (a row is a whole number of blocks: the reader checks it).
    public var bytesPerRow: Int { rowLength / type.blockSize * type.typeSize }
}

/// A GGUF file (llama.cpp's format, versions 2 and 3), memory-mapped read-only.
///
/// Layout: "GGUF", u32 version, u64 tensor count, u64 metadata count; the metadata (key string,
/// u32 value type, value); the tensor infos (name, u32 dimension count, u64 dimensions innermost
/// first, u32 ggml type, u64 offset into the data section); padding to `general.alignment`
/// (default 32); the data section. Strings are a u64 byte length and UTF-8 bytes, arrays a u32
/// element type, a u64 count and the elements; everything little-endian.
///
/// Everything is checked against the file's size before anything the file's numbers ask for is
/// allocated: counts and lengths against the bytes left, dimensions (at most ``maxDimensions``)
/// against overflow, each tensor's type id, row length (whole blocks), offset (aligned) and extent
/// (inside the file); names and keys must be unique and valid UTF-8. Failures are ``GGUFError``s
/// naming the file and what is wrong. After `init` the object is immutable; tensor bytes point
/// into the mapping and stay valid while the object lives (hence `@unchecked Sendable`: the mapping
/// is read-only and every property a `let`).
public final class GGUFFile: @unchecked Sendable {
    /// The most dimensions a tensor may have (ggml's GGML_MAX_DIMS).
    public static let maxDimensions = 4
    /// How deep arrays of arrays may nest (llama.cpp reads none; gguf-py writes them).
    public static let maxArrayNesting = 8
    public static let defaultAlignment = 32

    public let path: String
    public let version: Int
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    /// The tensors in file order.
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Absolute offset of the data section.
    public let dataStart: Int
    public let fileSize: Int

    private let base: UnsafeRawPointer?
    private let mapped: Bool
    private let index: [String: Int]

    /// Maps and parses `path`.
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw GGUFError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw GGUFError.cannotOpen(path: path, reason: String(cString: strerror(errno))) }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw GGUFError.cannotOpen(path: path, reason: "not a regular file") }
        let size = Int(st.st_size)
        var pointer: UnsafeRawPointer?
        if size > 0 {
            let m = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
            guard let m, m != MAP_FAILED else {
                throw GGUFError.cannotOpen(path: path, reason: "mmap failed: " + String(cString: strerror(errno)))
            }
            pointer = UnsafeRawPointer(m)
        }
        do {
            let parsed = try GGUFParser.parse(UnsafeRawBufferPointer(start: pointer, count: size), path: path)
            (version, metadata, metadataKeys, tensors, alignment, dataStart, index) =
                (parsed.version, parsed.metadata, parsed.keys, parsed.tensors, parsed.alignment, parsed.dataStart, parsed.index)
        } catch {
            if let pointer { munmap(UnsafeMutableRawPointer(mutating: pointer), size) }
            throw error
        }
        fileSize = size
        base = pointer
        mapped = true
    }

    /// Parses a GGUF file held in memory (copied; `name` labels errors).
    public init(bytes: [UInt8], name: String = "<memory>") throws {
        path = name
        let size = bytes.count
        let copy = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 64)
        bytes.withUnsafeBytes { if let b = $0.baseAddress { copy.copyMemory(from: b, byteCount: size) } }
        do {
            let parsed = try GGUFParser.parse(UnsafeRawBufferPointer(start: copy, count: size), path: name)
            (version, metadata, metadataKeys, tensors, alignment, dataStart, index) =
                (parsed.version, parsed.metadata, parsed.keys, parsed.tensors, parsed.alignment, parsed.dataStart, parsed.index)
        } catch {
            copy.deallocate()
            throw error
        }
        fileSize = size
        base = UnsafeRawPointer(copy)
        mapped = false
    }

    deinit {
        guard let base else { return }
        if mapped { munmap(UnsafeMutableRawPointer(mutating: base), fileSize) } else { UnsafeMutableRawPointer(mutating: base).deallocate() }
    }

    // MARK: - Tensors

    public func tensor(named name: String) -> GGUFTensorInfo? { index[name].map { tensors[$0] } }
    public func hasTensor(_ name: String) -> Bool { index[name] != nil }

    /// The tensor's bytes inside the mapping, valid while this object lives. (A zero-byte tensor
    /// gives an empty buffer whose base address may still be non-nil.)
    public func bytes(of info: GGUFTensorInfo) -> UnsafeRawBufferPointer {
        precondition(info.offset >= 0 && info.byteCount >= 0 && info.offset <= fileSize - info.byteCount,
                     "tensor info \(info.name) does not describe bytes of \(path)")
        guard let base else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base + info.offset, count: info.byteCount)
    }

    public func withBytes<R>(of info: GGUFTensorInfo, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(bytes(of: info)) }
    }

    /// The whole tensor as Float32, in file order (innermost dimension fastest): for small
    /// tensors and tests. Checked against ``MemoryBudget``.
    public func dequantize(_ info: GGUFTensorInfo) throws -> [Float] {
        guard info.type.isDequantizable else { throw GGUFError.notDequantizable(path: path, tensor: info.name, type: info.type) }
        let n = info.elementCount
        let (bytes, overflow) = n.multipliedReportingOverflow(by: 4)
        do { try MemoryBudget.check(overflow ? Int.max : bytes) } catch {
            throw GGUFError.overMemoryBudget(path: path, tensor: info.name, bytes: overflow ? Int.max : bytes)
        }
        return try withExtendedLifetime(self) {
            let source = self.bytes(of: info)
            return try [Float](unsafeUninitializedCapacity: n) { out, initialized in
                if n > 0, let s = source.baseAddress, let o = out.baseAddress { try info.type.dequantize(s, count: n, into: o) }
                initialized = n
            }
        }
    }

    /// Dequantises rows `rows` (rows are the innermost dimension; ``GGUFTensorInfo/rowCount`` of
    /// them) into `into`, which must hold `rows.count × rowLength` floats.
    public func dequantizeRows(_ info: GGUFTensorInfo, rows: Range<Int>, into: UnsafeMutablePointer<Float>) throws {
        guard info.type.isDequantizable else { throw GGUFError.notDequantizable(path: path, tensor: info.name, type: info.type) }
        guard rows.lowerBound >= 0, rows.upperBound <= info.rowCount else {
            throw GGUFError.rowsOutOfRange(path: path, tensor: info.name, rows: rows, rowCount: info.rowCount)
        }
        guard !rows.isEmpty, info.rowLength > 0 else { return }
        let source = bytes(of: info)
        try withExtendedLifetime(self) {
            try info.type.dequantize(source.baseAddress! + rows.lowerBound * info.bytesPerRow, count: rows.count * info.rowLength, into: into)
        }
    }

    // MARK: - Metadata

    /// The value of `key` as `T`, nil when absent, wrongType when present otherwise.
    private func typed<T>(_ key: String, _ expected: String, _ get: (GGUFValue) throws -> T?) throws -> T? {
        guard let v = metadata[key] else { return nil }
        guard let t = try get(v) else { throw GGUFError.wrongType(path: path, key: key, found: v.typeName, expected: expected) }
        return t
    }

    public func string(_ key: String) throws -> String? {
        try typed(key, "string") { if case .string(let s) = $0 { s } else { nil } }
    }

    /// Any integer type, checked to fit Int.
    public func int(_ key: String) throws -> Int? {
        try typed(key, "an integer") { v in
            guard v.isInteger else { return nil }
            guard let i = v.integer else { throw GGUFError.valueOutOfRange(path: path, key: key, value: "\(v)", expected: "Int") }
            return i
        }
    }

    /// float32, float64 or any integer type.
    public func double(_ key: String) throws -> Double? {
        try typed(key, "a number") { v in
            switch v {
            case .float32(let x): Double(x)
            case .float64(let x): x
            case .uint64(let x): Double(x)
            case .int64(let x): Double(x)
            default: v.integer.map(Double.init)
            }
        }
    }

    public func bool(_ key: String) throws -> Bool? {
        try typed(key, "bool") { if case .bool(let b) = $0 { b } else { nil } }
    }

    public func strings(_ key: String) throws -> [String]? {
        try typed(key, "array of string") { v in
            switch v {
            case .array(.string(let s)): s
            case .array(let a) where a.count == 0: []
            default: nil
            }
        }
    }

    /// An array of float32 (or float64, rounded to Float).
    public func floats(_ key: String) throws -> [Float]? {
        try typed(key, "array of float32") { v in
            switch v {
            case .array(.float32(let a)): a
            case .array(.float64(let a)): a.map { Float($0) }
            case .array(let a) where a.count == 0: []
            default: nil
            }
        }
    }

    /// An array of any integer type, each element checked to fit Int32.
    public func int32s(_ key: String) throws -> [Int32]? {
        try typed(key, "array of integers") { v in
            switch v {
            case .array(.int32(let a)): return a
            case .array(let a) where a.count == 0: return []
            case .array(let a):
                guard let ints = a.integers else { return nil }
                let values: [Int]
                switch ints {
                case .success(let x): values = x
                case .failure(let e):
                    throw GGUFError.valueOutOfRange(path: path, key: key, value: "\(e.value) (element \(e.index))", expected: "Int32")
                }
                var out = [Int32]()
                out.reserveCapacity(values.count)
                for (i, x) in values.enumerated() {
                    guard let y = Int32(exactly: x) else {
                        throw GGUFError.valueOutOfRange(path: path, key: key, value: "\(x) (element \(i))", expected: "Int32")
                    }
                    out.append(y)
                }
                return out
            default: return nil
            }
        }
    }

    public func requiredString(_ key: String) throws -> String {
        guard let s = try string(key) else { throw GGUFError.missingKey(path: path, key: key) }
        return s
    }

    public func requiredInt(_ key: String) throws -> Int {
        guard let i = try int(key) else { throw GGUFError.missingKey(path: path, key: key) }
        return i
    }
}

// MARK: - Parsing

/// The one pass over a file's header. Every read is bounds-checked by the cursor.
enum GGUFParser {
    struct Parsed {
        var version: Int
        var metadata: [String: GGUFValue]
        var keys: [String]
        var tensors: [GGUFTensorInfo]
        var alignment: Int
        var dataStart: Int
        var index: [String: Int]
    }

    struct Cursor {
        let base: UnsafeRawPointer?
        let size: Int
        var pos = 0
        let path: String

        var remaining: Int { size - pos }

        /// Reads a fixed-size little-endian value (`what` names it in errors).
        @inline(__always)
        mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
            let n = MemoryLayout<T>.size
            guard n <= remaining, let base else { throw GGUFError.truncated(path: path, what: what(), offset: pos) }
            let v = base.loadUnaligned(fromByteOffset: pos, as: T.self)
            pos += n
            return T(littleEndian: v)
        }

        /// A u64 length and that many UTF-8 bytes.
        mutating func string(_ what: @autoclosure () -> String) throws -> String {
            let start = pos
            let n = try read(UInt64.self, what())
            guard n <= UInt64(remaining) else { throw GGUFError.absurdLength(path: path, what: what(), length: n, offset: start) }
            let count = Int(n)
            guard count > 0 else { return "" }
            let bytes = UnsafeRawBufferPointer(start: base! + pos, count: count)
            guard let s = String(validating: bytes.bindMemory(to: UInt8.self), as: UTF8.self) else {
                throw GGUFError.invalidUTF8(path: path, what: what(), offset: start)
            }
            pos += count
            return s
        }

        /// `count` fixed-size values copied out in one go (the caller checked the count).
        mutating func array<T>(_: T.Type, _ count: Int) -> [T] {
            let n = count * MemoryLayout<T>.stride
            let out = [T](unsafeUninitializedCapacity: count) { buffer, initialized in
                if n > 0 { UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: base! + pos, byteCount: n) }
                initialized = count
            }
            pos += n
            return out
        }
    }

    static func parse(_ file: UnsafeRawBufferPointer, path: String) throws -> Parsed {
        var c = Cursor(base: file.baseAddress, size: file.count, path: path)
        guard c.remaining >= 4 else { throw GGUFError.truncated(path: path, what: "the magic 'GGUF'", offset: 0) }
        let magic = Array(file.prefix(4))
        guard magic == Array("GGUF".utf8) else { throw GGUFError.badMagic(path: path, found: magic) }
        c.pos = 4
        let version = try c.read(UInt32.self, "the version")
        guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(path: path, version: version) }
        let tensorCount = try c.read(UInt64.self, "the tensor count")
        let kvCount = try c.read(UInt64.self, "the metadata count")
        // The smallest metadata pair: an empty key, a type and a one-byte value (13 bytes); the
        // smallest tensor info: an empty name, no dimensions, type and offset (24 bytes).
        guard kvCount <= UInt64(c.remaining / 13) else {
            throw GGUFError.absurdCount(path: path, what: "metadata", count: kvCount, remaining: c.remaining)
        }
        guard tensorCount <= UInt64(c.remaining / 24), Int(kvCount) * 13 + Int(tensorCount) * 24 <= c.remaining else {
            throw GGUFError.absurdCount(path: path, what: "tensor", count: tensorCount, remaining: c.remaining)
        }

        var metadata = [String: GGUFValue](minimumCapacity: Int(kvCount))
        var keys = [String]()
        keys.reserveCapacity(Int(kvCount))
        for i in 0..<Int(kvCount) {
            let key = try c.string("the key of metadata pair \(i)")
            let rawType = try c.read(UInt32.self, "the value type of \(gguf_quoted(key))")
            guard let type = GGUFValueType(rawValue: rawType) else {
                throw GGUFError.unknownValueType(path: path, key: key, type: rawType)
            }
            let value = try readValue(type, &c, key: key)
            guard metadata.updateValue(value, forKey: key) == nil else { throw GGUFError.duplicateKey(path: path, key: key) }
            keys.append(key)
        }

        var alignment = GGUFFile.defaultAlignment
        if let a = metadata["general.alignment"] {
            guard a.isInteger, let n = a.integer, n > 0, n <= 1 << 30, n & (n - 1) == 0 else {
                throw GGUFError.badAlignment(path: path, found: "\(a)")
            }
            alignment = n
        }

        struct Pending { var name: String; var shape: [Int]; var dims: [UInt64]; var type: GGMLType; var offset: UInt64; var bytes: Int }
        var pending = [Pending]()
        pending.reserveCapacity(Int(tensorCount))
        var index = [String: Int](minimumCapacity: Int(tensorCount))
        for i in 0..<Int(tensorCount) {
            let name = try c.string("the name of tensor \(i)")
            guard index[name] == nil else { throw GGUFError.duplicateTensor(path: path, tensor: name) }
            let rank = try c.read(UInt32.self, "the dimension count of tensor \(gguf_quoted(name))")
            guard rank <= UInt32(GGUFFile.maxDimensions) else {
                throw GGUFError.tooManyDimensions(path: path, tensor: name, count: rank)
            }
            var dims = [UInt64]()
            for d in 0..<Int(rank) { dims.append(try c.read(UInt64.self, "dimension \(d) of tensor \(gguf_quoted(name))")) }
            let rawType = try c.read(UInt32.self, "the type of tensor \(gguf_quoted(name))")
            guard let type = GGMLType(rawValue: rawType) else { throw GGUFError.unknownTensorType(path: path, tensor: name, id: rawType) }
            let offset = try c.read(UInt64.self, "the data offset of tensor \(gguf_quoted(name))")
            // Every dimension within Int and the product (and its bytes) without overflow.
            var shape = [Int]()
            var count = 1
            for d in dims {
                guard let n = Int(exactly: d) else { throw GGUFError.overflowingShape(path: path, tensor: name, dims: dims) }
                let (p, o) = count.multipliedReportingOverflow(by: n)
                guard !o else { throw GGUFError.overflowingShape(path: path, tensor: name, dims: dims) }
                shape.append(n)
                count = p
            }
            let rowLength = shape.first ?? 1
            guard rowLength % type.blockSize == 0 else {
                throw GGUFError.notWholeBlocks(path: path, tensor: name, type: type, count: rowLength)
            }
            guard let bytes = type.byteCount(elements: count) else { throw GGUFError.overflowingShape(path: path, tensor: name, dims: dims) }
            index[name] = i
            pending.append(Pending(name: name, shape: shape, dims: dims, type: type, offset: offset, bytes: bytes))
        }

        // The data section starts at the next multiple of the alignment (possibly past the end of
        // a file with no tensor bytes).
        let dataStart = (c.pos + alignment - 1) / alignment * alignment
        var tensors = [GGUFTensorInfo]()
        tensors.reserveCapacity(pending.count)
        for t in pending {
            guard t.offset % UInt64(alignment) == 0 else {
                throw GGUFError.misaligned(path: path, tensor: t.name, offset: t.offset, alignment: alignment)
            }
            guard t.offset <= UInt64(file.count), dataStart <= file.count, Int(t.offset) <= file.count - dataStart,
                  t.bytes <= file.count - dataStart - Int(t.offset) else {
                throw GGUFError.tensorOutOfBounds(path: path, tensor: t.name, offset: t.offset, byteCount: t.bytes,
                                                  dataStart: dataStart, fileSize: file.count)
            }
            tensors.append(GGUFTensorInfo(name: t.name, shape: t.shape, type: t.type, offset: dataStart + Int(t.offset), byteCount: t.bytes))
        }
        return Parsed(version: Int(version), metadata: metadata, keys: keys, tensors: tensors, alignment: alignment,
                      dataStart: dataStart, index: index)
    }

    static func readValue(_ type: GGUFValueType, _ c: inout Cursor, key: String) throws -> GGUFValue {
        func what() -> String { "the value of \(gguf_quoted(key))" }
        switch type {
        case .uint8: return .uint8(try c.read(UInt8.self, what()))
        case .int8: return .int8(try c.read(Int8.self, what()))
        case .uint16: return .uint16(try c.read(UInt16.self, what()))
        case .int16: return .int16(try c.read(Int16.self, what()))
        case .uint32: return .uint32(try c.read(UInt32.self, what()))
        case .int32: return .int32(try c.read(Int32.self, what()))
        case .uint64: return .uint64(try c.read(UInt64.self, what()))
        case .int64: return .int64(try c.read(Int64.self, what()))
        case .float32: return .float32(Float(bitPattern: try c.read(UInt32.self, what())))
        case .float64: return .float64(Double(bitPattern: try c.read(UInt64.self, what())))
        case .bool:
            let at = c.pos
            let b = try c.read(UInt8.self, what())
            guard b <= 1 else { _ = at; throw GGUFError.invalidBool(path: c.path, key: key, value: b) }
            return .bool(b == 1)
        case .string: return .string(try c.string(what()))
        case .array: return .array(try readArray(&c, key: key, depth: 1))
        }
    }

    static func readArray(_ c: inout Cursor, key: String, depth: Int) throws -> GGUFArray {
        guard depth <= GGUFFile.maxArrayNesting else { throw GGUFError.nestingTooDeep(path: c.path, key: key) }
        let what = "the array \(gguf_quoted(key))"
        let rawType = try c.read(UInt32.self, "the element type of \(what)")
        guard let type = GGUFValueType(rawValue: rawType) else { throw GGUFError.unknownValueType(path: c.path, key: key, type: rawType) }
        let n = try c.read(UInt64.self, "the length of \(what)")
        guard n <= UInt64(c.remaining / type.minimumSize) else {
            throw GGUFError.absurdCount(path: c.path, what: "element of \(what)", count: n, remaining: c.remaining)
        }
        let count = Int(n)
        switch type {
        case .uint8: return .uint8(c.array(UInt8.self, count))
        case .int8: return .int8(c.array(Int8.self, count))
        case .uint16: return .uint16(c.array(UInt16.self, count))
        case .int16: return .int16(c.array(Int16.self, count))
        case .uint32: return .uint32(c.array(UInt32.self, count))
        case .int32: return .int32(c.array(Int32.self, count))
        case .uint64: return .uint64(c.array(UInt64.self, count))
        case .int64: return .int64(c.array(Int64.self, count))
        case .float32: return .float32(c.array(Float.self, count))
        case .float64: return .float64(c.array(Double.self, count))
        case .bool:
            let raw = c.array(UInt8.self, count)
            if let bad = raw.first(where: { $0 > 1 }) { throw GGUFError.invalidBool(path: c.path, key: key, value: bad) }
            return .bool(raw.map { $0 == 1 })
        case .string:
            var out = [String]()
            out.reserveCapacity(count)
            for i in 0..<count { out.append(try c.string("element \(i) of \(what)")) }
            return .string(out)
        case .array:
            var out = [GGUFArray]()
            out.reserveCapacity(count)
            for _ in 0..<count { out.append(try readArray(&c, key: key, depth: depth + 1)) }
            return .array(out)
        }
    }
}
