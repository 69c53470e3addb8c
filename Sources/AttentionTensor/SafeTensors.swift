import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Hugging Face `.safetensors` files: an 8-byte little-endian header length N, N bytes of UTF-8
/// JSON naming each tensor's dtype, shape and `data_offsets` (plus an optional `__metadata__`
/// object of strings), then the data buffer the offsets point into, little-endian and row-major.
///
/// Reading checks the whole header before allocating anything its numbers ask for: the length
/// against the file and a 100 MB cap, every shape against overflow, every byte range against the
/// buffer, dtype and shape, and the ranges against each other (no overlap, no gap, nothing after
/// the last one, as the reference implementation requires). The file is then held in memory and
/// each ``SafeTensorsArchive/tensor(_:)`` converts one tensor to Float32; no conversion allocates
/// more than twice the bytes it reads (F16 and BF16 widen). Every failure is a
/// ``SafeTensorsError`` naming the file and, where there is one, the tensor.
///
/// The reader is stricter than the reference implementation in three ways, each refusing a file
/// that can mean two things or that no writer produces: a tensor name (or an entry's field)
/// given twice, where the reference silently keeps one; fields other than `dtype`, `shape` and
/// `data_offsets`, which it ignores; and shapes of more than ``maxRank`` dimensions.
///
/// Writing (``write(_:metadata:to:)``) produces Float32 files the `safetensors` Python package
/// reads, through a temporary file renamed into place.
public enum SafeTensors {
    /// The largest header accepted, as in the reference implementation (`MAX_HEADER_SIZE`).
    public static let maxHeaderBytes = 100_000_000

    /// The most dimensions a shape may have: NumPy's limit (64 since NumPy 2), so every file
    /// NumPy can load is accepted, while a shape of millions of 1s cannot turn a header into a
    /// many-times-larger allocation here and in every tensor's strides.
    public static let maxRank = 64

    /// The element types of the format (as of safetensors 0.8). Sub-byte types (F4, F6_*) are
    /// laid out and checked like the reference implementation does: a tensor's bits must fill
    /// whole bytes. Anything else is an unknown dtype, and the file is refused, since its
    /// layout cannot be verified.
    public enum DType: String, Sendable, CaseIterable {
        case bool = "BOOL", f4 = "F4", f6e2m3 = "F6_E2M3", f6e3m2 = "F6_E3M2"
        case u8 = "U8", i8 = "I8", f8e5m2 = "F8_E5M2", f8e4m3 = "F8_E4M3", f8e8m0 = "F8_E8M0"
        case i16 = "I16", u16 = "U16", f16 = "F16", bf16 = "BF16"
        case i32 = "I32", u32 = "U32", f32 = "F32"
        case i64 = "I64", u64 = "U64", f64 = "F64", c64 = "C64"

        /// Bits per element.
        public var bits: Int {
            switch self {
            case .f4: 4
            case .f6e2m3, .f6e3m2: 6
            case .bool, .u8, .i8, .f8e5m2, .f8e4m3, .f8e8m0: 8
            case .i16, .u16, .f16, .bf16: 16
            case .i32, .u32, .f32: 32
            case .i64, .u64, .f64, .c64: 64
            }
        }

        /// Whether ``SafeTensorsArchive/tensor(_:)`` converts it to Float32.
        public var isFloat: Bool { [.f32, .f16, .bf16, .f64].contains(self) }
        /// Whether ``SafeTensorsArchive/integers(_:)`` reads it (BOOL as 0 and 1).
        public var isInteger: Bool { [.bool, .u8, .i8, .i16, .u16, .i32, .u32, .i64, .u64].contains(self) }
    }

    /// Reads and validates a `.safetensors` file. The header is read and checked first; the data
    /// buffer is read into memory only once every entry has been found consistent with it (and
    /// its size is within ``MemoryBudget``).
    public static func read(_ path: String) throws -> SafeTensorsArchive {
        func fail(_ p: SafeTensorsProblem) -> SafeTensorsError { SafeTensorsError(path: path, problem: p) }
        // O_NONBLOCK so that a FIFO named by mistake does not block the open; regular files ignore it.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw fail(.cannotOpen(String(cString: strerror(errno)))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { throw fail(.cannotOpen("not a regular file")) }
        let fileSize = Int(st.st_size)
        guard fileSize >= 8 else { throw fail(.truncatedHeaderLength(fileSize: fileSize)) }

        var prefix = [UInt8](repeating: 0, count: 8)
        try prefix.withUnsafeMutableBytes { try readFully(fd, into: $0, path: path) }
        let n = try headerLength(prefix, fileSize: fileSize, path: path)
        var header = [UInt8](repeating: 0, count: n)
        try header.withUnsafeMutableBytes { try readFully(fd, into: $0, path: path) }
        let bufferSize = fileSize - 8 - n
        let layout = try parseHeader(header, bufferSize: bufferSize, path: path)

        do { try MemoryBudget.check(bufferSize) } catch { throw fail(.overMemoryBudget(tensor: nil, bytes: bufferSize)) }
        let buffer = try [UInt8](unsafeUninitializedCapacity: bufferSize) { raw, initialized in
            initialized = 0
            try readFully(fd, into: UnsafeMutableRawBufferPointer(raw), path: path)
            initialized = bufferSize
        }
        // A file that grew since fstat is read as it was; one that shrank failed in readFully.
        return SafeTensorsArchive(path: path, layout: layout, storage: buffer, bufferStart: 0)
    }

    /// Reads and validates the bytes of a `.safetensors` file held in memory; `name` labels errors.
    public static func read(bytes: [UInt8], name: String = "<memory>") throws -> SafeTensorsArchive {
        guard bytes.count >= 8 else {
            throw SafeTensorsError(path: name, problem: .truncatedHeaderLength(fileSize: bytes.count))
        }
        let n = try headerLength(Array(bytes[0..<8]), fileSize: bytes.count, path: name)
        let layout = try parseHeader(Array(bytes[8..<8 + n]), bufferSize: bytes.count - 8 - n, path: name)
        return SafeTensorsArchive(path: name, layout: layout, storage: bytes, bufferStart: 8 + n)
    }

    // MARK: - Header

    /// The validated header: entries by name, names in buffer order, metadata.
    struct Layout {
        var names: [String]
        var entries: [String: SafeTensorsArchive.Entry]
        var metadata: [String: String]
    }

    /// The header length N from the first 8 bytes, checked against the cap and the file's size.
    static func headerLength(_ prefix: [UInt8], fileSize: Int, path: String) throws -> Int {
        let n = prefix.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        guard n <= UInt64(maxHeaderBytes) else { throw SafeTensorsError(path: path, problem: .headerTooLarge(length: n)) }
        guard Int(n) <= fileSize - 8 else {
            throw SafeTensorsError(path: path, problem: .headerPastEnd(length: n, available: fileSize - 8))
        }
        return Int(n)
    }

    /// Parses the header JSON and checks every entry against a data buffer of `bufferSize` bytes.
    ///
    /// The JSON is read in one pass, each value checked as it is read, so the first problem in
    /// the header is the one reported (a wrong value before a later syntax error included).
    static func parseHeader(_ header: [UInt8], bufferSize: Int, path: String) throws -> Layout {
        func fail(_ p: SafeTensorsProblem) -> SafeTensorsError { SafeTensorsError(path: path, problem: p) }
        // Validating up front lets the reader copy string bytes through unchecked.
        guard String(validating: header, as: UTF8.self) != nil else { throw fail(.headerNotUTF8) }

        var entries = [String: SafeTensorsArchive.Entry]()
        var order = [(name: String, range: Range<Int>)]()   // header order, the tie-break among equal offsets
        var metadata: [String: String]?
        do {
            var reader = HeaderJSONReader(header)
            guard try reader.atObject() else { throw fail(.headerNotObject(found: try reader.leaf().summary)) }
            try reader.object { name, reader in
                if name == "__metadata__" {
                    guard metadata == nil else { throw fail(.duplicateName(name)) }
                    metadata = try parseMetadata(&reader, fail: fail)
                    return
                }
                guard entries[name] == nil else { throw fail(.duplicateName(name)) }
                let entry = try parseEntry(name, &reader, bufferSize: bufferSize, fail: fail)
                entries[name] = entry
                order.append((name, entry.dataOffsets))
            }
            try reader.end()
        } catch let e as HeaderJSONSyntaxError {
            throw fail(.malformedJSON(offset: e.offset, reason: e.reason))
        }

        // Buffer order; then the ranges must tile the buffer exactly: an overlap would let two
        // tensors alias, a gap or a tail would hide bytes no tensor accounts for. The reference
        // implementation refuses both, so accepting them would accept files other readers refuse.
        let byOffset = order.enumerated().sorted { a, b in
            (a.element.range.lowerBound, a.element.range.upperBound, a.offset) < (b.element.range.lowerBound, b.element.range.upperBound, b.offset)
        }.map(\.element)
        var covered = 0
        var last = ""
        for (name, range) in byOffset {
            if range.lowerBound < covered { throw fail(.overlappingTensors(last, name)) }
            if range.lowerBound > covered { throw fail(.unreferencedBytes(begin: covered, end: range.lowerBound)) }
            covered = range.upperBound
            last = name
        }
        if covered != bufferSize { throw fail(.unreferencedBytes(begin: covered, end: bufferSize)) }
        return Layout(names: byOffset.map(\.name), entries: entries, metadata: metadata ?? [:])
    }

    /// `__metadata__`: an object of strings, or null (what the reference implementation's
    /// optional map accepts as "none").
    static func parseMetadata(_ reader: inout HeaderJSONReader, fail: (SafeTensorsProblem) -> SafeTensorsError) throws -> [String: String] {
        guard try reader.atObject() else {
            if try reader.leaf() == .null { return [:] }
            throw fail(.malformedMetadata(key: nil))
        }
        var metadata = [String: String]()
        try reader.object { key, reader in
            guard case .string(let value) = try reader.leaf() else { throw fail(.malformedMetadata(key: key)) }
            guard metadata.updateValue(value, forKey: key) == nil else { throw fail(.duplicateMetadataKey(key)) }
        }
        return metadata
    }

    /// One tensor's entry: exactly `dtype`, `shape` and `data_offsets`, each checked as read,
    /// then against each other and the buffer.
    static func parseEntry(_ name: String, _ reader: inout HeaderJSONReader, bufferSize: Int,
                           fail: (SafeTensorsProblem) -> SafeTensorsError) throws -> SafeTensorsArchive.Entry {
        guard try reader.atObject() else { throw fail(.entryNotObject(tensor: name, found: try reader.leaf().summary)) }
        var dtype: DType?
        var shape: [Int]?
        var offsets: (begin: Int, end: Int)?
        try reader.object { field, reader in
            switch field {
            case "dtype":
                guard dtype == nil else { throw fail(.duplicateField(tensor: name, field: field)) }
                let value = try reader.leaf()
                guard case .string(let text) = value else { throw fail(.wrongFieldType(tensor: name, field: field, found: value.summary)) }
                guard let d = DType(rawValue: text) else { throw fail(.unknownDType(tensor: name, dtype: text)) }
                dtype = d
            case "shape":
                guard shape == nil else { throw fail(.duplicateField(tensor: name, field: field)) }
                guard try reader.atArray() else { throw fail(.wrongFieldType(tensor: name, field: field, found: try reader.leaf().summary)) }
                var dims = [Int]()
                try reader.array { reader in
                    guard dims.count < maxRank else { throw fail(.tooManyDimensions(tensor: name)) }
                    let d = try reader.leaf()
                    guard case .integer(let n) = d, n >= 0 else { throw fail(.invalidDimension(tensor: name, found: d.summary)) }
                    dims.append(n)
                }
                shape = dims
            case "data_offsets":
                guard offsets == nil else { throw fail(.duplicateField(tensor: name, field: field)) }
                guard try reader.atArray() else { throw fail(.wrongFieldType(tensor: name, field: field, found: try reader.leaf().summary)) }
                var bounds = [Int]()
                try reader.array { reader in
                    guard bounds.count < 2 else { throw fail(.wrongFieldType(tensor: name, field: field, found: "an array of more than two")) }
                    let o = try reader.leaf()
                    guard case .integer(let n) = o, n >= 0 else { throw fail(.invalidOffset(tensor: name, found: o.summary)) }
                    bounds.append(n)
                }
                guard bounds.count == 2 else {
                    throw fail(.wrongFieldType(tensor: name, field: field, found: "an array of \(bounds.count)"))
                }
                offsets = (bounds[0], bounds[1])
            default:
                throw fail(.unexpectedField(tensor: name, field: field))
            }
        }
        guard let dtype else { throw fail(.missingField(tensor: name, field: "dtype")) }
        guard let shape else { throw fail(.missingField(tensor: name, field: "shape")) }
        guard let (begin, end) = offsets else { throw fail(.missingField(tensor: name, field: "data_offsets")) }
        // elementCount also bounds the product of the non-zero dimensions, as strides need.
        guard let count = try? elementCount(of: shape) else { throw fail(.shapeOverflow(tensor: name, shape: shape)) }
        let (bits, overflow) = count.multipliedReportingOverflow(by: dtype.bits)
        guard !overflow else { throw fail(.shapeOverflow(tensor: name, shape: shape)) }
        guard bits % 8 == 0 else { throw fail(.partialByte(tensor: name, dtype: dtype, shape: shape)) }
        guard begin <= end else { throw fail(.offsetsReversed(tensor: name, begin: begin, end: end)) }
        guard end <= bufferSize else { throw fail(.offsetsPastEnd(tensor: name, begin: begin, end: end, bufferSize: bufferSize)) }
        guard end - begin == bits / 8 else {
            throw fail(.byteCountMismatch(tensor: name, dtype: dtype, shape: shape, begin: begin, end: end))
        }
        return SafeTensorsArchive.Entry(dtype: dtype, shape: shape, dataOffsets: begin..<end)
    }

    // MARK: - File plumbing

    /// Fills `buffer` from `fd`, retrying short reads and EINTR; a premature end is an error
    /// (the file shrank since its size was taken).
    static func readFully(_ fd: CInt, into buffer: UnsafeMutableRawBufferPointer, path: String) throws {
        guard let base = buffer.baseAddress else { return }
        var done = 0
        while done < buffer.count {
            let got = Platform.read(fd, base + done, min(buffer.count - done, 1 << 30))
            if got < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError(path: path, problem: .cannotRead(String(cString: strerror(errno))))
            }
            if got == 0 {
                throw SafeTensorsError(path: path, problem: .cannotRead("the file ended early (it shrank while being read)"))
            }
            done += got
        }
    }
}
